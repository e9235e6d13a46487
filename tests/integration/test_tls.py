"""The orchestrator's gRPC port over TLS with client certificates (mTLS), with real certificates made here:
a client the CA vouches for is served, one without a certificate, with another CA's, or in plaintext is refused
at the handshake; the gateway's channel (services/tls.py) gets through with the pod's identity.

Triton too (the launcher's --grpc-use-ssl* flags, a real tritonserver with the tiny speech tokenizer): its
certificate names only a Service's DNS name, as the chart's does, and it is dialled by IP like an EndpointSlice
replica; the orchestrator's Triton backend and the promoter's clients get through with the name override."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glmvoice.models.text_tokenizer import TextTokenizer
from services.gateway.upstream import Upstream
from services.local_stack import free_port
from services.orchestrator.backends.triton import TritonBackend
from services.orchestrator.errors import BackendUnavailable
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.settings import Settings
from services.promoter.canary import run_canary
from services.promoter.promoter import PromoterSettings, discover_replicas
from services.promoter.replicas import Replica, TritonControl
from services.tls import TlsFiles
from services.triton.__main__ import parse_settings
from services.triton.launcher import TritonServer, TritonSettings
from services.triton.repository import build_repository
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture
from tests.integration.test_orchestrator import checkpoints  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> TlsFiles:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    (path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(path / "tls.crt", path / "tls.key")


def make_ca(path: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    _write(path, key, cert)
    return key, cert, path / "tls.crt"


LOOPBACK = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
# What the chart's certificate names for a Triton model (its Service), and never a pod IP.
TRITON_NAME = "glmvoice-triton-speech-tokenizer.glmvoice.svc"


def issue(path: Path, ca: tuple, common_name: str, names=LOOPBACK) -> TlsFiles:
    """A leaf for `names` (127.0.0.1 / localhost) usable as server and client (the chart's one identity per pod)."""
    ca_key, ca_cert, ca_file = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = _write(path, key, cert)
    return TlsFiles(files.cert_file, files.key_file, ca_file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca", "glmvoice test CA")
    stranger = make_ca(root / "other-ca", "another CA")
    return {"server": issue(root / "server", ca, "orchestrator"), "client": issue(root / "client", ca, "gateway"),
            "stranger": issue(root / "stranger", stranger, "gateway"),
            "triton": issue(root / "triton", ca, "triton", names=[x509.DNSName(TRITON_NAME)])}


@pytest.fixture(scope="module")
def mtls_orchestrator(redis_server, checkpoints, pki):  # noqa: F811
    server_files = pki["server"]
    settings = Settings(backend="inprocess", redis_addr=redis_server.addr, checkpoints=checkpoints, grpc_port=0,
                        bind_address="127.0.0.1", metrics_port=0, tls_cert_file=server_files.cert_file,
                        tls_key_file=server_files.key_file, tls_ca_file=server_files.ca_file, tls_client_auth=True)
    server = OrchestratorThread.start(settings.check())
    yield server
    server.stop()


def health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_a_client_with_a_certificate_the_ca_signed_is_served(mtls_orchestrator, pki):
    with grpc.secure_channel(mtls_orchestrator.address, pki["client"].channel_credentials()) as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("client", ["no certificate", "another CA's certificate", "plaintext"])
def test_a_client_the_ca_does_not_vouch_for_is_refused_at_the_handshake(mtls_orchestrator, pki, client):
    if client == "plaintext":
        channel = grpc.insecure_channel(mtls_orchestrator.address)
    else:
        files = pki["client"] if client == "no certificate" else pki["stranger"]
        # Trusts the server's CA either way, so only the client's own certificate is missing or foreign.
        files = TlsFiles(None if client == "no certificate" else files.cert_file,
                         None if client == "no certificate" else files.key_file, pki["client"].ca_file)
        channel = grpc.secure_channel(mtls_orchestrator.address, files.channel_credentials())
    with channel, pytest.raises(grpc.RpcError) as refused:
        health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_gateway_reaches_the_orchestrator_with_its_certificate_and_not_without(mtls_orchestrator, pki):
    async def ready(tls: TlsFiles | None) -> bool:
        upstream = Upstream(mtls_orchestrator.address, tls)
        try:
            return await upstream.ready()
        finally:
            await upstream.channel.close()

    assert asyncio.run(ready(pki["client"]))
    assert not asyncio.run(ready(None))


def test_tls_settings_fail_at_start_with_what_is_missing(tmp_path, pki):
    with pytest.raises(ValueError, match="TLS_CA_FILE"):
        Settings(tls_cert_file=pki["server"].cert_file, tls_key_file=pki["server"].key_file,
                 tls_client_auth=True).tls.check().server_credentials(True)
    with pytest.raises(ValueError, match="TLS_KEY_FILE"):
        TlsFiles(pki["server"].cert_file).check()
    with pytest.raises(ValueError, match="does not exist"):
        TlsFiles(ca_file=tmp_path / "missing.pem").check()
    environ = {"TLS_CERT_FILE": str(pki["server"].cert_file), "TLS_KEY_FILE": str(pki["server"].key_file),
               "TLS_CLIENT_AUTH": "true", "TRITON_TLS": "1"}
    settings = Settings.from_args([], environ)
    assert settings.tls_client_auth and settings.triton_tls and settings.tls.cert_file == pki["server"].cert_file
    assert settings.tls.triton_options()["ssl"] is True


def test_the_pods_own_probe_passes_mtls_with_its_files(mtls_orchestrator, pki, monkeypatch):
    """The chart's exec probe (the kubelet's gRPC probe speaks no TLS): the pod's own certificate gets in."""
    from services.orchestrator import healthcheck

    monkeypatch.setenv("GRPC_PORT", str(mtls_orchestrator.orchestrator.port))
    assert healthcheck.main() == 1  # plaintext against the TLS port
    files = pki["server"]
    for name, path in (("TLS_CERT_FILE", files.cert_file), ("TLS_KEY_FILE", files.key_file), ("TLS_CA_FILE", files.ca_file)):
        monkeypatch.setenv(name, str(path))
    assert healthcheck.main() == 0


# --- Triton over TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_repository(tmp_path_factory, tiny_speech_tokenizer_dir):
    return build_repository(tmp_path_factory.mktemp("tls_repository"), {"speech_tokenizer": tiny_speech_tokenizer_dir},
                            device="cpu")


def _triton(repository: Path, files: TlsFiles, client_auth: bool, log: Path) -> TritonServer:
    """Started the way the chart starts it: `python -m services.triton` settings from flags and TLS_* variables."""
    environ = {"TLS_CERT_FILE": str(files.cert_file), "TLS_KEY_FILE": str(files.key_file),
               "TLS_CA_FILE": str(files.ca_file), "TLS_CLIENT_AUTH": str(client_auth).lower()}
    parsed = parse_settings(["--model-repository", str(repository), "--models", "speech_tokenizer"], environ)
    assert parsed.tls == files and parsed.tls_client_auth is client_auth
    settings = TritonSettings(repository, models=parsed.models, grpc_port=free_port(), http_port=free_port(),
                              metrics_port=free_port(), tls=parsed.tls, tls_client_auth=parsed.tls_client_auth)
    return TritonServer(settings, log_path=log).start(ready_timeout_s=180)


@pytest.fixture(scope="module")
def mtls_triton(tokenizer_repository, pki, tmp_path_factory):
    with _triton(tokenizer_repository, pki["triton"], True, tmp_path_factory.mktemp("mtls_triton") / "log") as server:
        yield server


@pytest.fixture(scope="module")
def tls_triton(tokenizer_repository, pki, tmp_path_factory):
    with _triton(tokenizer_repository, pki["triton"], False, tmp_path_factory.mktemp("tls_triton") / "log") as server:
        yield server


def test_the_launcher_passes_tritons_ssl_flags_only_with_a_certificate(pki, tmp_path):
    files = pki["triton"]
    command = TritonSettings(tmp_path, tls=files, tls_client_auth=True).command(Path("tritonserver"))
    assert {"--grpc-use-ssl=true", f"--grpc-server-cert={files.cert_file}", f"--grpc-server-key={files.key_file}",
            f"--grpc-root-cert={files.ca_file}", "--grpc-use-ssl-mutual=true"} <= set(command)
    assert not [arg for arg in TritonSettings(tmp_path).command(Path("tritonserver")) if "ssl" in arg]
    with pytest.raises(ValueError, match="TLS_CA_FILE"):
        TritonSettings(tmp_path, tls=TlsFiles(files.cert_file, files.key_file), tls_client_auth=True).check()


def _tokenize(addr: str, tls: TlsFiles | None, server_name: str, text_tokenizer: TextTokenizer) -> list[int]:
    """One user turn through the orchestrator's Triton backend, dialling `addr` (an IP, like a pod's)."""
    async def turn() -> list[int]:
        backend = TritonBackend({"speech_tokenizer": addr}, text_tokenizer, decoder_block=10, tls=tls,
                                tls_server_name=server_name)
        try:
            audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
            return await asyncio.wait_for(backend.open_tokenizer().push(audio, end=True), 30)
        finally:
            await backend.close()
    return asyncio.run(turn())


@pytest.fixture(scope="module")
def text_tokenizer(checkpoints):  # noqa: F811
    return TextTokenizer.from_directory(checkpoints / "glm-4-voice-9b")


def test_the_orchestrator_reaches_an_mtls_triton_by_ip_with_the_services_name(mtls_triton, pki, text_tokenizer):
    codes = _tokenize(mtls_triton.grpc_url, pki["client"], TRITON_NAME, text_tokenizer)
    assert len(codes) > 10


@pytest.mark.parametrize("client", ["plaintext", "no name override", "no certificate", "another CA's certificate"])
def test_triton_refuses_who_the_ca_does_not_vouch_for_or_a_name_it_does_not_carry(mtls_triton, pki, text_tokenizer,
                                                                                  client):
    ca = pki["client"].ca_file
    tls, name = {"plaintext": (None, ""), "no name override": (pki["client"], ""),
                 "no certificate": (TlsFiles(ca_file=ca), TRITON_NAME),
                 "another CA's certificate": (TlsFiles(pki["stranger"].cert_file, pki["stranger"].key_file, ca),
                                              TRITON_NAME)}[client]
    with pytest.raises(BackendUnavailable) as refused:
        _tokenize(mtls_triton.grpc_url, tls, name, text_tokenizer)
    # The certificate verifies (same CA) but names the Service, not the IP dialled: refused on the name alone.
    assert ("Hostname Verification Check failed" in str(refused.value)) is (client == "no name override")


def test_tls_without_client_auth_serves_a_client_without_a_certificate(tls_triton, pki, text_tokenizer):
    assert len(_tokenize(tls_triton.grpc_url, TlsFiles(ca_file=pki["client"].ca_file), TRITON_NAME, text_tokenizer)) > 10
    with pytest.raises(BackendUnavailable):
        _tokenize(tls_triton.grpc_url, TlsFiles(ca_file=pki["stranger"].ca_file), TRITON_NAME, text_tokenizer)


def test_the_promoters_clients_reach_an_mtls_triton_by_ip(mtls_triton, pki, tiny_speech_tokenizer_dir, tmp_path):
    files = pki["client"]
    environ = {"REDIS_ADDR": "127.0.0.1:1", "GLMVOICE_MODEL_REPOSITORY": str(tmp_path), "GLMVOICE_STORE": str(tmp_path),
               "TRITON_ADDRS": mtls_triton.grpc_url, "TRITON_TLS": "true", "TRITON_TLS_SERVER_NAME": TRITON_NAME,
               **{name: str(path) for name, path in (("TLS_CERT_FILE", files.cert_file), ("TLS_KEY_FILE", files.key_file),
                                                     ("TLS_CA_FILE", files.ca_file))}}
    [replica] = discover_replicas(PromoterSettings.from_env(environ))
    control = TritonControl(replica, "speech_tokenizer")
    assert control.server_live() and control.ready_versions() == [1] and control.is_ready(1)
    assert run_canary(replica, "speech_tokenizer", 1, tiny_speech_tokenizer_dir)["codes"] > 0
    plaintext = TritonControl(Replica("plaintext", mtls_triton.grpc_url), "speech_tokenizer")
    with pytest.raises(Exception, match="UNAVAILABLE|failed to connect|Socket closed|handshake"):
        plaintext.server_live()
