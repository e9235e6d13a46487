"""Session routing over three real `llm` Triton replicas, and release of streams at barge-in.

The orchestrator runs with TRITON_LLM_ADDR listing three replicas (Triton processes serving the same tiny LM)
and one Triton for the tokenizer and decoder. Each replica's own request counter shows where turns went.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import grpc
import pytest

from glmvoice.client import config_request
from glmvoice.v1 import voice_chat_pb2 as pb
from services.orchestrator.server import OrchestratorThread
from services.triton.local_replicas import metric, start_replica
from tests.fixtures.redis import redis_server  # noqa: F401
from tests.integration.test_orchestrator import (  # noqa: F401 - fixtures
    GREEDY,
    LiveStream,
    checkpoints,
    clip_frames,
    get_session,
    keys_file,
    text_turn,
    triton_settings,
)

pytestmark = pytest.mark.integration
SUCCESS = "nv_inference_request_success"


@pytest.fixture(scope="module")
def llm_replicas(model_repository, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("llm-replicas")
    servers = []
    try:
        for _ in range(3):
            servers.append(start_replica(model_repository, ("llm",), log_dir))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def routed(triton_settings, llm_replicas):  # noqa: F811
    settings = replace(triton_settings, triton_llm_addr=",".join(s.grpc_url for s in llm_replicas), max_streams=32)
    server = OrchestratorThread.start(settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def single(triton_settings):  # noqa: F811 - one Triton serves all three models
    server = OrchestratorThread.start(replace(triton_settings, max_streams=32))
    yield server
    server.stop()


def first_choice(routed, session_id: str) -> str:
    return routed.orchestrator.backend.routers["llm"].order(session_id)[0]


def llm_requests(replicas) -> dict[str, float]:
    return {s.grpc_url: metric(s, SUCCESS, model="llm") for s in replicas}


def wait_gauge(server, name: str, until, timeout_s: float) -> tuple[float, float]:
    """Polls a Triton gauge until `until(value)` -> (value, seconds it took)."""
    start = time.monotonic()
    while True:
        value = metric(server, name)
        if until(value) or time.monotonic() - start > timeout_s:
            return value, time.monotonic() - start
        time.sleep(0.05)


def test_every_turn_of_a_session_goes_to_its_replica(routed, llm_replicas):
    before = llm_requests(llm_replicas)
    expected = {s.grpc_url: 0 for s in llm_replicas}
    for i in range(4):
        session_id = text_turn(routed.address, f"hello {i}", max_new_tokens=8).session_id
        for turn in range(2):
            text_turn(routed.address, f"turn {turn}", session_id=session_id, max_new_tokens=8)
        expected[first_choice(routed, session_id)] += 3
    after = llm_requests(llm_replicas)
    assert {url: after[url] - before[url] for url in after} == expected


def test_barge_in_frees_decoder_and_tokenizer_streams_at_once(single, triton_server):
    streams = [LiveStream(single.address) for _ in range(4)]
    try:
        for stream in streams:
            stream.send(config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=400, **GREEDY))
            stream.next_event()
            stream.send(pb.ConverseRequest(text=pb.TextTurn(text="tell me a long story")))
        for stream in streams:  # every reply is playing: its decoder stream is open
            while stream.next_event().WhichOneof("event") != "audio":
                pass
        open_now, _ = wait_gauge(triton_server, "glmvoice_speech_decoder_open_streams", lambda v: v >= 1, 5)
        assert open_now >= 1
        for stream in streams:
            stream.send(pb.ConverseRequest(cancel=pb.Cancel()))
        value, seconds = wait_gauge(triton_server, "glmvoice_speech_decoder_open_streams", lambda v: v == 0, 5)
        assert value == 0 and seconds < 1.0, ("decoder streams after Cancel", value, seconds)  # not the 60 s idle timeout
        # A user turn abandoned mid-speech (the client goes away): its tokenizer stream is freed too.
        speaker = streams[0]
        speaker.send_audio(clip_frames("LINEAR16", 16000)[:50])
        opened, _ = wait_gauge(triton_server, "glmvoice_speech_tokenizer_open_streams", lambda v: v >= 1, 10)
        assert opened >= 1
        speaker.shutdown()
        value, seconds = wait_gauge(triton_server, "glmvoice_speech_tokenizer_open_streams", lambda v: v == 0, 5)
        assert value == 0 and seconds < 1.0, (value, seconds)
    finally:
        for stream in streams:
            stream.shutdown()


def test_a_killed_replica_fails_in_flight_turns_fast_and_next_turns_reroute(routed, llm_replicas):
    victim = llm_replicas[0]
    sessions = {}
    while len(sessions) < 2:  # one session whose replica dies, one whose replica lives: same turns
        session_id = text_turn(routed.address, "first turn", max_new_tokens=12).session_id
        sessions.setdefault(first_choice(routed, session_id) == victim.grpc_url, session_id)
    hit, control = sessions[True], sessions[False]
    reroutes = routed.orchestrator.metrics.registry.get_sample_value("glmvoice_reroutes_total", {"network": "llm"}) or 0

    stream = LiveStream(routed.address)
    try:
        stream.send(config_request("LINEAR16", 16000, "LINEAR16", 16000, session_id=hit, max_new_tokens=2000, **GREEDY))
        stream.next_event()
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text="a long answer please")))
        while stream.next_event().WhichOneof("event") not in ("text_delta", "audio"):
            pass
        os.kill(victim.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            while stream.next_event(timeout=10).WhichOneof("event") != "turn_ended":
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "llm" in info.value.details()
        assert time.monotonic() - killed < 2.0
    finally:
        stream.shutdown()
        victim.process.wait(10)

    answer = text_turn(routed.address, "second turn", session_id=hit, max_new_tokens=12)
    reference = text_turn(routed.address, "second turn", session_id=control, max_new_tokens=12)
    assert answer.turns[0].text == reference.turns[0].text  # same greedy answer on another replica
    after = routed.orchestrator.metrics.registry.get_sample_value("glmvoice_reroutes_total", {"network": "llm"})
    assert after == reroutes + 1
    session = get_session(routed.address, hit)
    assert [t.role for t in session.turns] == ["user", "assistant"] * 2  # the failed turn kept nothing, lost nothing
    assert session.turns[2].text == "second turn"
