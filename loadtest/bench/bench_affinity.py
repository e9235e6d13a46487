"""Session affinity across LM replicas, failover, scale-out and release at barge-in, on real Triton processes.

Three `llm` Triton replicas (tiny LM, same weights), one Triton with the speech tokenizer and decoder, Redis,
and the orchestrator with TRITON_LLM_ADDR listing the replicas. Every session says the same text turns with
greedy sampling, so a session's answer to turn k is the same wherever it runs.

Prints:
1. prefill of turn 5 / turn 1, with affinity (rendezvous on the session id) and without (a random replica per
   turn, what a per-connection Service gives). Measured: turn k of every session runs as one phase, and the
   ids prefilled in it are the rise of glmvoice_llm_tokens_total{kind="prefill"} summed over the replicas'
   /metrics (read once they settle). Phases rather than one turn at a time keep the load of 4 concurrent
   sessions; every session's turn 1 is the same prompt, so the ratio of phase totals is the mean of the
   per-session ratios. Beside it: how many turns ran on the previous turn's replica (each LM request's
   replica, checked against each Triton's own request counter) and the median prefill time the server
   reports (TurnEnded.latency.prefill_ms) for turns 1 and 5.
2. one replica SIGKILLed while turns run on it: time until those turns end UNAVAILABLE, whether each affected
   session's next turn succeeds elsewhere with the same answer as the other sessions, and whether Redis kept
   every finished turn.
3. a fourth replica added: the share of sessions whose replica moved.
4. 16 concurrent barge-ins (Cancel while the reply plays; client gone while the user speaks): seconds until the
   decoder and tokenizer streams held on Triton return to 0.

Scaled for a shared 2-core machine: 12 sessions x 5 turns of at most 8 new tokens, 4 sessions at a time.
Run: `OMP_NUM_THREADS=1 .venv/bin/python -m loadtest.bench.bench_affinity`
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from glmvoice import client
from glmvoice.client import LiveStream, config_request, frames
from glmvoice.v1 import voice_chat_pb2 as pb
from loadtest.bench.random_tiny import write_random_tiny
from loadtest.speech import RATE, of_length
from services.local_stack import RedisServer
from services.orchestrator.server import OrchestratorThread
from services.orchestrator.settings import Settings
from services.triton.local_replicas import metric, start_replica
from services.triton.repository import build_repository

SESSIONS, TURNS, NEW_TOKENS, CONCURRENCY, BARGE_INS = 12, 5, 8, 4, 16
TEXTS = [f"question number {k}: and what happens next?" for k in range(TURNS)]
KEY = "bench-key"
GREEDY = dict(temperature=0.0, seed=7)


class Placements:
    """Wraps the backend's generate: per session, the routed stream of every LM request (its replica)."""

    def __init__(self, backend):
        self.by_session: dict[str, list] = defaultdict(list)
        original = backend.generate

        def generate(request, headers=None):
            stream = original(request, headers)
            self.by_session[request.prefix_key].append(stream)
            return stream

        backend.generate = generate

    def replicas(self, session_id: str) -> list[str]:
        return [stream.addr for stream in self.by_session[session_id]]


def turn(orch, text: str, session_id: str = "", max_new_tokens: int = NEW_TOKENS):
    return client.text_turn(orch.address, text, session_id=session_id, api_key=KEY, max_new_tokens=max_new_tokens, **GREEDY)


def settled(read):
    """`read()` once two reads 0.2 s apart agree: the llm model refreshes its counters every 50 ms."""
    last = read()
    while True:
        time.sleep(0.2)
        now = read()
        if now == last:
            return now
        last = now


def prefill_tokens(llms) -> dict[str, float]:
    return {s.grpc_url: metric(s, "glmvoice_llm_tokens_total", kind="prefill") for s in llms}


