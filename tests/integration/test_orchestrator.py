"""The orchestrator through the real stack: Triton (three tiny models), Redis, gRPC, real recorded speech.

The tiny LM has random weights, so replies are checked for structure (formats, rates, consistency between
text deltas, audio and TurnEnded, what the history keeps), and the Triton path against the in-process one.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from glmvoice import client
from glmvoice.audio import decode, read_wav, resample
from glmvoice.client import Transcript, config_request, frames
from glmvoice.v1 import voice_chat_pb2 as pb
from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub
from services.orchestrator.discovery import HealthListRequest, HealthListResponse
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.settings import Settings
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture, until tests/conftest.py registers the plugin

pytestmark = pytest.mark.integration
CLIP = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")
KEYS = ("key-alpha-123", "key-beta-456")
MAX_STREAMS = 2
GREEDY = dict(temperature=0.0, seed=7)


# ---- client helpers ---------------------------------------------------------------------------------
def auth(key: str = KEYS[0]):
    return [("authorization", f"Bearer {key}")]


def clip_frames(encoding: str, rate: int, silence_s: float = 0.0) -> list[bytes]:
    """The LibriVox clip resampled to `rate`, then `silence_s` of silence, as 20 ms frames in `encoding`."""
    samples, clip_rate = read_wav(CLIP)
    audio = np.concatenate([resample(samples, clip_rate, rate), np.zeros(int(rate * silence_s), np.float32)])
    return frames(audio, rate, encoding)


def audio_requests(config, wire: list[bytes], end_of_turn: bool = False):
    yield config
    for frame in wire:
        yield pb.ConverseRequest(audio=pb.AudioChunk(data=frame))
    if end_of_turn:
        yield pb.ConverseRequest(end_of_turn=pb.EndOfTurn())


def converse(address: str, requests, key: str = KEYS[0], timeout: float = 120.0) -> Transcript:
    return client.converse(address, requests, api_key=key, timeout=timeout)


def text_turn(address: str, text: str, session_id: str = "", key: str = KEYS[0], max_new_tokens: int = 30) -> Transcript:
    return client.text_turn(address, text, session_id=session_id, api_key=key, max_new_tokens=max_new_tokens, **GREEDY)


def get_session(address: str, session_id: str, key: str = KEYS[0]) -> pb.Session:
    return client.get_session(address, session_id, api_key=key)


class LiveStream(client.LiveStream):
    """glmvoice.client.LiveStream under the first test key unless told otherwise."""

    def __init__(self, address: str, key: str = KEYS[0], timeout: float = 120.0):
        super().__init__(address, api_key=key, timeout=timeout)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# ---- servers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text("# one key per line\n" + "\n".join(KEYS) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_speech_tokenizer_dir, tiny_llm_dir, tiny_speech_decoder_dir):
    """The tiny checkpoints under their published directory names (what CHECKPOINTS points at)."""
    root = tmp_path_factory.mktemp("checkpoints")
    for name, source in (
        ("glm-4-voice-tokenizer", tiny_speech_tokenizer_dir),
        ("glm-4-voice-9b", tiny_llm_dir),
        ("glm-4-voice-decoder", tiny_speech_decoder_dir),
    ):
        (root / name).symlink_to(source)
    return root


@pytest.fixture(scope="module")
def triton_settings(triton_server, redis_server, checkpoints, keys_file):  # noqa: F811
    return Settings(
        backend="triton", redis_addr=redis_server.addr, triton_speech_tokenizer_addr=triton_server.grpc_url,
        triton_llm_addr=triton_server.grpc_url, triton_speech_decoder_addr=triton_server.grpc_url,
        tokenizer_dir=checkpoints / "glm-4-voice-9b", grpc_port=0, bind_address="127.0.0.1",
        api_keys_file=keys_file, max_streams=MAX_STREAMS,
    )


@pytest.fixture(scope="module")
def orchestrator(triton_settings):
    server = OrchestratorThread.start(triton_settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def inprocess_orchestrator(triton_settings, checkpoints):
    from dataclasses import replace

    server = OrchestratorThread.start(replace(triton_settings, backend="inprocess", checkpoints=checkpoints))
    yield server
    server.stop()


# ---- tests ------------------------------------------------------------------------------------------
def test_mulaw_8k_telephony_stream_gets_audio_and_text(orchestrator, tiny_speech_tokenizer):
    """20 ms mu-law frames at 8 kHz, server VAD; the reply comes back as A-law at 16 kHz."""
    config = config_request("MULAW", 8000, "ALAW", 16000, server_vad=True, max_new_tokens=60, **GREEDY)
    transcript = converse(orchestrator.address, audio_requests(config, clip_frames("MULAW", 8000, silence_s=1.0)))

    kinds = transcript.events
    assert kinds[0] == "session_started" and kinds[-1] == "turn_ended"
    assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("audio")
    [turn] = transcript.turns
    assert "".join(transcript.text_deltas) == turn.text
    audio = decode(b"".join(transcript.audio), "ALAW")  # one byte per sample
    assert len(audio) == sum(len(chunk) for chunk in transcript.audio)
    assert turn.audio_seconds == pytest.approx(len(audio) / 16000)
    assert turn.audio_seconds > 0.5 and np.isfinite(audio).all() and np.abs(audio).max() > 0
    latency = turn.latency
    for name in ("tokenize_ms", "prefill_ms", "speech_decode_ms", "first_audio_ms", "real_time_factor"):
        assert getattr(latency, name) > 0, name
    assert latency.decode_to_first_speech_ms >= 0
    # The first audio follows tokenization, prefill, decoding to the first speech token and its block.
    assert latency.first_audio_ms >= latency.tokenize_ms + latency.prefill_ms

    session = get_session(orchestrator.address, transcript.session_id)
    assert [t.role for t in session.turns] == ["user", "assistant"]
    # The user turn is the speech plus what VAD needs around it: at most the clip and its trailing second.
    samples, rate = read_wav(CLIP)
    speech = tiny_speech_tokenizer.n_tokens(len(samples) * 16000 // rate)
    assert speech // 2 < session.turns[0].speech_tokens <= tiny_speech_tokenizer.n_tokens(len(samples) * 16000 // rate + 16000)
    assert session.turns[1].text == turn.text and session.turns[1].speech_tokens > 0
    assert 0 < session.ttl_seconds <= orchestrator.orchestrator.settings.session_ttl_s


def test_triton_backend_equals_in_process_backend(orchestrator, inprocess_orchestrator):
    """Greedy sampling, the same decoder seed: the distributed path changes nothing but timing."""
    config = config_request("LINEAR16", 16000, "LINEAR16", 22050, max_new_tokens=50, **GREEDY)
    wire = clip_frames("LINEAR16", 16000)
    served = converse(orchestrator.address, audio_requests(config, wire, end_of_turn=True))
    baseline = converse(inprocess_orchestrator.address, audio_requests(config, wire, end_of_turn=True))
    assert served.turns[0].text == baseline.turns[0].text
    assert served.turns[0].reason == baseline.turns[0].reason  # a stop read as the stop on both (not "length")
    assert served.text_deltas == baseline.text_deltas
    a = decode(b"".join(served.audio), "LINEAR16")
    b = decode(b"".join(baseline.audio), "LINEAR16")
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_barge_in_cancels_within_one_block_and_keeps_only_what_was_sent(orchestrator):
    stream = LiveStream(orchestrator.address)
    try:
        stream.send(config_request("LINEAR16", 16000, "LINEAR16", 16000, server_vad=True, max_new_tokens=400, **GREEDY))
        session_id = stream.next_event().session_started.session_id
        stream.send_audio(clip_frames("LINEAR16", 16000, silence_s=1.0))
        sent_audio, sent_text, events = [], [], []
        while not sent_audio:  # the reply has started to play
            event = stream.next_event()
            kind = event.WhichOneof("event")
            sent_audio += [event.audio.data] if kind == "audio" else []
            sent_text += [event.text_delta.text] if kind == "text_delta" else []
        stream.send_audio(clip_frames("LINEAR16", 16000, silence_s=1.0))  # the user speaks over it
        while True:
            event = stream.next_event()
            kind = event.WhichOneof("event")
            events.append(kind)
            sent_audio += [event.audio.data] if kind == "audio" else []
            sent_text += [event.text_delta.text] if kind == "text_delta" else []
            if kind == "turn_ended":
                cancelled = event.turn_ended
                break
        assert cancelled.reason == pb.TURN_END_REASON_CANCELLED, events
        assert "speech_started" in events and events[events.index("speech_started"):].count("audio") <= 1, events
        while (event := stream.next_event()).WhichOneof("event") != "turn_ended":
            pass  # the new turn is answered
        assert event.turn_ended.reason != pb.TURN_END_REASON_CANCELLED
        stream.close()
        assert stream.next_event() is None
    finally:
        stream.shutdown()
    assert cancelled.audio_seconds == pytest.approx(sum(len(chunk) for chunk in sent_audio) / 2 / 16000)
    assert "".join(sent_text).startswith(cancelled.text)
    session = get_session(orchestrator.address, session_id)
    assert [t.role for t in session.turns] == ["user", "assistant"] * 2
    kept = session.turns[1]
    assert kept.text == cancelled.text
    # Each audio chunk is one decoded block: the history holds the speech tokens of the blocks sent, no more.
    assert kept.speech_tokens == orchestrator.orchestrator.backend.decoder_block * len(sent_audio)


def test_history_survives_an_orchestrator_restart(triton_settings):
    first = OrchestratorThread.start(triton_settings)
    try:
        opened = text_turn(first.address, "What is two plus three?")
    finally:
        first.stop()
    session_id = opened.session_id
    second = OrchestratorThread.start(triton_settings)  # a new replica, the same Redis
    try:
        before = get_session(second.address, session_id)
        assert [t.role for t in before.turns] == ["user", "assistant"]
        assert before.turns[0].text == "What is two plus three?"
        assert before.turns[1].text == opened.turns[0].text
        resumed = text_turn(second.address, "And times four?", session_id=session_id)
        assert resumed.session_id == session_id and resumed.events[0] == "session_started"
        after = get_session(second.address, session_id)
        assert [t.text for t in after.turns][:2] == [t.text for t in before.turns]
        assert len(after.turns) == 4 and after.turns[2].text == "And times four?"
        # Another caller's key cannot see or delete it.
        code, _ = status_of(lambda: get_session(second.address, session_id, key=KEYS[1]))
        assert code == grpc.StatusCode.NOT_FOUND
        with grpc.insecure_channel(second.address) as channel:
            stub = VoiceChatStub(channel)
            assert not stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id), metadata=auth(KEYS[1])).deleted
            assert stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id), metadata=auth()).deleted
        code, _ = status_of(lambda: get_session(second.address, session_id))
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        second.stop()


def _config(**overrides):
    config = config_request("LINEAR16", 16000, "LINEAR16", 16000)
    for field, value in overrides.items():
        setattr(config.config.input_audio, field, value)
    return config


BAD_STREAMS = {
    "unknown encoding": lambda: [_config(encoding=9)],
    "unsupported rate": lambda: [_config(sample_rate_hz=11025)],
    "odd-length PCM": lambda: [_config(), pb.ConverseRequest(audio=pb.AudioChunk(data=b"\x01\x02\x03"))],
    "oversize chunk": lambda: [_config(), pb.ConverseRequest(audio=pb.AudioChunk(data=bytes(2 * 16000 * 2)))],
    "WAV file as a chunk": lambda: [_config(), pb.ConverseRequest(audio=pb.AudioChunk(data=b"RIFF" + bytes(100)))],
    "config not first": lambda: [pb.ConverseRequest(audio=pb.AudioChunk(data=bytes(640)))],
    "second config": lambda: [_config(), _config()],
    "text too long": lambda: [_config(), pb.ConverseRequest(text=pb.TextTurn(text="word " * 1000))],
    "empty message": lambda: [_config(), pb.ConverseRequest()],
}


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(orchestrator, case):
    code, details = status_of(lambda: converse(orchestrator.address, iter(BAD_STREAMS[case]())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details
    assert text_turn(orchestrator.address, "hello", max_new_tokens=5).turns  # still serving


def test_garbage_bytes_are_invalid_argument(orchestrator):
    with grpc.insecure_channel(orchestrator.address) as channel:
        raw = channel.stream_stream("/glmvoice.v1.VoiceChat/Converse", request_serializer=None, response_deserializer=None)
        code, details = status_of(lambda: list(raw(iter([b"\xff\xff\xff\xff garbage"]), metadata=auth(), timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in details
    assert text_turn(orchestrator.address, "hello", max_new_tokens=5).turns


@pytest.mark.parametrize("metadata", [[], [("authorization", "Bearer wrong-key")], [("authorization", "Basic abc")], [("x-api-key", "nope")]])
def test_authentication(orchestrator, metadata):
    with grpc.insecure_channel(orchestrator.address) as channel:
        stub = VoiceChatStub(channel)
        code, details = status_of(lambda: list(stub.Converse(iter([_config()]), metadata=metadata, timeout=10)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and details
        code, _ = status_of(lambda: stub.GetSession(pb.GetSessionRequest(session_id="abc"), metadata=metadata, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    # x-api-key is the other accepted header.
    with grpc.insecure_channel(orchestrator.address) as channel:
        code, _ = status_of(lambda: VoiceChatStub(channel).GetSession(
            pb.GetSessionRequest(session_id="abc"), metadata=[("x-api-key", KEYS[1])], timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND


def test_admission_limit_is_resource_exhausted(orchestrator):
    streams = [LiveStream(orchestrator.address) for _ in range(MAX_STREAMS)]
    try:
        for stream in streams:
            stream.send(_config())
            assert stream.next_event().WhichOneof("event") == "session_started"
        code, details = status_of(lambda: converse(orchestrator.address, iter([_config()])))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(MAX_STREAMS) in details
    finally:
        for stream in streams:
            stream.close()
            stream.shutdown()
    # Slots free up when streams end.
    deadline = time.monotonic() + 10
    while orchestrator.orchestrator.service.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text_turn(orchestrator.address, "hello", max_new_tokens=5).turns


def test_health_and_reflection(orchestrator):
    with grpc.insecure_channel(orchestrator.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="glmvoice.v1.VoiceChat"), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [reply] = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        # Reflection v1 (what current grpcurl asks first): the same answers under the v1 name.
        v1 = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                   request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                   response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol="glmvoice.v1.VoiceChat")
        [listed, described] = list(v1(iter([request, symbol]), timeout=5))
        listing = channel.unary_unary("/grpc.health.v1.Health/List", request_serializer=HealthListRequest.SerializeToString,
                                      response_deserializer=HealthListResponse.FromString)(HealthListRequest(), timeout=5)
    assert {"glmvoice.v1.VoiceChat", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert {s.name for s in listed.list_services_response.service} == names
    assert described.file_descriptor_response.file_descriptor_proto
    statuses = {entry.key: entry.value.status for entry in listing.statuses}
    assert statuses == {"": health_pb2.HealthCheckResponse.SERVING, "glmvoice.v1.VoiceChat": health_pb2.HealthCheckResponse.SERVING}


def test_speech_is_prefilled_while_the_user_speaks(inprocess_orchestrator, tiny_llm_dir):
    """Prefill-only requests under the session id cover the speech as it arrives: every prompt id is
    prefilled once, so end of speech leaves only the last block and the template's tail to prefill."""
    from glmvoice.chat_template import Conversation
    from glmvoice.models.text_tokenizer import TextTokenizer

    engine = inprocess_orchestrator.orchestrator.backend.engine
    before = engine.stats()
    config = config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=1, **GREEDY)
    transcript = converse(inprocess_orchestrator.address, audio_requests(config, clip_frames("LINEAR16", 16000), True))
    after = engine.stats()
    codes = get_session(inprocess_orchestrator.address, transcript.session_id).turns[0].speech_tokens
    prompt = Conversation(TextTokenizer.from_directory(tiny_llm_dir)).add_speech([0] * codes)
    requests = after["finished"] - before["finished"]
    fresh = after["prefill_tokens"] - before["prefill_tokens"]
    assert requests >= 3  # several prefills while speaking, then the reply
    # Each request re-feeds at most one id of its reused prefix (the engine keeps one to compute logits).
    assert len(prompt) <= fresh <= len(prompt) + requests
    assert after["prefix_reused_tokens"] - before["prefix_reused_tokens"] > 0


