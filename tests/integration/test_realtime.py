"""`/v1/realtime` through the real stack (uvicorn -> orchestrator -> Triton, Redis), driven by the official
`openai` SDK's GA realtime client. Every server event is also validated against the SDK's own event
classes (the SDK itself builds them without validation), so a field we get wrong fails here.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json

import grpc
import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import realtime_server_event
from pydantic import TypeAdapter
from websockets.sync.client import connect

from glmvoice.audio import decode, encode, read_wav, resample
from glmvoice.v1 import voice_chat_pb2 as pb
from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture, until tests/conftest.py registers the plugin
from tests.integration.test_gateway import gateway  # noqa: F401 - the gateway in front of the Triton orchestrator
from tests.integration.test_orchestrator import (  # noqa: F401 - shared fixtures and helpers
    CLIP,
    KEYS,
    checkpoints,
    keys_file,
    orchestrator,
    triton_settings,
)

pytestmark = pytest.mark.integration
SERVER_EVENT = TypeAdapter(realtime_server_event.RealtimeServerEvent)
GREEDY = {"temperature": 0, "seed": 7}


def clip(rate: int, silence_s: float = 1.0) -> np.ndarray:
    samples, clip_rate = read_wav(CLIP)
    return np.concatenate([resample(samples, clip_rate, rate), np.zeros(int(rate * silence_s), np.float32)])


def strict(event):
    """The event re-validated by the SDK's pydantic classes: required fields present, types right."""
    checked = SERVER_EVENT.validate_python(event.to_dict())
    assert type(checked) is type(event), (event.type, type(checked), type(event))
    return event


class Client:
    """One GA connection: `send` client events, `until(type)` collects strict server events."""

    def __init__(self, connection):
        self.connection = connection
        self.seen: list = []

    async def next(self, timeout: float = 120.0):
        event = strict(await asyncio.wait_for(self.connection.recv(), timeout))
        self.seen.append(event)
        return event

    async def until(self, kind: str, timeout: float = 120.0) -> list:
        events = []
        while not events or events[-1].type != kind:
            events.append(await self.next(timeout))
        return events

    async def stream(self, audio: bytes, chunk: int) -> None:
        for start in range(0, len(audio), chunk):
            await self.connection.input_audio_buffer.append(audio=base64.b64encode(audio[start : start + chunk]).decode())


def sdk(gateway, key: str = KEYS[0]) -> AsyncOpenAI:  # noqa: F811
    return AsyncOpenAI(base_url=f"http://{gateway}/v1", api_key=key)


def session_turns(orchestrator, session_id: str) -> list:  # noqa: F811
    with grpc.insecure_channel(orchestrator.address) as channel:
        reply = VoiceChatStub(channel).GetSession(pb.GetSessionRequest(session_id=session_id),
                                                  metadata=[("authorization", f"Bearer {KEYS[0]}")], timeout=10)
    return list(reply.turns)


PCM24 = {"type": "audio/pcm", "rate": 24000}


