"""Faults in the serving path with real processes: the only Triton SIGKILLed mid-reply and restarted on the
same address; an orchestrator process SIGKILLed mid-reply while another, on the same Redis and Triton, takes
the session over. (Redis frozen / killed: test_orchestrator_limits.py; one of several llm replicas killed:
test_routing.py; an orchestrator stopped between turns: test_orchestrator.py -k restart.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glmvoice.client import config_request
from glmvoice.v1 import voice_chat_pb2 as pb
from loadtest.soak import describe
from services.local_stack import free_port, orchestrator_env, process_groups, wait_for_health
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.settings import Settings
from services.triton.launcher import TritonServer, TritonSettings
from services.triton.local_replicas import metric
from tests.fixtures.redis import redis_server  # noqa: F401 - fixture
from tests.integration.test_orchestrator import (  # noqa: F401 - shared fixtures and client helpers
    GREEDY,
    LiveStream,
    checkpoints,
    get_session,
    keys_file,
    text_turn,
)

pytestmark = pytest.mark.integration
UNAVAILABLE_WITHIN_S = 2.0


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def wait_health(address: str, status: int, timeout_s: float) -> float:
    """Seconds until the orchestrator's health reads `status` (fails the test after `timeout_s`)."""
    began = time.monotonic()
    while health_status(address) != status:
        assert time.monotonic() - began < timeout_s, f"health not {status} after {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - began


def long_reply_started(address: str, session_id: str) -> LiveStream:
    """A stream on `session_id` whose long reply has begun (a text delta or audio received)."""
    stream = LiveStream(address)
    stream.send(config_request("LINEAR16", 16000, "LINEAR16", 16000, session_id=session_id, max_new_tokens=2000, **GREEDY))
    assert stream.next_event(30).WhichOneof("event") == "session_started"
    stream.send(pb.ConverseRequest(text=pb.TextTurn(text="a long answer please")))
    while stream.next_event(60).WhichOneof("event") not in ("text_delta", "audio"):
        pass
    return stream


def failure_after(stream: LiveStream, began: float, timeout_s: float = 30) -> tuple[grpc.RpcError, float]:
    """Reads the stream until it fails: the error and the seconds since `began`."""
    with pytest.raises(grpc.RpcError) as info:
        while stream.next_event(timeout_s).WhichOneof("event") != "turn_ended":
            pass
    return info.value, time.monotonic() - began


def session_with_one_turn(address: str) -> tuple[str, list[tuple[str, str]]]:
    """A new session that has one finished turn: its id and its history as (role, text)."""
    session_id = text_turn(address, "first turn", max_new_tokens=12).session_id
    before = [(t.role, t.text) for t in get_session(address, session_id).turns]
    assert [role for role, _ in before] == ["user", "assistant"]
    return session_id, before


def killed_mid_reply(address: str, session_id: str, kill) -> tuple[grpc.RpcError, float, float]:
    """Starts a long reply on the session, calls `kill()` once it streams: the client's error, the seconds
    from the kill to it, and the kill's monotonic time."""
    stream = long_reply_started(address, session_id)
    try:
        kill()
        killed = time.monotonic()
        error, failed_s = failure_after(stream, killed)
    finally:
        stream.shutdown()
    return error, failed_s, killed


def assert_history_continued(address: str, session_id: str, before: list[tuple[str, str]]):
    """A second turn on the session is answered and saved after the turns `before` (nothing of the broken one);
    returns that turn's reply."""
    second = text_turn(address, "second turn", session_id=session_id, max_new_tokens=12)
    assert second.session_id == session_id and second.turns[0].text
    after = [(t.role, t.text) for t in get_session(address, session_id).turns]
    assert after == before + [("user", "second turn"), ("assistant", second.turns[0].text)]
    return second


