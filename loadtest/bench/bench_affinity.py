"""Session affinity across LM replicas, failover, scale-out and release at barge-in, on real Triton processes.

Three `llm` Triton replicas (tiny LM, same weights), one Triton with the speech tokenizer and decoder, Redis,
and the orchestrator with TRITON_LLM_ADDR listing the replicas. Every session says the same text turns with
greedy sampling, so a session's answer to turn k is the same wherever it runs.

Prints:
1. prefill of turn 5 / turn 1 per session, with affinity (rendezvous on the session id) and without (a random
   replica per turn, what a per-connection Service gives). Where each turn ran is measured (the replica of each
   LM request, checked against each Triton's own request counter). Prefill ids per turn follow from it with
   the engine's prefix rule: a replica that served the session before holds at least that earlier prompt, so
   it prefills at most the rest (an upper bound: the kept completion is not subtracted). The `llm` model
   exports no prefill counter to Triton's /metrics yet. The measured prefill time of the same turns
   (TurnEnded.latency.prefill_ms, median) is printed beside it.
2. one replica SIGKILLed while turns run on it: time until those turns end UNAVAILABLE, whether each affected
   session's next turn succeeds elsewhere with the same answer as the other sessions, and whether Redis kept
   every finished turn.
3. a fourth replica added: the share of sessions whose replica moved.
4. 16 concurrent barge-ins (Cancel while the reply plays; client gone while the user speaks): seconds until the
   decoder and tokenizer streams held on Triton return to 0.

Scaled for a shared 2-core machine: 12 sessions x 5 turns of at most 8 new tokens, 4 sessions at a time.
Run: `.venv/bin/python loadtest/bench/bench_affinity.py`
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmvoice.client import config_request  # noqa: E402
from glmvoice.v1 import voice_chat_pb2 as pb  # noqa: E402
from services.local_stack import RedisServer  # noqa: E402
from services.orchestrator.server import OrchestratorThread  # noqa: E402
from services.orchestrator.settings import Settings  # noqa: E402
from services.triton.repository import build_repository  # noqa: E402
from tests.fixtures.replicas import metric, start_replica  # noqa: E402
from tests.fixtures.speech_decoder import build_tiny_speech_decoder_dir  # noqa: E402
from tests.fixtures.speech_tokenizer import build_tiny_speech_tokenizer_dir  # noqa: E402
from tests.integration.test_orchestrator import LiveStream, clip_frames, get_session, text_turn  # noqa: E402
from training.random_checkpoints import write_tiny_checkpoint  # noqa: E402

SESSIONS, TURNS, NEW_TOKENS, CONCURRENCY, BARGE_INS = 12, 5, 8, 4, 16
TEXTS = [f"question number {k}: and what happens next?" for k in range(TURNS)]
KEY = "bench-key"
GREEDY = dict(temperature=0.0, seed=7)


def auth():
    return [("authorization", f"Bearer {KEY}")]


class Placements:
    """Wraps the backend's generate: per session, (prompt length, the routed stream) of every LM request."""

    def __init__(self, backend):
        self.by_session: dict[str, list] = defaultdict(list)
        original = backend.generate

        def generate(request, headers=None):
            stream = original(request, headers)
            self.by_session[request.prefix_key].append((len(request.prompt_ids), stream))
            return stream

        backend.generate = generate

    def replicas(self, session_id: str) -> list[str]:
        return [stream.addr for _, stream in self.by_session[session_id]]


def turn(orch, text: str, session_id: str = "", max_new_tokens: int = NEW_TOKENS):
    return text_turn(orch.address, text, session_id=session_id, key=KEY, max_new_tokens=max_new_tokens)


def run_sessions(orch, sessions: int = SESSIONS) -> dict[str, list]:
    """`sessions` x TURNS text turns, CONCURRENCY at a time -> session id -> its transcripts."""

    def session(_):
        sid, transcripts = "", []
        for text in TEXTS:
            transcripts.append(turn(orch, text, sid))
            sid = transcripts[-1].session_id
        return sid, transcripts

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return dict(pool.map(session, range(sessions)))


def prefill_ids(requests: list[tuple[int, object]]) -> list[int]:
    """Upper bound of the ids each turn prefilled: its prompt minus the longest earlier prompt of this session
    that its replica served (the engine keeps a session's last KV per replica and reuses the common prefix)."""
    held: dict[str, int] = {}
    out = []
    for length, stream in requests:
        out.append(length - min(held.get(stream.addr, 0), length))
        held[stream.addr] = length
    return out


def counts(llms) -> dict[str, float]:
    return {s.grpc_url: metric(s, "nv_inference_request_success", model="llm") for s in llms}