def test_sdk_spoken_turn_at_24k_pcm16(gateway, orchestrator):  # noqa: F811
    async def run():
        async with sdk(gateway).realtime.connect(model="glm-4-voice") as connection:
            client = Client(connection)
            created = await client.next()
            assert created.type == "session.created" and created.session.model == "glm-4-voice"
            session_id = created.session.model_extra["glmvoice"]["session_id"]
            conversation = await client.next()
            assert conversation.type == "conversation.created" and conversation.conversation.id == session_id
            await connection.session.update(session={
                "type": "realtime", "output_modalities": ["audio"], "max_output_tokens": 60,
                "audio": {"input": {"format": PCM24, "turn_detection": {"type": "server_vad", "silence_duration_ms": 500,
                                                                         "threshold": 0.5}},
                          "output": {"format": PCM24}},
                "glmvoice": GREEDY,
            })
            updated = await client.next()
            assert updated.type == "session.updated" and updated.session.audio.input.format.rate == 24000
            await client.stream(encode(clip(24000), "LINEAR16"), 4800)  # 100 ms chunks
            return session_id, await client.until("response.done")

    session_id, events = asyncio.run(run())
    types = [e.type for e in events]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "conversation.item.added", "response.created", "response.output_item.added", "response.content_part.added",
             "response.output_audio.delta", "response.output_audio.done", "response.output_audio_transcript.done",
             "response.content_part.done", "response.output_item.done", "response.done"]
    positions = [types.index(kind) for kind in order]
    assert positions == sorted(positions), types
    # The transcript streams between the content part's start and the transcript's .done, and adds up to it.
    deltas = [i for i, kind in enumerate(types) if kind == "response.output_audio_transcript.delta"]
    assert deltas, types
    done_at = types.index("response.output_audio_transcript.done")
    assert types.index("response.content_part.added") < deltas[0] and deltas[-1] < done_at
    assert "".join(events[i].delta for i in deltas) == events[done_at].transcript != ""
    started = events[types.index("input_audio_buffer.speech_started")]
    assert started.item_id == events[types.index("input_audio_buffer.committed")].item_id
    assert len({e.event_id for e in events}) == len(events)
    done = events[-1].response
    assert done.output[0].role == "assistant"
    # Random tiny weights may run to the budget: then the response is incomplete, and says why.
    assert (done.status, done.status_details and done.status_details.reason) in (
        ("completed", None), ("incomplete", "max_output_tokens"))
    transcript = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert done.output[0].content[0].transcript == transcript
    pcm = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    assert len(pcm) / 2 / 24000 == pytest.approx(done.model_extra["glmvoice"]["audio_seconds"], abs=1e-3)
    usage = done.usage
    assert usage.output_token_details.audio_tokens > 0 and usage.input_token_details.audio_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert [t.role for t in session_turns(orchestrator, session_id)] == ["user", "assistant"]


