"""The HTTP/WebSocket gateway through the real stack: uvicorn -> gRPC orchestrator -> Triton, Redis."""

from __future__ import annotations

import base64
import json
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn

from glmvoice.audio import decode, read_wav, resample, wav_bytes
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture, until tests/conftest.py registers the plugin
from tests.fixtures.servers import free_port
from tests.integration.test_orchestrator import (  # noqa: F401 - shared fixtures and helpers
    CLIP,
    KEYS,
    checkpoints,
    keys_file,
    orchestrator,
    triton_settings,
)

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {KEYS[0]}"}


@contextmanager
def serve(app):
    """The app on uvicorn, on a free port, in a thread -> its host:port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", ws="websockets")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def gateway(orchestrator):
    with serve(create_app(GatewaySettings(orchestrator.address))) as address:
        yield address


def clip_wav(rate: int = 16000) -> bytes:
    samples, clip_rate = read_wav(CLIP)
    return wav_bytes(resample(samples, clip_rate, rate), rate)


def test_wav_in_wav_out(gateway):
    reply = httpx.post(
        f"http://{gateway}/v1/chat", params={"output_sample_rate": 16000, "max_new_tokens": 60}, content=clip_wav(),
        headers={**AUTH, "Content-Type": "audio/wav", "Accept": "audio/wav"}, timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "audio/wav" and reply.headers["x-session-id"]
    audio, rate = read_wav(reply.content)
    assert rate == 16000 and len(audio) > 0 and np.abs(audio).max() > 0


def test_json_in_json_out_and_the_session_continues(gateway):
    body = {"audio": base64.b64encode(clip_wav(8000)).decode(), "temperature": 0, "seed": 1, "max_new_tokens": 40,
            "output_sample_rate": 24000}
    first = httpx.post(f"http://{gateway}/v1/chat", json=body, headers=AUTH, timeout=120)
    assert first.status_code == 200, first.text
    data = first.json()
    audio, rate = read_wav(base64.b64decode(data["audio"]))
    assert rate == 24000 == data["sample_rate"]
    assert data["text"] == data["turn"]["text"]
    assert data["turn"]["audio_seconds"] == pytest.approx(len(audio) / rate, abs=1e-3)
    assert data["turn"]["latency"]["first_audio_ms"] > 0
    second = httpx.post(f"http://{gateway}/v1/chat", json={"text": "and then?", "session_id": data["session_id"],
                                                           "max_new_tokens": 10}, headers=AUTH, timeout=120)
    assert second.status_code == 200 and second.json()["session_id"] == data["session_id"]


def test_text_in_server_sent_events_out(gateway):
    events = []
    with httpx.stream("POST", f"http://{gateway}/v1/chat", json={"text": "hello there", "max_new_tokens": 40, "temperature": 0,
                                                                "output_sample_rate": 16000},
                      headers={**AUTH, "Accept": "text/event-stream"}, timeout=120) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        for block in reply.iter_text():
            events.append(block)
    parsed = []
    for chunk in "".join(events).strip().split("\n\n"):
        name, data = chunk.split("\n", 1)
        parsed.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    names = [name for name, _ in parsed]
    assert names[0] == "session_started" and names[-1] == "turn_ended"
    turn = parsed[-1][1]
    assert "".join(d["text"] for n, d in parsed if n == "text_delta") == turn["text"]
    pcm = b"".join(base64.b64decode(d["pcm16"]) for n, d in parsed if n == "audio")
    assert len(decode(pcm, "LINEAR16")) / 16000 == pytest.approx(turn["audio_seconds"], abs=1e-3)


@pytest.mark.parametrize("case, kwargs, status", [
    ("no key", dict(json={"text": "hi"}), 401),
    ("wrong key", dict(json={"text": "hi"}, headers={"X-API-Key": "nope"}), 401),
    ("not base64", dict(json={"audio": "%%%"}, headers=AUTH), 400),
    ("not a WAV", dict(json={"audio": base64.b64encode(b"hello").decode()}, headers=AUTH), 400),
    ("audio and text", dict(json={"audio": "", "text": "hi"}, headers=AUTH), 400),
    ("bad output rate", dict(json={"text": "hi", "output_sample_rate": 11025}, headers=AUTH), 400),
    ("unknown session", dict(json={"text": "hi", "session_id": "nosuchsession"}, headers=AUTH), 404),
    ("plain text body", dict(content=b"hi", headers={**AUTH, "Content-Type": "text/plain"}), 415),
])
def test_errors_map_to_http_statuses(gateway, case, kwargs, status):
    reply = httpx.post(f"http://{gateway}/v1/chat", timeout=60, **kwargs)
    assert reply.status_code == status, (case, reply.text)
    assert reply.json()["detail"]


def test_health_readiness_metrics_and_openapi(gateway):
    base = f"http://{gateway}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").status_code == 200
    assert "glmvoice_gateway_requests_total" in httpx.get(f"{base}/metrics").text
    content = httpx.get(f"{base}/openapi.json").json()["paths"]["/v1/chat"]["post"]["requestBody"]["content"]
    assert {"application/json", "audio/wav"} <= set(content)


def test_one_trace_from_gateway_to_orchestrator(redis_server, checkpoints):  # noqa: F811
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.orchestrator.server import OrchestratorThread
    from services.orchestrator.settings import Settings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(backend="inprocess", redis_addr=redis_server.addr, checkpoints=checkpoints, grpc_port=0,
                        bind_address="127.0.0.1")
    orchestrator = OrchestratorThread.start(settings, tracer=provider.get_tracer("orchestrator"))
    try:
        with serve(create_app(GatewaySettings(orchestrator.address), provider.get_tracer("gateway"))) as address:
            reply = httpx.post(f"http://{address}/v1/chat", json={"text": "hi", "max_new_tokens": 20}, timeout=120)
            assert reply.status_code == 200, reply.text
    finally:
        orchestrator.stop()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    gateway_span, turn = spans["gateway.chat"], spans["glmvoice.turn"]
    assert turn.context.trace_id == gateway_span.context.trace_id
    assert turn.parent.span_id == gateway_span.context.span_id
    assert spans["prefill"].parent.span_id == turn.context.span_id


# ---- abuse: nothing is read or decoded for a stranger, and bodies are bounded ---------------------------
@pytest.fixture(scope="module")
def guarded_gateway(orchestrator, keys_file):
    settings = GatewaySettings(orchestrator.address, max_body_bytes=64 * 1024, api_keys_file=keys_file)
    with serve(create_app(settings)) as address:
        yield address


def one_hertz_wav() -> bytes:
    """8 KB of samples whose header declares 1 Hz: resampled to 16 kHz it would be 16,000 times larger."""
    wav = bytearray(wav_bytes(np.zeros(4096, np.float32), 16000))
    wav[24:28] = (1).to_bytes(4, "little")  # sample rate
    wav[28:32] = (2).to_bytes(4, "little")  # byte rate
    return bytes(wav)


def test_amplifying_wav_is_refused_before_and_after_authentication(guarded_gateway):
    url = f"http://{guarded_gateway}/v1/chat"
    headers = {"Content-Type": "audio/wav"}
    stranger = httpx.post(url, content=one_hertz_wav(), headers=headers, timeout=30)
    assert stranger.status_code == 401
    started = time.monotonic()
    caller = httpx.post(url, content=one_hertz_wav(), headers={**AUTH, **headers}, timeout=30)
    assert caller.status_code == 400 and "sample rate" in caller.text
    assert time.monotonic() - started < 10  # refused from the header, no resampling


def test_oversized_bodies_are_refused_without_reading_them(guarded_gateway):
    url = f"http://{guarded_gateway}/v1/chat"
    declared = httpx.post(url, content=b"\0" * (64 * 1024 + 1), headers={**AUTH, "Content-Type": "audio/wav"}, timeout=30)
    assert declared.status_code == 413

    def chunks():  # no Content-Length: the cap applies while the body streams in
        for _ in range(100):
            yield b"\0" * 4096

    streamed = httpx.post(url, content=chunks(), headers={**AUTH, "Content-Type": "audio/wav"}, timeout=30)
    assert streamed.status_code == 413