def report_affinity(orch, placements: Placements, llms) -> None:
    router = orch.orchestrator.backend.routers["llm"]
    rendezvous = router.order
    for label, order in (("with affinity", rendezvous), ("without affinity", None)):
        if order is None:  # a random replica per request, as per-connection balancing gives
            router.order = lambda key: random.sample(sorted(router.replicas.snapshot()), len(router.replicas.snapshot()))
        before = counts(llms)
        sessions = run_sessions(orch)
        after = counts(llms)
        router.order = rendezvous
        served = defaultdict(int)
        for sid in sessions:
            for addr in placements.replicas(sid):
                served[addr] += 1
        assert all(after[a] - before[a] == served[a] for a in after), (before, after, dict(served))
        ratios, ms_first, ms_last, same = [], [], [], 0
        for sid, transcripts in sessions.items():
            ids = prefill_ids(placements.by_session[sid])
            ratios.append(ids[-1] / ids[0])
            ms_first.append(transcripts[0].turns[0].latency.prefill_ms)
            ms_last.append(transcripts[-1].turns[0].latency.prefill_ms)
            replicas = placements.replicas(sid)
            same += sum(a == b for a, b in zip(replicas, replicas[1:]))
        print(f"{label}: prefill ids turn {TURNS} / turn 1 per session: median {statistics.median(ratios):.2f}, "
              f"mean {statistics.mean(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); turns on the previous turn's replica "
              f"{same}/{len(sessions) * (TURNS - 1)}; prefill ms turn 1 {statistics.median(ms_first):.1f}, "
              f"turn {TURNS} {statistics.median(ms_last):.1f} (median); requests per replica {dict(served)}")