def agents_sdk_version() -> str | None:
    try:
        return importlib.metadata.version("openai-agents")
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.skipif(agents_sdk_version() is None, reason="openai-agents is not installed here (docs/api.md, Frameworks)")
def test_openai_agents_realtime_runner_completes_a_spoken_turn(gateway, orchestrator):  # noqa: F811
    """The OpenAI Agents SDK's realtime runner (RealtimeAgent + RealtimeRunner on its own WebSocket model),
    pointed at the gateway through `model_config` (`url`, `api_key`, `initial_model_settings`): its first
    session.update is accepted, the recording goes in as its `send_audio` chunks (input_audio_buffer.append),
    server VAD ends the turn, and the reply comes back as the runner's typed `audio` events and an assistant
    item in its history whose transcript is the one the server streamed.

    The settings an OpenAI default would get an `error` for are set to what we serve: the voice, no input
    transcription model, server_vad (the SDK defaults to semantic_vad) and no OpenAI tracing."""
    from agents.realtime import RealtimeAgent, RealtimeRunner

    settings = {"model_name": "glm-4-voice", "voice": "glm-4-voice", "output_modalities": ["audio"],
                "input_audio_format": "pcm16", "output_audio_format": "pcm16", "input_audio_transcription": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500},
                "max_output_tokens": 60, "tracing": None}
    model_config = {"url": f"ws://{gateway}/v1/realtime?model=glm-4-voice", "api_key": KEYS[0],
                    "initial_model_settings": settings}

    async def run():
        runner = RealtimeRunner(RealtimeAgent(name="glm-4-voice", instructions=""))
        events, raw, history = [], [], {}  # history: item id -> the runner's latest version of the item
        async with await runner.run(model_config=model_config) as session:
            speech = encode(clip(24000), "LINEAR16")
            for start in range(0, len(speech), 4800):  # 100 ms chunks
                await session.send_audio(speech[start : start + 4800])

            async def collect():
                async for event in session:
                    events.append(event)
                    if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                        raw.append(event.data.data)
                    elif event.type == "history_updated":
                        history.clear()
                        history.update((item.item_id, item) for item in event.history)
                    elif event.type == "history_added":
                        history[event.item.item_id] = event.item
                    elif event.type == "agent_end":
                        return

            await asyncio.wait_for(collect(), 180)
        return events, raw, history

    events, raw, history = asyncio.run(run())
    assert not [e.error for e in events if e.type == "error"]
    types = [e["type"] for e in raw]
    assert types[:2] == ["session.created", "conversation.created"] and "session.updated" in types
    updated = raw[types.index("session.updated")]["session"]
    assert updated["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert updated["audio"]["output"]["voice"] == "glm-4-voice" and updated["max_output_tokens"] == 60
    assert types.index("input_audio_buffer.committed") < types.index("response.created") < types.index("response.done")
    # Audio: the runner's typed events carry exactly what the server sent, as long as response.done says.
    pcm = b"".join(e.audio.data for e in events if e.type == "audio")
    sent = b"".join(base64.b64decode(e["delta"]) for e in raw if e["type"] == "response.output_audio.delta")
    done = raw[types.index("response.done")]["response"]
    assert pcm == sent and len(pcm) > 0
    assert len(pcm) / 2 / 24000 == pytest.approx(done["glmvoice"]["audio_seconds"], abs=1e-3)
    assert any(e.type == "audio_end" for e in events) and done["status"] in ("completed", "incomplete")
    # Transcript: the assistant item in the runner's history holds the one the server streamed.
    transcript = "".join(e["delta"] for e in raw if e["type"] == "response.output_audio_transcript.delta")
    assert [e["transcript"] for e in raw if e["type"] == "response.output_audio_transcript.done"] == [transcript]
    assistant = [item for item in history.values() if item.type == "message" and item.role == "assistant"]
    assert [item.item_id for item in assistant] == [done["output"][0]["id"]]
    assert assistant[0].content[0].type == "audio" and assistant[0].content[0].transcript == transcript
    assert [t.role for t in session_turns(orchestrator, done["glmvoice"]["session_id"])] == ["user", "assistant"]


def test_sdk_mulaw_client_commits_barge_in_cancel_and_truncate(gateway, orchestrator):  # noqa: F811
    """g711 mu-law both ways, turn detection off: commit, response.create, cancel on barge-in, truncate to
    what was played; the session's history keeps exactly the speech tokens of the played audio."""
    async def run():
        async with sdk(gateway).realtime.connect(model="glm-4-voice") as connection:
            client = Client(connection)
            session_id = (await client.next()).session.model_extra["glmvoice"]["session_id"]
            await connection.session.update(session={
                "type": "realtime", "max_output_tokens": 200,
                "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None},
                          "output": {"format": {"type": "audio/pcmu"}}},
                "glmvoice": GREEDY,
            })
            updated = (await client.until("session.updated"))[-1]
            assert updated.session.audio.input.turn_detection is None
            await client.stream(encode(clip(8000, 0.0), "MULAW"), 800)
            await connection.input_audio_buffer.commit()
            committed = await client.until("conversation.item.done")
            assert committed[0].type == "input_audio_buffer.committed"
            await connection.response.create()
            events = await client.until("response.output_audio.delta")
            played = base64.b64decode(events[-1].delta)
            await connection.response.cancel()
            events += await client.until("response.done")
            sent = session_turns(orchestrator, session_id)[-1]
            item_id = events[-1].response.output[0].id
            played_ms = len(played) * 1000 // 8000 // 2  # the user heard half the first chunk
            await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=played_ms)
            truncated = await client.until("conversation.item.truncated")
            await connection.conversation.item.retrieve(item_id=item_id)
            retrieved = await client.until("conversation.item.retrieved")
            return sent, events, truncated[-1], retrieved[-1].item, played_ms

    sent, events, truncated, item, played_ms = asyncio.run(run())
    done = events[-1].response
    assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
    assert truncated.audio_end_ms == played_ms and truncated.item_id == done.output[0].id == item.id
    sent_seconds = done.model_extra["glmvoice"]["audio_seconds"]
    assert sent.role == "assistant" and sent.speech_tokens > 0 and sent_seconds > played_ms / 1000
    # The history keeps the speech tokens of the played audio (audio per token measured on this reply) and
    # the text before the first token not heard; the conversation item's transcript says the same.
    assistant = session_turns(orchestrator, done.model_extra["glmvoice"]["session_id"])[-1]
    assert assistant.speech_tokens == int(played_ms / 1000 / sent_seconds * sent.speech_tokens)
    assert item.content[0].transcript == assistant.text and sent.text.startswith(assistant.text)