def run_sessions(orch, llms=(), sessions: int = SESSIONS) -> tuple[dict[str, list], list[float]]:
    """`sessions` x TURNS text turns, turn k of every session as one phase (CONCURRENCY at a time) -> (session
    id -> its transcripts, ids prefilled per phase summed over the replicas in `llms`, read from their counters)."""
    sids, transcripts, prefilled = [""] * sessions, [[] for _ in range(sessions)], []
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for text in TEXTS:
            before = settled(lambda: prefill_tokens(llms))
            for index, transcript in enumerate(pool.map(turn, [orch] * sessions, [text] * sessions, sids)):
                transcripts[index].append(transcript)
                sids[index] = transcript.session_id
            after = settled(lambda: prefill_tokens(llms))
            prefilled.append(sum(after[url] - before[url] for url in after))
    return dict(zip(sids, transcripts)), prefilled


def counts(llms) -> dict[str, float]:
    return {s.grpc_url: metric(s, "nv_inference_request_success", model="llm") for s in llms}


def report_affinity(orch, placements: Placements, llms) -> None:
    router = orch.orchestrator.backend.routers["llm"]
    rendezvous = router.order
    for label, order in (("with affinity", rendezvous), ("without affinity", None)):
        if order is None:  # a random replica per request, as per-connection balancing gives
            router.order = lambda key: random.sample(sorted(router.replicas.snapshot()), len(router.replicas.snapshot()))
        before = counts(llms)
        sessions, prefilled = run_sessions(orch, llms)
        after = counts(llms)
        router.order = rendezvous
        served = defaultdict(int)
        for sid in sessions:
            for addr in placements.replicas(sid):
                served[addr] += 1
        assert all(after[a] - before[a] == served[a] for a in after), (before, after, dict(served))
        ms_first = [t[0].turns[0].latency.prefill_ms for t in sessions.values()]
        ms_last = [t[-1].turns[0].latency.prefill_ms for t in sessions.values()]
        same = 0
        for sid in sessions:
            replicas = placements.replicas(sid)
            same += sum(a == b for a, b in zip(replicas, replicas[1:]))
        print(f"{label}: prefill ids turn {TURNS} / turn 1 (measured, glmvoice_llm_tokens_total, all {len(sessions)} "
              f"sessions) {prefilled[-1] / prefilled[0]:.2f}; prefill ids per turn {[int(p) for p in prefilled]}; "
              f"turns on the previous turn's replica {same}/{len(sessions) * (TURNS - 1)}; prefill ms turn 1 "
              f"{statistics.median(ms_first):.1f}, turn {TURNS} {statistics.median(ms_last):.1f} (median); "
              f"requests per replica {dict(served)}")


def report_failover(orch, placements: Placements, llms) -> None:
    router = orch.orchestrator.backend.routers["llm"]
    victim = llms[0]
    sessions, _ = run_sessions(orch)  # finished turns, all replicas
    reference = next(iter(sessions.values()))
    hit = [sid for sid in sessions if router.order(sid)[0] == victim.grpc_url]
    streams = []
    for sid in hit:  # one more long turn each, in flight on the victim when it dies
        stream = LiveStream(orch.address, api_key=KEY)
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
    kept = all(len(client.get_session(orch.address, sid, api_key=KEY).turns) == 2 * (TURNS + extra.get(sid, 0)) for sid in sessions)
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
    sessions = list(run_sessions(orch)[0])
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

    streams = [LiveStream(orch.address, api_key=KEY) for _ in range(BARGE_INS)]
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
        audio = frames(of_length(0.8).audio, RATE, "LINEAR16")  # 40 frames of real speech
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


PHASES = ("affinity", "failover", "scale-out", "barge-ins")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {','.join(PHASES)}")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (Triton logs) afterwards")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-affinity-"))
    checkpoints = work / "checkpoints"
    write_random_tiny(checkpoints, seed=1234)
    dirs = {"speech_tokenizer": checkpoints / "glm-4-voice-tokenizer", "llm": checkpoints / "glm-4-voice-9b",
            "speech_decoder": checkpoints / "glm-4-voice-decoder"}
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
        if "affinity" in phases:
            report_affinity(orch, placements, llms)
        if "failover" in phases:
            report_failover(orch, placements, llms)
        if "scale-out" in phases:
            report_scale_out(orch, llms, repo, work, servers)
        if "barge-ins" in phases:
            report_barge_ins(orch, speech)
    finally:
        if orch is not None:
            orch.stop()
        for server in servers:
            server.stop()
        redis.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