@pytest.fixture(scope="module")
def own_triton(model_repository, tmp_path_factory):
    """The three tiny models in a Triton of this module's own, in a process group of its own (its python
    backend stubs are found, and killed at the end, through it); restartable on the same ports. The list's
    last server is the live one (a test that kills and restarts it appends the new one)."""
    settings = TritonSettings(model_repository=model_repository, models=("speech_tokenizer", "llm", "speech_decoder"),
                              grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    log = tmp_path_factory.mktemp("faults-triton") / "tritonserver.log"
    servers = [TritonServer(settings, log_path=log).start(ready_timeout_s=300, detach=True)]
    yield servers
    for server in servers:
        server.stop()
        if process_groups().get(server.process.pid):
            os.killpg(server.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def settings(own_triton, redis_server, checkpoints, keys_file):  # noqa: F811
    url = own_triton[0].grpc_url  # a restarted Triton keeps the address
    return Settings(
        backend="triton", redis_addr=redis_server.addr, triton_speech_tokenizer_addr=url, triton_llm_addr=url,
        triton_speech_decoder_addr=url, tokenizer_dir=checkpoints / "glm-4-voice-9b", grpc_port=0,
        bind_address="127.0.0.1", api_keys_file=keys_file, max_streams=8,
    )


def test_triton_killed_mid_reply_fails_fast_keeps_history_and_recovers(settings, own_triton):
    triton = own_triton[-1]
    url = triton.grpc_url
    orchestrator = OrchestratorThread.start(settings)
    try:
        address = orchestrator.address
        session_id, before = session_with_one_turn(address)
        stubs = [pid for pid in process_groups()[triton.process.pid] if pid != triton.process.pid]
        error, failed_s, killed = killed_mid_reply(address, session_id,
                                                   lambda: os.kill(triton.process.pid, signal.SIGKILL))
        triton.process.wait(10)
        print(f"\nTriton SIGKILLed mid-reply: the client got {error.code().name} after {failed_s:.3f} s: {error.details()}")
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert failed_s < UNAVAILABLE_WITHIN_S
        wait_health(address, health_pb2.HealthCheckResponse.NOT_SERVING, 10)
        not_serving_s = time.monotonic() - killed
        print(f"health NOT_SERVING {not_serving_s:.2f} s after the kill (at most)")
        assert not_serving_s < 5.0

        # The turn the caller did not hear is not in the history; what was there is intact.
        assert [(t.role, t.text) for t in get_session(address, session_id).turns] == before

        # The python backend stubs of a SIGKILLed Triton: say what is left, then clear them for the restart.
        time.sleep(1.0)
        left = [pid for pid in stubs if pid in process_groups().get(triton.process.pid, [])]
        print(f"python backend stubs left 1 s after the SIGKILL: {len(left)} of {len(stubs)} "
              f"{[describe(pid) for pid in left]}")
        if left:
            os.killpg(triton.process.pid, signal.SIGKILL)

        restarted = TritonServer(triton.settings, log_path=triton.log_path)
        own_triton.append(restarted)
        began = time.monotonic()
        restarted.start(ready_timeout_s=300, detach=True)
        ready_s = time.monotonic() - began
        serving_s = wait_health(address, health_pb2.HealthCheckResponse.SERVING, 30)
        print(f"Triton ready again {ready_s:.1f} s after restart on {url}; orchestrator SERVING {serving_s:.2f} s later")

        assert_history_continued(address, session_id, before)
    finally:
        orchestrator.stop()


def orchestrator_process(settings: Settings, log_path) -> tuple[subprocess.Popen, str]:
    """`python -m services.orchestrator` as a deployment runs it (a process of its own that can be SIGKILLed)."""
    port = free_port()
    env = {**os.environ, **orchestrator_env(settings.redis_addr, settings.triton_llm_addr, settings.tokenizer_dir.parent,
                                            port, free_port()),
           "GLMVOICE_API_KEYS_FILE": str(settings.api_keys_file), "BIND_ADDRESS": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "services.orchestrator"], env=env,
                               stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        wait_for_health(address, 180)
    except RuntimeError:
        process.kill()
        raise
    return process, address


def test_orchestrator_killed_mid_reply_the_session_resumes_on_another(settings, own_triton, tmp_path):
    """Two orchestrator processes on one Redis and one Triton. The one serving a reply is SIGKILLed: the client
    sees UNAVAILABLE, reconnects to the other with its session id and finds the history as it was (the turn
    in flight, never finished, is not in it); the dead replica's LM slot on Triton is freed."""
    triton = own_triton[-1]
    (first, first_address), (second, second_address) = (
        orchestrator_process(settings, tmp_path / f"orchestrator-{i}.log") for i in range(2))
    try:
        session_id, before = session_with_one_turn(first_address)
        error, failed_s, killed = killed_mid_reply(first_address, session_id, first.kill)
        first.wait(10)
        print(f"\norchestrator SIGKILLed mid-reply: the client got {error.code().name} after {failed_s:.3f} s")
        assert error.code() == grpc.StatusCode.UNAVAILABLE and failed_s < UNAVAILABLE_WITHIN_S

        resumed_on = get_session(second_address, session_id)  # the other replica, by id
        assert [(t.role, t.text) for t in resumed_on.turns] == before
        began = time.monotonic()
        resumed = assert_history_continued(second_address, session_id, before)
        assert resumed.events[0] == "session_started"
        print(f"the session resumed on the other replica: its next turn answered in {time.monotonic() - began:.2f} s")

        # The dead replica's LM request is cancelled with its connection (the engine polls for it). Its decoder
        # and tokenizer streams end at once only if a block was in flight; an idle one (its blocks all decoded)
        # waits for the streams' idle timeout, since Triton does not tell a model that a sequence's client is
        # gone. So: the LM slot frees within seconds, and at most the one stream of each kind stays behind.
        deadline = time.monotonic() + 10
        while metric(triton, "glmvoice_llm_engine", state="active"):
            assert time.monotonic() < deadline, "the dead replica's LM request still active 10 s after the kill"
            time.sleep(0.1)
        print(f"the dead replica's LM slot was free {time.monotonic() - killed:.2f} s after the kill (at most)")
        left = {name: metric(triton, name) for name in ("glmvoice_speech_decoder_open_streams",
                                                        "glmvoice_speech_tokenizer_open_streams")}
        print(f"streams left until their idle timeout: {left}")
        assert all(count <= 1 for count in left.values()), left
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
