"""The orchestrator's reply path through gRPC with the in-process backend (no Triton) and a real Redis:
Cancel and barge-in truncation (speech AND text the caller never heard), a text turn interrupting a reply
or a prefilled spoken turn, the bad-input checks of a Converse config, history overflow, and resuming
another caller's session.

A stored session (its LM ids in Redis) is the ground truth: replies are greedy, so the same prompt in a
fresh session gives the same ids, and a truncated reply must be exactly a prefix of the uninterrupted one.
"""

from __future__ import annotations

import time

import grpc
import pytest
import redis

from glmvoice.chat_template import Conversation
from glmvoice.client import config_request
from glmvoice.models.text_tokenizer import TextTokenizer
from glmvoice.v1 import voice_chat_pb2 as pb
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.session_store import KEY_PREFIX, SessionRecord
from services.orchestrator.settings import Settings
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture
from tests.integration.test_orchestrator import (  # noqa: F401 - fixtures
    GREEDY,
    KEYS,
    LiveStream,
    checkpoints,
    clip_frames,
    converse,
    keys_file,
    status_of,
    text_turn,
)

pytestmark = pytest.mark.integration
QUESTION = "Tell me a long story about the sea."
LONG = 300  # reply budget (LM ids): the reply is still running when it is interrupted


@pytest.fixture(scope="module")
def server(redis_server, checkpoints, keys_file):  # noqa: F811
    settings = Settings(
        backend="inprocess", redis_addr=redis_server.addr, checkpoints=checkpoints, grpc_port=0,
        bind_address="127.0.0.1", api_keys_file=keys_file, max_streams=4,
    )
    server = OrchestratorThread.start(settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokenizer(checkpoints):
    return TextTokenizer.from_directory(checkpoints / "glm-4-voice-9b")


@pytest.fixture(scope="module")
def store(redis_server):  # noqa: F811
    client = redis.Redis.from_url(f"redis://{redis_server.addr}")
    yield client
    client.close()


def stored(store, session_id: str) -> SessionRecord:
    return SessionRecord.from_json(store.get(KEY_PREFIX + session_id))


def config(**kw):
    return config_request("LINEAR16", 16000, "LINEAR16", 16000, **{"max_new_tokens": LONG, **GREEDY, **kw})


def read_until(stream: LiveStream, kind: str) -> tuple[list[pb.ConverseResponse], pb.ConverseResponse]:
    seen = []
    while (event := stream.next_event()).WhichOneof("event") != kind:
        seen.append(event)
    return seen, event


def cut_at_unheard_speech(tokenizer, ids: list[int], heard: int) -> list[int]:
    """The ids a caller heard: everything before the first speech code past the `heard` ones."""
    codes = 0
    for i, token in enumerate(ids):
        if tokenizer.is_audio(token):
            if codes == heard:
                return ids[:i]
            codes += 1
    return ids


# ---- Cancel and barge-in truncation ---------------------------------------------------------------
def test_cancel_keeps_the_heard_speech_and_only_the_text_before_it(server, tokenizer, store):
    prompt = Conversation(tokenizer).add_text(QUESTION)
    full = text_turn(server.address, QUESTION, max_new_tokens=LONG)
    whole = stored(store, full.session_id).ids[len(prompt):]

    stream = LiveStream(server.address)
    try:
        stream.send(config())
        session_id = stream.next_event().session_started.session_id
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text=QUESTION)))
        before, first_audio = read_until(stream, "audio")
        stream.send(pb.ConverseRequest(cancel=pb.Cancel()))
        after, ended = read_until(stream, "turn_ended")
        stream.close()
        assert stream.next_event() is None
    finally:
        stream.shutdown()
    assert ended.turn_ended.reason == pb.TURN_END_REASON_CANCELLED
    chunks = 1 + sum(e.WhichOneof("event") == "audio" for e in after)
    heard = chunks * server.orchestrator.backend.decoder_block
    expected = cut_at_unheard_speech(tokenizer, whole, heard)
    # The test bites only if the uninterrupted reply had text after the cut (it does for this prompt).
    assert any(tokenizer.is_text(t) for t in whole[len(expected):]), "choose a prompt whose reply continues in text"
    record = stored(store, session_id)
    assert record.ids[: len(prompt)] == prompt
    assert record.ids[len(prompt):] == expected
    expected_text = tokenizer.decode([t for t in expected if tokenizer.is_text(t)])
    assert record.turns[1].text == ended.turn_ended.text == expected_text
    assert record.turns[1].speech_tokens == heard