def test_sdk_truncate_while_the_reply_plays_without_cancel(gateway, orchestrator, triton_settings):  # noqa: F811
    """Barge-in as many clients send it: conversation.item.truncate alone, while the reply still streams. The
    reply ends cancelled (client_cancelled), the item is cut to what was played, and the session's history
    in Redis holds exactly the speech tokens of the played audio and the text before the first one not heard."""
    async def run():
        async with sdk(gateway).realtime.connect(model="glm-4-voice") as connection:
            client = Client(connection)
            session_id = (await client.next()).session.model_extra["glmvoice"]["session_id"]
            await connection.session.update(session={
                "type": "realtime", "max_output_tokens": 400,
                "audio": {"input": {"format": PCM24, "turn_detection": None}, "output": {"format": PCM24}},
                "glmvoice": GREEDY,
            })
            await client.until("session.updated")
            await client.stream(encode(clip(24000, 0.0), "LINEAR16"), 4800)
            await connection.input_audio_buffer.commit()
            await client.until("conversation.item.done")
            await connection.response.create()
            events = await client.until("response.output_audio.delta")
            item_id = next(e.item.id for e in events if e.type == "response.output_item.added")
            played_ms = len(base64.b64decode(events[-1].delta)) * 1000 // 24000 // 2  # the first chunk, all heard
            await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=played_ms)
            events += await client.until("conversation.item.truncated")
            await connection.conversation.item.retrieve(item_id=item_id)
            retrieved = (await client.until("conversation.item.retrieved"))[-1].item
            return session_id, item_id, played_ms, events, retrieved

    session_id, item_id, played_ms, events, item = asyncio.run(run())
    types = [e.type for e in events]
    assert "error" not in types, [e for e in events if e.type == "error"]
    assert "response.done" in types and types.index("response.done") < types.index("conversation.item.truncated")
    done = events[types.index("response.done")].response
    assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
    assert done.output[0].id == item_id == events[-1].item_id and events[-1].audio_end_ms == played_ms
    streamed = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    # The history: the assistant turn the truncate cut, as the conversation item says.
    user, assistant = session_turns(orchestrator, session_id)
    assert user.role == "user" and assistant.role == "assistant"
    assert item.content[0].transcript == assistant.text and streamed.startswith(assistant.text)
    assert done.output[0].content[0].transcript.startswith(assistant.text)
    # The cancelled reply kept the speech tokens of the audio it sent: one decoder block per audio chunk, and
    # each chunk is one output_audio.delta. The truncate keeps those of the played audio, audio per speech
    # token measured on this reply (observed: the first chunk played to its last whole millisecond keeps 9 of
    # its 10 tokens).
    sent_seconds = done.model_extra["glmvoice"]["audio_seconds"]
    chunks = types.count("response.output_audio.delta")
    kept = min(chunks * triton_settings.decoder_block_codes, done.usage.output_token_details.audio_tokens)
    assert sent_seconds * 1000 >= played_ms > 0 and kept > 0
    assert assistant.speech_tokens == int(played_ms / 1000 / sent_seconds * kept) > 0