def test_a_callers_trace_continues_through_the_triton_turn(triton_settings):
    """With tracing on, a `traceparent` in the metadata parents the turn's spans and goes on to Triton."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = OrchestratorThread.start(triton_settings, tracer=provider.get_tracer("test"))
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    try:
        config = config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=30, **GREEDY)
        with grpc.insecure_channel(server.address) as channel:
            metadata = auth() + [("traceparent", f"00-{trace_id}-{parent_id}-01")]
            responses = list(VoiceChatStub(channel).Converse(
                audio_requests(config, clip_frames("LINEAR16", 16000), True), metadata=metadata, timeout=120))
    finally:
        server.stop()
    assert responses[-1].WhichOneof("event") == "turn_ended"
    turn = next(span for span in exporter.get_finished_spans() if span.name == "glmvoice.turn")
    assert f"{turn.context.trace_id:032x}" == trace_id and f"{turn.parent.span_id:016x}" == parent_id


def test_a_callers_deadline_bounds_its_turn_on_triton(orchestrator, triton_server):
    """A caller's short deadline: DEADLINE_EXCEEDED reaches it promptly and the LM slot is free again (the
    orchestrator's Triton calls carry what was left of the caller's deadline)."""
    from tests.integration.test_triton_llm import engine_gauges

    deadline_s = 1.5
    config = config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=2000, temperature=0.0, seed=7)
    began = time.monotonic()
    code, _ = status_of(lambda: converse(orchestrator.address, iter([config, pb.ConverseRequest(text=pb.TextTurn(text="hello"))]),
                                         timeout=deadline_s))
    took = time.monotonic() - began
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < deadline_s + 1.0
    freed_by = time.monotonic() + 5
    while engine_gauges(triton_server)["active"] and time.monotonic() < freed_by:
        time.sleep(0.05)
    assert engine_gauges(triton_server)["active"] == 0
    print(f"\nDEADLINE_EXCEEDED after {took:.2f} s (deadline {deadline_s} s); LM slot freed "
          f"{time.monotonic() - began - took:.2f} s later")
