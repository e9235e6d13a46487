"""Abuse and faults at the orchestrator, with real processes: per-key quotas across replicas (Redis), bounds
checked as input arrives, idle streams ended, and a frozen Redis making the service fail fast and say so."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glmvoice.client import config_request, frames
from glmvoice.v1 import voice_chat_pb2 as pb
from services.local_stack import RedisServer
from services.orchestrator.errors import BackendUnavailable, Exhausted
from services.orchestrator.quotas import QuotaLimits, Quotas
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.session_store import SessionStore, connect
from services.orchestrator.settings import Settings, SettingsError
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture
from tests.integration.test_orchestrator import (  # noqa: F401 - shared fixtures and client helpers
    GREEDY,
    KEYS,
    LiveStream,
    checkpoints,
    keys_file,
)

pytestmark = pytest.mark.integration


def run(coro):
    import asyncio

    return asyncio.run(coro)


# ---- quotas against a real Redis --------------------------------------------------------------------
def test_stream_quota_is_atomic_per_key_and_leases_expire(redis_server):  # noqa: F811
    async def scenario():
        redis = connect(redis_server.addr, 1.0)
        quotas = Quotas(redis, QuotaLimits(streams=2, lease_s=0.3))
        key, other = f"k-{time.monotonic_ns()}", f"o-{time.monotonic_ns()}"
        await quotas.acquire_stream(key, "a")
        await quotas.acquire_stream(key, "b")
        await quotas.acquire_stream(key, "a")  # renewing a held lease is not a new stream
        with pytest.raises(Exhausted, match="QUOTA_STREAMS"):
            await quotas.acquire_stream(key, "c")
        await quotas.acquire_stream(other, "c")  # another key is not affected
        await quotas.release_stream(key, "a")
        await quotas.acquire_stream(key, "c")
        time.sleep(0.4)  # leases of a replica that died lapse
        await quotas.acquire_stream(key, "d")
        await quotas.acquire_stream(key, "e")
        await redis.aclose()

    run(scenario())


def test_session_and_audio_quotas_count_per_minute(redis_server):  # noqa: F811
    async def scenario():
        redis = connect(redis_server.addr, 1.0)
        quotas = Quotas(redis, QuotaLimits(sessions_per_minute=3, audio_s_per_minute=10.0))
        key = f"k-{time.monotonic_ns()}"
        for _ in range(3):
            await quotas.count_session(key)
        with pytest.raises(Exhausted, match="QUOTA_SESSIONS_PER_MINUTE"):
            await quotas.count_session(key)
        await quotas.count_audio(key, 6.0)
        with pytest.raises(Exhausted, match="QUOTA_AUDIO_S_PER_MINUTE"):
            await quotas.count_audio(key, 6.0)
        await redis.aclose()

    run(scenario())


def test_redis_auth_and_unreachable_fail_fast(tmp_path):
    server = RedisServer(tmp_path / "redis").start()

    async def scenario():
        admin = connect(server.addr, 1.0)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        good = SessionStore(connect(server.addr, 1.0, password="s3cret"), server.addr, 60)
        await good.ping()
        bad = SessionStore(connect(server.addr, 1.0), server.addr, 60)
        with pytest.raises(BackendUnavailable):
            await bad.ping()
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await good.ping()
            assert time.monotonic() - started < 2.0  # one timeout (1 s), not multiplied by retries
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await good.ping()
        for store in (good, bad):
            await store.close()

    try:
        run(scenario())
    finally:
        server.stop()


def test_settings_parse_booleans_and_refuse_bad_bounds():
    assert Settings.from_args([], {"REDIS_TLS": "false"}).redis_tls is False
    assert Settings.from_args([], {"REDIS_TLS": "true"}).redis_tls is True
    with pytest.raises(SettingsError, match="REDIS_TLS"):
        Settings.from_args([], {"REDIS_TLS": "maybe"})


# ---- through Converse ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited(tmp_path_factory, checkpoints, keys_file):  # noqa: F811
    """An in-process orchestrator on its own Redis (so it can be frozen), with small limits."""
    redis = RedisServer(tmp_path_factory.mktemp("redis-limits")).start()
    settings = Settings(
        backend="inprocess", redis_addr=redis.addr, checkpoints=checkpoints, grpc_port=0, bind_address="127.0.0.1",
        api_keys_file=keys_file, max_streams=8, quota_streams=2, quota_sessions_per_minute=100,
        max_turn_s=1.0, stream_idle_s=1.5, health_interval_s=0.5,
    )
    server = OrchestratorThread.start(settings)
    yield server, redis
    server.stop()
    redis.stop()


def _config(**extra):
    return config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=5, **GREEDY, **extra)


def opened(address: str, key: str) -> LiveStream:
    """A Converse stream the server has started (session_started received)."""
    stream = LiveStream(address, key)
    stream.send(_config())
    assert stream.next_event(30).WhichOneof("event") == "session_started"
    return stream


def refusal(address: str, key: str) -> grpc.RpcError:
    """The status a new stream is refused with."""
    stream = LiveStream(address, key)
    stream.send(_config())
    with pytest.raises(grpc.RpcError) as info:
        stream.next_event(30)
    stream.shutdown()
    return info.value


def final_status(stream: LiveStream, timeout: float) -> grpc.RpcError:
    """Reads the stream until it fails; the status it failed with."""
    with pytest.raises(grpc.RpcError) as info:
        while True:
            stream.next_event(timeout)
    return info.value


def test_one_key_cannot_take_every_slot(limited):
    server, _ = limited
    held = []
    try:
        held += [opened(server.address, KEYS[0]) for _ in range(2)]
        refused = refusal(server.address, KEYS[0])
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "QUOTA_STREAMS" in refused.details()
        opened(server.address, KEYS[1]).shutdown()  # other keys are still served
    finally:
        for stream in held:
            stream.shutdown()


def test_a_turn_longer_than_the_bound_is_refused_as_it_arrives(limited):
    server, _ = limited
    time.sleep(0.5)  # the previous test's leases are released (in the background) when its streams end
    stream = opened(server.address, KEYS[1])
    try:
        stream.send_audio(frames(np.zeros(16000 * 2, np.float32) + 0.01, 16000, "LINEAR16"))  # 2 s > MAX_TURN_S
        failed = final_status(stream, 30)
        assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT and "MAX_TURN_S" in failed.details()
    finally:
        stream.shutdown()


def test_a_silent_client_is_ended(limited):
    server, _ = limited
    stream = opened(server.address, KEYS[1])
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stream.next_event(30)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "STREAM_IDLE_S" in info.value.details()
        assert time.monotonic() - started < 10  # 1.5 s idle bound, generous for a loaded machine
    finally:
        stream.shutdown()


def test_frozen_redis_turns_health_and_new_streams_away_fast(limited):
    server, redis = limited
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() - started < 10, "health still SERVING with Redis frozen"
                time.sleep(0.1)
            noticed = time.monotonic() - started
            refused = refusal(server.address, KEYS[1])
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        print(f"health NOT_SERVING {noticed:.2f} s after Redis froze")
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        deadline = time.monotonic() + 15
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "health did not come back after Redis resumed"
            time.sleep(0.1)


def test_replicas_share_the_stream_quota(limited, checkpoints, keys_file):  # noqa: F811
    """A second replica on the same Redis sees the first's streams: the key's two slots are taken there."""
    server, redis = limited
    first = []
    second = OrchestratorThread.start(replace(server.orchestrator.settings, grpc_port=0))
    try:
        first += [opened(server.address, KEYS[0]) for _ in range(2)]
        assert refusal(second.address, KEYS[0]).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for stream in first:
            stream.shutdown()
        second.stop()


def test_redis_killed_mid_reply_tells_the_caller_and_recovers(limited):
    """The caller heard a reply the history cannot hold: the stream ends UNAVAILABLE saying so (never a silent
    loss); with Redis back, new turns are served again."""
    server, redis = limited
    time.sleep(0.5)
    stream = LiveStream(server.address, KEYS[1])
    try:
        stream.send(config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=400, **GREEDY))
        assert stream.next_event(30).WhichOneof("event") == "session_started"
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text="tell me a long story")))
        assert stream.next_event(60).WhichOneof("event") in ("text_delta", "audio")
        redis.process.kill()
        redis.process.wait()
        failed = final_status(stream, 60)
        assert failed.code() == grpc.StatusCode.UNAVAILABLE and "not saved" in failed.details()
    finally:
        stream.shutdown()
        redis.start()  # same port and directory
    deadline = time.monotonic() + 20
    while True:
        probe = LiveStream(server.address, KEYS[1])
        probe.send(_config())
        try:
            assert probe.next_event(10).WhichOneof("event") == "session_started"
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "not serving again after Redis came back"
            time.sleep(0.3)
        finally:
            probe.shutdown()
