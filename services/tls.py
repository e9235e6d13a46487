"""TLS for the gRPC hops (gateway -> orchestrator -> Triton): one identity per pod, read from files.

The chart mounts one Secret in the cert-manager layout (tls.crt, tls.key, ca.crt). A pod serves with its
certificate and, as a client, presents the same certificate and trusts the same CA. Plaintext when no file is
set (local stacks and tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

# Settings read from the environment, by field (the orchestrator's and the gateway's settings share them).
TLS_ENVIRONMENT = {"tls_cert_file": "TLS_CERT_FILE", "tls_key_file": "TLS_KEY_FILE", "tls_ca_file": "TLS_CA_FILE"}


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

    def triton_options(self) -> dict:
        """Keyword arguments for tritonclient.grpc(.aio).InferenceServerClient (it takes file paths)."""
        def name(path: Path | None) -> str | None:
            return str(path) if path is not None else None
        return {"ssl": True, "root_certificates": name(self.ca_file), "private_key": name(self.key_file),
                "certificate_chain": name(self.cert_file)}


def secure_channel(addr: str, tls: TlsFiles | None) -> grpc.aio.Channel:
    """A grpc.aio channel to `addr`: TLS with `tls`, plaintext with None."""
    if tls is None:
        return grpc.aio.insecure_channel(addr)
    return grpc.aio.secure_channel(addr, tls.channel_credentials())