def test_truncate_keeps_the_played_speech_and_only_the_text_before_it(server, tokenizer, store):
    """Truncate after a whole reply (the client played half its audio): the history keeps the speech tokens of
    the played audio and no text after the first speech token not played, as Cancel does for unsent audio."""
    prompt = Conversation(tokenizer).add_text(QUESTION)
    stream = LiveStream(server.address)
    try:
        stream.send(config())
        session_id = stream.next_event().session_started.session_id
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text=QUESTION)))
        _, ended = read_until(stream, "turn_ended")
        whole = stored(store, session_id).ids[len(prompt):]
        seconds = ended.turn_ended.audio_seconds
        played_ms = int(seconds * 1000 / 2)
        stream.send(pb.ConverseRequest(truncate=pb.Truncate(audio_end_ms=played_ms)))
        _, truncated = read_until(stream, "truncated")
        stream.close()
        assert stream.next_event() is None
    finally:
        stream.shutdown()
    speech = sum(tokenizer.is_audio(t) for t in whole)
    heard = int(played_ms / 1000 / seconds * speech)
    expected = cut_at_unheard_speech(tokenizer, whole, heard)
    # The test bites only if the whole reply had text after the cut (it does for this prompt).
    assert 0 < heard < speech and any(tokenizer.is_text(t) for t in whole[len(expected):])
    record = stored(store, session_id)
    assert record.ids[: len(prompt)] == prompt
    assert record.ids[len(prompt):] == expected
    expected_text = tokenizer.decode([t for t in expected if tokenizer.is_text(t)])
    assert record.turns[1].text == truncated.truncated.text == expected_text
    assert record.turns[1].speech_tokens == truncated.truncated.speech_tokens == heard


def test_cancel_without_a_reply_changes_nothing(server, store):
    transcript = converse(server.address, iter([config(), pb.ConverseRequest(cancel=pb.Cancel())]))
    assert transcript.events == ["session_started"]
    assert stored(store, transcript.session_id).turns == []


def test_a_text_turn_interrupts_a_reply_and_is_answered_after_it(server, tokenizer, store):
    first, second = QUESTION, "Stop. What is two plus two?"
    stream = LiveStream(server.address)
    try:
        stream.send(config())
        session_id = stream.next_event().session_started.session_id
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text=first)))
        read_until(stream, "audio")
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text=second)))
        _, cancelled = read_until(stream, "turn_ended")
        _, answered = read_until(stream, "turn_ended")
        stream.close()
        assert stream.next_event() is None
    finally:
        stream.shutdown()
    assert cancelled.turn_ended.reason == pb.TURN_END_REASON_CANCELLED
    assert answered.turn_ended.reason != pb.TURN_END_REASON_CANCELLED
    record = stored(store, session_id)
    assert [(t.role, t.text) for t in record.turns][::2] == [("user", first), ("user", second)]
    assert record.turns[1].text == cancelled.turn_ended.text and record.turns[3].text == answered.turn_ended.text
    # History: the first prompt, the first reply as kept (truncated; no stop id), then the second question.
    first_prompt = Conversation(tokenizer).add_text(first)
    assert record.ids[: len(first_prompt)] == first_prompt
    second_turn = [i for i, t in enumerate(record.ids) if t == tokenizer.token_id("<|user|>")][1]
    history = Conversation(tokenizer, ids=record.ids[:second_turn])
    second_prompt = history.add_text(second)
    assert record.ids[: len(second_prompt)] == second_prompt