def test_sdk_server_vad_barge_in_cancels_the_reply(gateway):  # noqa: F811
    """Speech over a reply: speech_started, the reply ends cancelled (turn_detected), the new turn is answered."""
    async def run():
        async with sdk(gateway).realtime.connect(model="glm-4-voice") as connection:
            client = Client(connection)
            await client.until("conversation.created")
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 600, "glmvoice": GREEDY,
                                                     "audio": {"input": {"format": PCM24}, "output": {"format": PCM24}}})
            await client.until("session.updated")
            speech = encode(clip(24000), "LINEAR16")
            await client.stream(speech, 4800)
            first = await client.until("response.output_audio.delta")
            await client.stream(speech, 4800)  # the user speaks again while the reply plays
            barge = await client.until("input_audio_buffer.speech_started")
            ended = await client.until("response.done")
            second = await client.until("response.done")
            return first, barge, ended, second

    first, barge, ended, second = asyncio.run(run())
    reply_id = next(e.response.id for e in first if e.type == "response.created")
    assert ended[-1].response.id == reply_id and ended[-1].response.status == "cancelled"
    assert ended[-1].response.status_details.reason == "turn_detected"
    assert not any(e.type == "response.done" for e in barge)
    assert second[-1].response.id != reply_id and any(e.type == "input_audio_buffer.committed" for e in ended + second)


def test_sdk_typed_errors_for_bad_input(gateway):  # noqa: F811
    async def run():
        async with sdk(gateway).realtime.connect(model="glm-4-voice") as connection:
            client = Client(connection)
            await client.until("conversation.created")
            bad = [
                {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/flac"}}}}},
                {"type": "session.update", "session": {"type": "realtime", "temperature_x": 1}},
                {"type": "session.update", "session": {"type": "realtime", "tools": [{"type": "function", "name": "f"}]}},
                {"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "evt_bad_audio"},
                {"type": "input_audio_buffer.commit"},
                {"type": "response.cancel"},
                {"type": "response.create"},
                {"type": "conversation.item.create", "item": {"type": "message", "role": "system",
                                                              "content": [{"type": "input_text", "text": "x"}]}},
                {"type": "no.such.event"},
            ]
            for event in bad:
                await connection.send(event)
            errors = [await client.next() for _ in bad]
            # The session still works: max_output_tokens "inf" is legal.
            await connection.session.update(session={"type": "realtime", "max_output_tokens": "inf"})
            return errors, await client.next()

    errors, updated = asyncio.run(run())
    assert all(e.type == "error" for e in errors), [e.type for e in errors]
    params = [e.error.param for e in errors]
    assert params[:4] == ["session.audio.input.format.type", "session.temperature_x", "session.tools", "audio"]
    assert errors[3].error.event_id == "evt_bad_audio"
    codes = [e.error.code for e in errors]
    assert codes[4:7] == ["input_audio_buffer_commit_empty", "response_cancel_not_active", "invalid_value"]
    assert params[7] == "item.role" and codes[8] == "unknown_event"
    assert all(e.error.type == "invalid_request_error" and e.error.message for e in errors)
    assert updated.type == "session.updated" and updated.session.max_output_tokens == "inf"


def test_sdk_text_item_and_text_only_response(gateway):  # noqa: F811
    async def run():
        async with sdk(gateway).realtime.connect(model="glm-4-voice") as connection:
            client = Client(connection)
            await client.until("conversation.created")
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": "hello there"}]})
            added = await client.until("conversation.item.done")
            await connection.response.create(response={"output_modalities": ["text"], "instructions": "speak slowly",
                                                       "metadata": {"turn": "1"}})
            return added, await client.until("response.done")

    added, events = asyncio.run(run())
    assert added[0].type == "conversation.item.added" and added[0].item.content[0].text == "hello there"
    types = {e.type for e in events}
    assert "response.output_audio.delta" not in types and "response.output_text.done" in types
    done = events[-1].response
    assert done.metadata == {"turn": "1"} and done.output_modalities == ["text"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert [e.text for e in events if e.type == "response.output_text.done"] == [text]


def test_auth_forms_and_beta_dialect(gateway):  # noqa: F811
    # No key: refused at the handshake with 401.
    with pytest.raises(Exception) as info:
        connect(f"ws://{gateway}/v1/realtime?model=glm-4-voice", open_timeout=30)
    assert "401" in str(info.value)
    # The browser form: the key in a subprotocol; the beta header selects the beta event names.
    protocols = ["realtime", f"openai-insecure-api-key.{KEYS[0]}", "openai-beta.realtime-v1"]
    with connect(f"ws://{gateway}/v1/realtime?model=glm-4-voice", subprotocols=protocols, open_timeout=30) as ws:
        assert ws.subprotocol == "realtime"
        created = json.loads(ws.recv(timeout=30))
        assert created["type"] == "session.created" and created["session"]["input_audio_format"] == "pcm16"
        assert json.loads(ws.recv(timeout=30))["type"] == "conversation.created"
        ws.send(json.dumps({"type": "session.update", "session": {
            "input_audio_format": "g711_ulaw", "output_audio_format": "pcm16", "turn_detection": None,
            "modalities": ["text", "audio"], "temperature": 0, "max_response_output_tokens": 40}}))
        assert json.loads(ws.recv(timeout=30))["session"]["input_audio_format"] == "g711_ulaw"
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}))
        ws.send(json.dumps({"type": "response.create"}))
        events = []
        while not events or events[-1]["type"] != "response.done":
            events.append(json.loads(ws.recv(timeout=120)))
    types = {e["type"] for e in events}
    assert {"conversation.item.created", "response.audio.delta", "response.audio_transcript.done"} <= types
    assert not any(t.startswith("response.output_audio") for t in types)
    assert all(e["event_id"] for e in events)
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
    assert len(decode(pcm, "LINEAR16")) > 0


