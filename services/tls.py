"""TLS for the gRPC hops (gateway -> orchestrator -> Triton): one identity per pod, read from files.

The chart mounts one Secret in the cert-manager layout (tls.crt, tls.key, ca.crt). A pod serves with its
certificate and, as a client, presents the same certificate and trusts the same CA. Plaintext when no file is
set (local stacks and tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

# Settings read from the environment, by field (the orchestrator's, the gateway's, Triton's and the promoter's).
TLS_ENVIRONMENT = {"tls_cert_file": "TLS_CERT_FILE", "tls_key_file": "TLS_KEY_FILE", "tls_ca_file": "TLS_CA_FILE"}
# Servers (orchestrator, Triton): require client certificates signed by TLS_CA_FILE (mTLS).
CLIENT_AUTH_ENVIRONMENT = "TLS_CLIENT_AUTH"
# Clients of Triton (orchestrator, promoter): dial it over TLS with the same files; replicas found by pod IP are
# checked against this name (one the certificate carries, e.g. a Triton Service's DNS name) instead of the IP.
TRITON_ENVIRONMENT = {"triton_tls": "TRITON_TLS", "triton_tls_server_name": "TRITON_TLS_SERVER_NAME"}
# Clients of Redis (orchestrator, promoter): REDIS_TLS dials it over TLS, trusting REDIS_CA_FILE (the system's roots
# without one); the pod's TLS_CERT_FILE / TLS_KEY_FILE, when set, are presented (Redis's tls-auth-clients yes).
REDIS_ENVIRONMENT = {"redis_tls": "REDIS_TLS", "redis_ca_file": "REDIS_CA_FILE"}


def parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path | None = None  # PEM certificate chain: served, and presented as a client (mTLS)
    key_file: Path | None = None
    ca_file: Path | None = None  # PEM CA bundle: verifies the peer (server's, and clients' with mTLS)

    def check(self) -> TlsFiles:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together")
        for env_name, path in zip(TLS_ENVIRONMENT.values(), (self.cert_file, self.key_file, self.ca_file)):
            if path is not None and not path.is_file():
                raise ValueError(f"{env_name} {path} does not exist")
        return self

    def server_credentials(self, require_client_auth: bool) -> grpc.ServerCredentials | None:
        """None (plaintext) without a certificate; with require_client_auth, clients must present a
        certificate the CA signed, else the handshake fails."""
        if self.cert_file is None or self.key_file is None:
            if require_client_auth:
                raise ValueError("TLS_CLIENT_AUTH needs TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE")
            return None
        if require_client_auth and self.ca_file is None:
            raise ValueError("TLS_CLIENT_AUTH needs TLS_CA_FILE: the CA that signs client certificates")
        ca = self.ca_file.read_bytes() if self.ca_file is not None else None
        return grpc.ssl_server_credentials([(self.key_file.read_bytes(), self.cert_file.read_bytes())],
                                           root_certificates=ca, require_client_auth=require_client_auth)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Trusts the CA (or the system's roots without one) and presents the certificate if there is one."""
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> TlsFiles:
        return cls(*(Path(environ[name]) if environ.get(name) else None for name in TLS_ENVIRONMENT.values()))

    def triton_options(self, server_name: str = "") -> dict:
        """Keyword arguments for tritonclient.grpc(.aio).InferenceServerClient (it takes file paths).
        `server_name`: the name the server's certificate must carry, whatever address is dialled (a pod IP)."""
        def name(path: Path | None) -> str | None:
            return str(path) if path is not None else None
        options: dict = {"ssl": True, "root_certificates": name(self.ca_file), "private_key": name(self.key_file),
                         "certificate_chain": name(self.cert_file)}
        if server_name:
            import tritonclient.grpc as grpcclient

            # channel_args replaces tritonclient's own channel arguments: keep them, add the name override.
            keepalive = grpcclient.KeepAliveOptions()
            options["channel_args"] = [
                ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                ("grpc.ssl_target_name_override", server_name),
            ]
        return options


def triton_client_options(tls: TlsFiles | None, server_name: str = "") -> dict:
    """InferenceServerClient keyword arguments: plaintext with None, else TLS checked against `server_name`."""
    return tls.triton_options(server_name) if tls is not None else {}


def secure_channel(addr: str, tls: TlsFiles | None) -> grpc.aio.Channel:
    """A grpc.aio channel to `addr`: TLS with `tls`, plaintext with None."""
    if tls is None:
        return grpc.aio.insecure_channel(addr)
    return grpc.aio.secure_channel(addr, tls.channel_credentials())


def redis_options(password: str = "", tls: bool = False, ca_file: Path | str | None = None,
                  cert_file: Path | str | None = None, key_file: Path | str | None = None) -> dict:
    """Keyword arguments for redis.Redis and redis.asyncio.Redis, the one way every Redis client here connects:
    AUTH with `password`; with `tls`, a verified TLS connection (Redis's certificate must chain to `ca_file` and
    name the host dialled) presenting `cert_file`/`key_file` when given (mTLS)."""
    options: dict = {"password": password or None}
    if tls:
        if (cert_file is None) != (key_file is None):
            raise ValueError("a Redis client certificate needs both TLS_CERT_FILE and TLS_KEY_FILE")
        options.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True,
                       ssl_ca_certs=str(ca_file) if ca_file else None,
                       ssl_certfile=str(cert_file) if cert_file else None,
                       ssl_keyfile=str(key_file) if key_file else None)
    return options


def redis_options_from_environ(environ: dict[str, str]) -> dict:
    """redis_options from REDIS_PASSWORD, REDIS_TLS, REDIS_CA_FILE and the pod's TLS_CERT_FILE / TLS_KEY_FILE."""
    if not parse_bool(environ.get(REDIS_ENVIRONMENT["redis_tls"]) or "false"):
        return redis_options(environ.get("REDIS_PASSWORD", ""))
    files = TlsFiles.from_environ(environ).check()
    ca_file = environ.get(REDIS_ENVIRONMENT["redis_ca_file"]) or None
    if ca_file is not None and not Path(ca_file).is_file():
        raise ValueError(f"REDIS_CA_FILE {ca_file} does not exist")
    return redis_options(environ.get("REDIS_PASSWORD", ""), True, ca_file, files.cert_file, files.key_file)
