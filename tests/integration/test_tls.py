"""The orchestrator's gRPC port over TLS with client certificates (mTLS), with real certificates made here:
a client the CA vouches for is served, one without a certificate, with another CA's, or in plaintext is refused
at the handshake; the gateway's channel (services/tls.py) gets through with the pod's identity."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.upstream import Upstream
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.settings import Settings
from services.tls import TlsFiles
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


def issue(path: Path, ca: tuple, common_name: str) -> TlsFiles:
    """A leaf for 127.0.0.1 / localhost usable as server and client (the chart's one identity per pod)."""
    ca_key, ca_cert, ca_file = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
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
            "stranger": issue(root / "stranger", stranger, "gateway")}


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
