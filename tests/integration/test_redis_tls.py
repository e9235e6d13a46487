"""Redis over TLS, with a real redis-server serving only its TLS port (plaintext port 0, as the chart runs it)
and certificates from a test CA (tests/integration/test_tls.py's helpers).

The orchestrator (REDIS_TLS, REDIS_CA_FILE, REDIS_PASSWORD) serves a turn and keeps the session there; trusting
another CA, it refuses to start with the verification failure named. The promoter's registry client connects the
same way (services.tls.redis_options). With client certificates required (tls-auth-clients yes) the pod's
TLS_CERT_FILE / TLS_KEY_FILE get in and a client without them does not."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.orchestrator.errors import BackendUnavailable
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.session_store import KEY_PREFIX, SessionStore, connect
from services.orchestrator.settings import Settings, SettingsError
from services.promoter.promoter import redis_client
from services.promoter.registry import Registry
from tests.fixtures.redis import start_tls_redis
from tests.integration.test_orchestrator import checkpoints, get_session, keys_file, text_turn  # noqa: F401
from tests.integration.test_tls import issue, make_ca

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-from-the-chart"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis-pki")
    ca = make_ca(root / "ca", "glmvoice test CA")
    stranger = make_ca(root / "other-ca", "another CA")
    return {"redis": issue(root / "redis", ca, "redis"), "client": issue(root / "client", ca, "orchestrator"),
            "stranger": issue(root / "stranger", stranger, "orchestrator")}


def _service_only(tmp_path, pki):
    # The trusted CA, re-read from its files, signs a certificate naming only the chart's Redis Service.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_dir = pki["redis"].ca_file.parent
    key = serialization.load_pem_private_key((ca_dir / "tls.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate(pki["redis"].ca_file.read_bytes())
    return issue(tmp_path / "service-only", (key, cert, pki["redis"].ca_file), "redis",
                 names=[x509.DNSName("glmvoice-redis")])


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory, pki):
    with start_tls_redis(tmp_path_factory.mktemp("tls-redis"), pki["redis"], PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory, pki):
    with start_tls_redis(tmp_path_factory.mktemp("mtls-redis"), pki["redis"], PASSWORD, auth_clients=True) as server:
        yield server


def _settings(addr, checkpoints, keys_file, ca_file, **extra) -> Settings:  # noqa: F811
    return Settings(backend="inprocess", redis_addr=addr, checkpoints=checkpoints, grpc_port=0,
                    bind_address="127.0.0.1", api_keys_file=keys_file, redis_password=PASSWORD, redis_tls=True,
                    redis_ca_file=ca_file, **extra)


def test_the_orchestrator_serves_a_turn_and_keeps_the_session_in_a_tls_redis(tls_redis, pki, checkpoints,  # noqa: F811
                                                                             keys_file):  # noqa: F811
    server = OrchestratorThread.start(_settings(tls_redis.addr, checkpoints, keys_file, pki["redis"].ca_file))
    try:
        with grpc.insecure_channel(server.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        opened = text_turn(server.address, "What is two plus three?")
        session = get_session(server.address, opened.session_id)
        assert [t.role for t in session.turns] == ["user", "assistant"]
    finally:
        server.stop()
    # The record is in that Redis, read back over TLS by the promoter's client (the same settings).
    environ = {"REDIS_PASSWORD": PASSWORD, "REDIS_TLS": "true", "REDIS_CA_FILE": str(pki["redis"].ca_file)}
    assert redis_client(tls_redis.addr, environ).exists(KEY_PREFIX + opened.session_id) == 1


def test_an_orchestrator_trusting_another_ca_does_not_start_and_says_why(tls_redis, pki, checkpoints,  # noqa: F811
                                                                         keys_file):  # noqa: F811
    settings = _settings(tls_redis.addr, checkpoints, keys_file, pki["stranger"].ca_file)
    with pytest.raises(BackendUnavailable, match=r"not reachable.*certificate verify failed"):
        OrchestratorThread.start(settings)


def test_plaintext_and_a_wrong_password_are_refused(tls_redis, pki):
    with pytest.raises(redis.exceptions.ConnectionError):
        redis_client(tls_redis.addr, {"REDIS_PASSWORD": PASSWORD}).ping()
    environ = {"REDIS_PASSWORD": "wrong", "REDIS_TLS": "true", "REDIS_CA_FILE": str(pki["redis"].ca_file)}
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(tls_redis.addr, environ).ping()


def test_the_promoter_registry_works_over_tls_and_refuses_a_foreign_ca(tls_redis, pki):
    good = {"REDIS_PASSWORD": PASSWORD, "REDIS_TLS": "1", "REDIS_CA_FILE": str(pki["redis"].ca_file)}
    assert Registry(redis_client(tls_redis.addr, good), prefix="test-redis-tls").checkpoints("llm") == []
    foreign = {**good, "REDIS_CA_FILE": str(pki["stranger"].ca_file)}
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        redis_client(tls_redis.addr, foreign).ping()


def test_a_certificate_that_does_not_name_the_host_dialled_is_refused(tmp_path, pki):
    """Dialled at 127.0.0.1, a Redis whose certificate (from the trusted CA) names only its Service is refused."""
    with start_tls_redis(tmp_path / "redis", _service_only(tmp_path, pki), PASSWORD) as server:
        environ = {"REDIS_PASSWORD": PASSWORD, "REDIS_TLS": "true", "REDIS_CA_FILE": str(pki["redis"].ca_file)}
        with pytest.raises(redis.exceptions.ConnectionError, match="IP address mismatch"):
            redis_client(server.addr, environ).ping()


def test_with_client_certificates_required_the_pods_identity_gets_in(mtls_redis, pki):
    """tls-auth-clients yes: the orchestrator and the promoter present TLS_CERT_FILE / TLS_KEY_FILE."""
    client, ca = pki["client"], str(pki["redis"].ca_file)

    async def ping(cert_file, key_file) -> None:
        store = SessionStore(connect(mtls_redis.addr, 2.0, PASSWORD, True, ca, cert_file, key_file), mtls_redis.addr, 60)
        try:
            await store.ping()
        finally:
            await store.close()

    asyncio.run(ping(client.cert_file, client.key_file))
    with pytest.raises(BackendUnavailable, match="not reachable"):
        asyncio.run(ping(None, None))
    with pytest.raises(BackendUnavailable, match="not reachable"):  # a certificate another CA signed
        asyncio.run(ping(pki["stranger"].cert_file, pki["stranger"].key_file))
    environ = {"REDIS_PASSWORD": PASSWORD, "REDIS_TLS": "true", "REDIS_CA_FILE": ca,
               "TLS_CERT_FILE": str(client.cert_file), "TLS_KEY_FILE": str(client.key_file)}
    assert redis_client(mtls_redis.addr, environ).ping()
    with pytest.raises(redis.exceptions.ConnectionError):
        redis_client(mtls_redis.addr, {k: v for k, v in environ.items() if not k.startswith("TLS_")}).ping()


def test_redis_tls_settings_are_read_from_the_environment_and_checked(tmp_path, pki, checkpoints, keys_file):  # noqa: F811
    environ = {"REDIS_TLS": "true", "REDIS_CA_FILE": str(pki["redis"].ca_file), "REDIS_PASSWORD": PASSWORD}
    settings = Settings.from_args(["--redis-addr", "127.0.0.1:1"], environ)
    assert settings.redis_tls and settings.redis_ca_file == pki["redis"].ca_file
    with pytest.raises(SettingsError, match="REDIS_TLS is not"):
        replace(_settings("127.0.0.1:1", checkpoints, keys_file, pki["redis"].ca_file), redis_tls=False).check()
    with pytest.raises(ValueError, match="REDIS_CA_FILE"):
        redis_client("127.0.0.1:1", {"REDIS_TLS": "true", "REDIS_CA_FILE": str(tmp_path / "missing.pem")})