def test_glmvoice_chat_finds_the_stack_and_speaks_both_protocols(gateway, orchestrator, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`glmvoice chat q.wav` (gRPC) and `glmvoice chat q.wav --ws` (/v1/realtime) with no addresses: both come
    from the stack file `make up` writes. The realtime turn resumes the gRPC turn's session."""
    from glmvoice.cli import main

    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps({"orchestrator": orchestrator.address, "gateway": f"http://{gateway}"}))
    monkeypatch.setenv("GLMVOICE_STACK_FILE", str(stack))
    common = ["--api-key", KEYS[0], "--temperature", "0", "--seed", "7", "--max-new-tokens", "40"]
    assert main(["chat", str(CLIP), "--encoding", "mulaw", "--rate", "8000", "--out", str(tmp_path / "a.wav"), *common]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["chat", str(CLIP), "--ws", "--encoding", "mulaw", "--out", str(tmp_path / "b.wav"),
                 "--session-id", first["session_id"], *common]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["session_id"] == first["session_id"] and second["status"] in ("completed", "incomplete")
    audio, rate = read_wav(tmp_path / "b.wav")
    assert rate == 24000 and len(audio) / rate == pytest.approx(second["audio_seconds"], abs=1e-3)
    assert second["usage"]["input_token_details"]["audio_tokens"] > 0 and second["latency_ms"]["first_audio"] > 0


def test_malformed_frames_get_error_events_and_the_socket_stays(gateway):  # noqa: F811
    """Non-JSON text, JSON that is not an object, a binary frame, a string where a number goes: each gets an
    `error` event; the socket stays open and still answers a valid event."""
    with connect(f"ws://{gateway}/v1/realtime?model=glm-4-voice", additional_headers={"Authorization": f"Bearer {KEYS[0]}"},
                 open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        assert json.loads(ws.recv(timeout=30))["type"] == "conversation.created"
        for frame in ("not json", "[1, 2]", b"\x00\x01binary",
                      json.dumps({"type": "session.update", "session": {"type": "realtime", "max_output_tokens": "many"}})):
            ws.send(frame)
            event = json.loads(ws.recv(timeout=30))
            assert event["type"] == "error" and event["error"]["message"], event
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "input_audio_buffer.cleared"