def report_failover(orch, placements: Placements, llms) -> None:
    router = orch.orchestrator.backend.routers["llm"]
    victim = llms[0]
    sessions = run_sessions(orch)  # finished turns, all replicas
    reference = next(iter(sessions.values()))
    hit = [sid for sid in sessions if router.order(sid)[0] == victim.grpc_url]
    streams = []
    for sid in hit:  # one more long turn each, in flight on the victim when it dies
        stream = LiveStream(orch.address, key=KEY)
        stream.send(config_request("LINEAR16", 16000, "LINEAR16", 16000, session_id=sid, max_new_tokens=2000, **GREEDY))
        stream.next_event()
        stream.send(pb.ConverseRequest(text=pb.TextTurn(text="a long answer please")))
        streams.append(stream)
    for stream in streams:
        while stream.next_event().WhichOneof("event") not in ("text_delta", "audio"):
            pass
    os.kill(victim.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    ends = []
    for stream in streams:
        try:
            while stream.next_event(timeout=30).WhichOneof("event") != "turn_ended":
                pass
            ends.append(("completed", time.monotonic() - killed))
        except grpc.RpcError as exc:
            ends.append((exc.code().name, time.monotonic() - killed))
        stream.shutdown()
    victim.process.wait(10)
    reroutes_before = orch.orchestrator.metrics.registry.get_sample_value("glmvoice_reroutes_total", {"network": "llm"}) or 0
    control = next(s for s in sessions if s not in hit)  # same history as every hit session before the kill
    expected = turn(orch, TEXTS[0], control).turns[0].text
    extra = {control: 1}
    same_answer = 0
    for sid, (end, _) in zip(hit, ends):
        if end == "completed":  # the in-flight turn finished before the kill: not comparable, not counted
            extra[sid] = 2
            continue
        extra[sid] = 1
        same_answer += turn(orch, TEXTS[0], sid).turns[0].text == expected
    compared = sum(1 for end, _ in ends if end != "completed")
    kept = all(len(get_session(orch.address, sid, key=KEY).turns) == 2 * (TURNS + extra.get(sid, 0)) for sid in sessions)
    reroutes = orch.orchestrator.metrics.registry.get_sample_value("glmvoice_reroutes_total", {"network": "llm"})
    print(f"replica SIGKILLed with {len(hit)} turns in flight on it: ended {sorted({e for e, _ in ends})} "
          f"within {max(t for _, t in ends):.2f} s (max); next turns of the affected sessions succeeded "
          f"with the same greedy answer as an unaffected session: {same_answer}/{compared}; reroutes counted "
          f"{reroutes - reroutes_before:.0f}; Redis kept every finished turn of all {len(sessions)} sessions: {kept}; "
          f"turn-1 answers equal across sessions: {all(t[0].turns[0].text == reference[0].turns[0].text for t in sessions.values())}")


def report_scale_out(orch, llms, repo, work, servers) -> None:
    router = orch.orchestrator.backend.routers["llm"]
    live = [s for s in llms if s.process.poll() is None]
    router.replicas.set(s.grpc_url for s in live)  # the dead replica leaves the table (as its endpoint would)
    sessions = list(run_sessions(orch))
    before = {sid: router.order(sid)[0] for sid in sessions}
    added = start_replica(repo, ("llm",), work)
    servers.append(added)
    router.replicas.set([s.grpc_url for s in live] + [added.grpc_url])
    start = counts([added])[added.grpc_url]
    for sid in sessions:
        turn(orch, TEXTS[0], sid)
    moved = [sid for sid in sessions if router.order(sid)[0] != before[sid]]
    served_by_new = counts([added])[added.grpc_url] - start
    print(f"replica added ({len(live)} -> {len(live) + 1}): {len(moved)}/{len(sessions)} sessions moved "
          f"({len(moved) / len(sessions):.2f}; 1/N = {1 / (len(live) + 1):.2f}); all moved to the new replica: "
          f"{all(router.order(s)[0] == added.grpc_url for s in moved)}; turns it served next: {served_by_new:.0f}")


def report_barge_ins(orch, speech) -> None:
    def wait(name, until, timeout_s=10.0):
        start = time.monotonic()
        while not until(value := metric(speech, name)) and time.monotonic() - start < timeout_s:
            time.sleep(0.02)
        return value, time.monotonic() - start

    streams = [LiveStream(orch.address, key=KEY) for _ in range(BARGE_INS)]
    try:
        for stream in streams:
            stream.send(config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=400, **GREEDY))
            stream.next_event()
            stream.send(pb.ConverseRequest(text=pb.TextTurn(text="tell me a long story")))
        for stream in streams:
            while stream.next_event(timeout=120).WhichOneof("event") != "audio":
                pass
        held, _ = wait("glmvoice_speech_decoder_open_streams", lambda v: v >= 1)
        for stream in streams:
            stream.send(pb.ConverseRequest(cancel=pb.Cancel()))
        decoder, decoder_s = wait("glmvoice_speech_decoder_open_streams", lambda v: v == 0)
        audio = clip_frames("LINEAR16", 16000)[:40]
        for stream in streams:  # each user starts speaking, then goes away mid-sentence
            stream.send_audio(audio)
        speaking, _ = wait("glmvoice_speech_tokenizer_open_streams", lambda v: v >= BARGE_INS / 2)
        for stream in streams:
            stream.shutdown()
        tokenizer, tokenizer_s = wait("glmvoice_speech_tokenizer_open_streams", lambda v: v == 0)
    finally:
        for stream in streams:
            stream.shutdown()
    print(f"{BARGE_INS} concurrent barge-ins: decoder streams {held:.0f} -> {decoder:.0f} in {decoder_s:.2f} s "
          f"after Cancel; tokenizer streams {speaking:.0f} -> {tokenizer:.0f} in {tokenizer_s:.2f} s after the "
          f"clients went away (idle timeout otherwise: 60 s)")


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-affinity-"))
    checkpoints = work / "checkpoints"
    dirs = {
        "speech_tokenizer": build_tiny_speech_tokenizer_dir(checkpoints / "glm-4-voice-tokenizer"),
        "llm": write_tiny_checkpoint(checkpoints / "glm-4-voice-9b", seed=1234),
        "speech_decoder": build_tiny_speech_decoder_dir(checkpoints / "glm-4-voice-decoder"),
    }
    repo = build_repository(work / "repo", dirs, device="cpu")
    (work / "keys").write_text(KEY + "\n")
    servers, redis, orch = [], RedisServer(work / "redis").start(), None
    try:
        with ThreadPoolExecutor(4) as pool:  # the four servers load at once
            started = list(pool.map(lambda models: start_replica(repo, models, work, 600),
                                    [("speech_tokenizer", "speech_decoder")] + [("llm",)] * 3))
        servers += started
        speech, llms = started[0], started[1:]
        settings = Settings(
            backend="triton", redis_addr=redis.addr, triton_speech_tokenizer_addr=speech.grpc_url,
            triton_llm_addr=",".join(s.grpc_url for s in llms), triton_speech_decoder_addr=speech.grpc_url,
            tokenizer_dir=dirs["llm"], grpc_port=0, bind_address="127.0.0.1", api_keys_file=work / "keys",
            max_streams=64, metrics_port=0, quota_streams=64, quota_sessions_per_minute=1000,
        )
        orch = OrchestratorThread.start(settings)
        placements = Placements(orch.orchestrator.backend)
        turn(orch, "warm up")
        report_affinity(orch, placements, llms)
        report_failover(orch, placements, llms)
        report_scale_out(orch, llms, repo, work, servers)
        report_barge_ins(orch, speech)
    finally:
        if orch is not None:
            orch.stop()
        for server in servers:
            server.stop()
        redis.stop()


if __name__ == "__main__":
    main()