def test_a_text_turn_after_prefilled_speech_answers_as_a_fresh_text_session(server, store):
    """Speech is prefilled under the session id while the user talks; then they type instead. The typed
    prompt diverges from the prefilled KV mid-cache (system prompt onwards): the answer must be the one a
    session that never spoke gets."""
    engine = server.orchestrator.backend.engine
    fresh = text_turn(server.address, QUESTION, max_new_tokens=40)
    stream = LiveStream(server.address)
    try:
        stream.send(config(max_new_tokens=40))
        session_id = stream.next_event().session_started.session_id
        before = engine.stats()["finished"]
        stream.send_audio(clip_frames("LINEAR16", 16000)[:100])  # 2 s of speech, no end of turn
        deadline = time.monotonic() + 60
        while engine.stats()["finished"] < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # at least two prefill-only requests have finished under this session id
        assert engine.stats()["finished"] >= before + 2, "speech was not prefilled"
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text=QUESTION)))
        _, ended = read_until(stream, "turn_ended")
        stream.close()
        assert stream.next_event() is None
    finally:
        stream.shutdown()
    assert ended.turn_ended.text == fresh.turns[0].text
    assert stored(store, session_id).ids == stored(store, fresh.session_id).ids


# ---- bad input at the boundary --------------------------------------------------------------------
def _output(encoding=None, rate=None):
    request = config()
    if encoding is not None:
        request.config.output_audio.encoding = encoding
    if rate is not None:
        request.config.output_audio.sample_rate_hz = rate
    return request


ASK = pb.ConverseRequest(text=pb.TextTurn(text="hello"))
BAD_CONFIGS = {  # case -> (stream, words the status details must contain)
    "negative temperature": (lambda: [config(temperature=-0.5), ASK], "temperature"),
    "top_p above one": (lambda: [config(top_p=1.5), ASK], "top_p"),
    "negative top_k": (lambda: [config(top_k=-1), ASK], "top_k"),
    "zero repetition penalty": (lambda: [config(repetition_penalty=0.0), ASK], "repetition_penalty"),
    "zero max_new_tokens": (lambda: [config(max_new_tokens=0), ASK], "max_new_tokens"),
    "negative max_new_tokens": (lambda: [config(max_new_tokens=-3), ASK], "max_new_tokens"),
    "VAD silence too long": (lambda: [config(vad_silence_ms=20_000), ASK], "vad_silence_ms"),
    "VAD silence negative": (lambda: [config(vad_silence_ms=-1), ASK], "vad_silence_ms"),
    "style instruction too long": (lambda: [config(style="slowly " * 400), ASK], "style_instruction"),
    "session id with spaces": (lambda: [config(session_id="not a valid id"), ASK], "session_id"),
    "session id too long": (lambda: [config(session_id="a" * 129), ASK], "session_id"),
    "unknown output encoding": (lambda: [_output(encoding=9), ASK], "output_audio.encoding"),
    "unsupported output rate": (lambda: [_output(rate=12345), ASK], "output_audio.sample_rate_hz"),
    "empty text turn": (lambda: [config(), pb.ConverseRequest(text=pb.TextTurn(text="   "))], "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_invalid_argument_before_any_work(server, case):
    stream, words = BAD_CONFIGS[case]
    engine = server.orchestrator.backend.engine
    before = engine.stats()["finished"]
    code, details = status_of(lambda: converse(server.address, iter(stream())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert words in details, details
    assert engine.stats()["finished"] == before  # refused before the LM was asked


def test_history_overflow_is_invalid_argument_and_names_the_fix(server, tokenizer, store):
    owner = server.orchestrator.keys.identity({"authorization": f"Bearer {KEYS[0]}"})
    limit = server.orchestrator.backend.max_seq_len
    record = SessionRecord("overflowing-session", owner, ids=[tokenizer.token_id("<|user|>")] * (limit - 3))
    store.set(KEY_PREFIX + record.session_id, record.to_json(), ex=60)
    code, details = status_of(lambda: text_turn(server.address, "and then?", session_id=record.session_id))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "new session" in details, details
    assert stored(store, record.session_id).ids == record.ids  # nothing was added


def test_resuming_another_callers_session_through_converse_is_not_found(server, store):
    mine = text_turn(server.address, "hello", max_new_tokens=5)
    code, details = status_of(lambda: text_turn(server.address, "hi", session_id=mine.session_id, key=KEYS[1]))
    assert code == grpc.StatusCode.NOT_FOUND, details
    assert len(stored(store, mine.session_id).turns) == 2  # untouched
    code, _ = status_of(lambda: text_turn(server.address, "hi", session_id="no-such-session-123"))
    assert code == grpc.StatusCode.NOT_FOUND
