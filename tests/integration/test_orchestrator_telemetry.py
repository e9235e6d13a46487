"""Orchestrator telemetry and its building blocks on real inputs: per-stage spans and Prometheus metrics
from a real turn (in-process backend, real Redis), silero VAD on recorded speech, settings that fail early."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from glmvoice.audio import read_wav, resample
from glmvoice.telemetry import Metrics
from services.orchestrator.auth import ApiKeys
from services.orchestrator.errors import Unauthenticated
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.settings import Settings, SettingsError
from services.orchestrator.vad import VadModel, VadStream
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture, until tests/conftest.py registers the plugin
from tests.integration.test_orchestrator import (  # noqa: F401 - shared fixtures and client helpers
    CLIP,
    GREEDY,
    audio_requests,
    checkpoints,
    clip_frames,
    config_request,
    converse,
)

pytestmark = pytest.mark.integration


def test_turn_spans_and_metrics(tmp_path, redis_server, checkpoints):  # noqa: F811
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = Metrics()
    settings = Settings(
        backend="inprocess", redis_addr=redis_server.addr, checkpoints=checkpoints, grpc_port=0, bind_address="127.0.0.1",
    )
    server = OrchestratorThread.start(settings, metrics=metrics, tracer=provider.get_tracer("test"))
    try:
        config = config_request("LINEAR16", 16000, "MULAW", 8000, max_new_tokens=40, **GREEDY)
        transcript = converse(server.address, audio_requests(config, clip_frames("LINEAR16", 16000), True), key="")
    finally:
        server.stop()
    [turn] = transcript.turns
    spans = {span.name: span for span in exporter.get_finished_spans()}
    parent = spans["glmvoice.turn"]
    assert parent.attributes["session_id"] == transcript.session_id
    assert parent.attributes["latency.first_audio_ms"] == pytest.approx(turn.latency.first_audio_ms)
    for stage in ("tokenize", "prefill", "speech_decode", "reply"):
        assert spans[stage].parent.span_id == parent.context.span_id
        assert spans[stage].end_time >= spans[stage].start_time
    text = generate_latest(metrics.registry).decode()
    assert "glmvoice_active_streams 0.0" in text
    assert 'glmvoice_stage_latency_ms_count{stage="first_audio"} 1.0' in text
    assert 'glmvoice_turns_total{reason="length"} 1.0' in text or 'glmvoice_turns_total{reason="completed"} 1.0' in text


def test_vad_hears_recorded_speech_and_not_silence():
    samples, rate = read_wav(CLIP)
    speech = resample(samples, rate, 16000)
    stream = VadStream(VadModel(), silence_ms=300)
    events = []
    audio = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    for i in range(0, len(audio), 320):  # 20 ms frames
        events += stream.push(audio[i : i + 320])
    assert [e.kind for e in events] == ["start", "stop"]
    start, stop = (e.sample for e in events)
    assert 8000 <= start < 8000 + len(speech) // 2
    assert 8000 + len(speech) // 2 < stop <= 8000 + len(speech) + 16000
    quiet = VadStream(VadModel())
    assert quiet.push(np.zeros(32000, np.float32)) == []


def test_settings_fail_early_with_the_missing_dependency(tmp_path):
    with pytest.raises(SettingsError, match="REDIS_ADDR"):
        Settings(backend="triton").check()
    with pytest.raises(SettingsError, match="TRITON_LLM_ADDR"):
        Settings(redis_addr="127.0.0.1:1", triton_speech_tokenizer_addr="x:1", triton_speech_decoder_addr="x:1").check()
    with pytest.raises(SettingsError, match="does not exist"):
        Settings(backend="inprocess", redis_addr="127.0.0.1:1", checkpoints=tmp_path).check()
    env = {"REDIS_ADDR": "127.0.0.1:7", "GRPC_PORT": "6000", "BACKEND": "inprocess"}
    settings = Settings.from_args(["--grpc-port", "7000"], env)
    assert (settings.redis_addr, settings.grpc_port, settings.backend) == ("127.0.0.1:7", 7000, "inprocess")


def test_api_keys(tmp_path: Path):
    path = tmp_path / "keys"
    path.write_text("# comment\nalpha\n\nbeta\n")
    keys = ApiKeys.from_file(path)
    assert keys.identity({"authorization": "Bearer alpha"}) == keys.identity({"x-api-key": "alpha"})
    assert keys.identity({"x-api-key": "alpha"}) != keys.identity({"x-api-key": "beta"})
    for metadata in ({}, {"x-api-key": "gamma"}, {"authorization": "Basic alpha"}, {"authorization": "Bearer "}):
        with pytest.raises(Unauthenticated):
            keys.identity(metadata)
    assert ApiKeys.from_file(None).identity({}) == "anonymous"


def test_health_follows_redis(tmp_path, checkpoints):  # noqa: F811
    """A replica whose Redis is gone reports NOT_SERVING and refuses new streams with UNAVAILABLE."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.local_stack import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    settings = Settings(backend="inprocess", redis_addr=redis.addr, checkpoints=checkpoints, grpc_port=0,
                        bind_address="127.0.0.1", health_interval_s=0.1)
    server = OrchestratorThread.start(settings)
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status_after_change(expected, timeout_s=10.0):
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    if status == expected:
                        return status
                    time.sleep(0.05)
                return status

            assert status_after_change(health_pb2.HealthCheckResponse.SERVING) == health_pb2.HealthCheckResponse.SERVING
            redis.stop()
            assert status_after_change(health_pb2.HealthCheckResponse.NOT_SERVING) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                converse(server.address, iter([config_request("LINEAR16", 16000, "LINEAR16", 16000)]), key="")
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            redis = RedisServer(tmp_path / "redis", port=redis.port).start()
            assert status_after_change(health_pb2.HealthCheckResponse.SERVING) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()
        redis.stop()


def test_style_instruction_rides_with_the_first_turn(redis_server, checkpoints):  # noqa: F811
    from tests.integration.test_orchestrator import get_session

    settings = Settings(backend="inprocess", redis_addr=redis_server.addr, checkpoints=checkpoints, grpc_port=0,
                        bind_address="127.0.0.1")
    server = OrchestratorThread.start(settings)
    try:
        config = config_request("LINEAR16", 16000, "LINEAR16", 16000, style="speak slowly", max_new_tokens=5, **GREEDY)
        first = converse(server.address, audio_requests(config, clip_frames("LINEAR16", 16000), True), key="")
        again = config_request("LINEAR16", 16000, "LINEAR16", 16000, style="speak slowly", max_new_tokens=5,
                               session_id=first.session_id, **GREEDY)
        converse(server.address, audio_requests(again, clip_frames("LINEAR16", 16000), True), key="")
        turns = get_session(server.address, first.session_id, key="").turns
    finally:
        server.stop()
    assert [(t.role, t.text) for t in turns if t.role == "user"] == [("user", "speak slowly"), ("user", "")]
