"""`make bench`: the ratios the project is held to, each from one run on this machine (CPU, tiny checkpoints).

- distributed / in-process TTFA (the Triton path's cost), aim <= 1.2
- TTFA after a 10 s utterance / after a 2 s one (streaming tokenization and prefill), aim <= 1.3
- server prefill of turn 5 / turn 1 of a session (prefix reuse), aim <= 1.3
- LM aggregate tok/s, 8 streams / 1 stream (in-flight batching), aim >= 4
- decoder cost of block 20 / block 1 (bounded decoder context), aim <= 1.3
- our TTFA / the official-style baseline's TTFA at concurrency 1 and 8 (lower is better)

TTFA figures come from the load generator against a local stack (Redis, Triton, an orchestrator per backend),
the two sides of each ratio alternating so the shared machine's load falls on both alike.

    python -m loadtest.bench.ratios [--checkpoints build/checkpoints/tiny] [--turns 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.models.speech_decoder import load_speech_decoder
from glmvoice.runtime.decoder_stream import StreamSettings
from glmvoice.runtime.llm_engine import EngineConfig, LLMEngine
from loadtest.bench.backends import DEFAULT_CHECKPOINTS, checkpoint_dirs
from loadtest.bench.decoder_stream import run_stream
from loadtest.bench.llm_engine import in_process_tokens_per_s
from loadtest.plan import SessionPlan, TurnPlan
from loadtest.speech import of_length, questions
from loadtest.stack import LocalStack
from loadtest.targets import Target
from loadtest.workloads import Workload, run_workload

MAX_NEW_TOKENS = 80


def _plan(target: str, index: int, utterances, think_s: float = 0.5) -> SessionPlan:
    return SessionPlan(index=index, target=target, level=1, fmt="pcm16k", turns=[TurnPlan(u) for u in utterances],
                       think_s=think_s, sampling={"max_new_tokens": MAX_NEW_TOKENS, "seed": index})


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


async def alternating_ttfa(a: Target, b: Target, utterance_a, utterance_b, sessions: int) -> tuple[float, float]:
    """Median TTFA of single-turn sessions, a and b taking turns."""
    t0, ta, tb = time.perf_counter(), [], []
    for i in range(sessions):
        ta += [r.ttfa_ms for r in await a.dial(_plan(a.name, i, [utterance_a(i)]), t0) if r.ok]
        tb += [r.ttfa_ms for r in await b.dial(_plan(b.name, i, [utterance_b(i)]), t0) if r.ok]
    return _median(ta), _median(tb)


async def prefill_by_turn(target: Target, sessions: int, turns: int = 5) -> list[float]:
    """Median server prefill_ms per turn index over multi-turn sessions."""
    t0, corpus, by_turn = time.perf_counter(), questions(), [[] for _ in range(turns)]
    for i in range(sessions):
        for r in await target.dial(_plan(target.name, i, [corpus[(i + k) % len(corpus)] for k in range(turns)]), t0):
            if r.ok:
                by_turn[r.turn].append(r.server["prefill_ms"])
    return [_median(v) for v in by_turn]


async def ttfa_at(target: Target, concurrency: int, sessions: int) -> float:
    workload = Workload(kind="fixed", concurrency=concurrency, sessions=sessions, turns=2, think_s=0.5,
                        formats=("pcm16k",), max_new_tokens=MAX_NEW_TOKENS, barge_in=0.0)
    records = await run_workload(target.dial, workload, questions(), target.name, progress=False)
    return _median([r.ttfa_ms for r in records if r.ok])


async def stack_ratios(addrs: dict[str, str], sessions: int) -> dict:
    ours, local, base = (Target(n, addrs[n]) for n in ("ours", "ours-inprocess", "baseline"))
    corpus = questions()
    for target in (ours, local, base):  # warm-up, unrecorded
        await target.dial(_plan(target.name, 0, [corpus[0]]), time.perf_counter())
    out = {}
    distributed, in_process = await alternating_ttfa(ours, local, lambda i: corpus[i % len(corpus)],
                                                     lambda i: corpus[i % len(corpus)], sessions)
    out["distributed / in-process TTFA"] = (distributed, in_process)
    long, short = await alternating_ttfa(ours, ours, lambda i: of_length(10.0), lambda i: of_length(2.0), sessions)
    out["TTFA 10 s utterance / 2 s utterance"] = (long, short)
    prefill = await prefill_by_turn(ours, max(2, sessions // 2))
    out["prefill turn 5 / turn 1"] = (prefill[4], prefill[0])
    baseline_prefill = await prefill_by_turn(base, max(2, sessions // 2))
    out["baseline prefill turn 5 / turn 1 (for contrast)"] = (baseline_prefill[4], baseline_prefill[0])
    for level in (1, 8):
        mine = await ttfa_at(ours, level, max(level, sessions // 2))
        theirs = await ttfa_at(base, level, max(level, sessions // 2))
        out[f"our TTFA / baseline TTFA at concurrency {level}"] = (mine, theirs)
    return out


def engine_ratio(checkpoints: Path, rounds: int) -> tuple[float, float]:
    model, _ = load_llm(checkpoint_dirs(checkpoints)[1])
    engine = LLMEngine(model, EngineConfig(max_slots=8, max_seq_len=256)).start()
    vocab = model.config.vocab_size
    in_process_tokens_per_s(engine, 2, vocab, 16)  # warm-up
    ones, eights = [], []
    for _ in range(rounds):  # interleaved, so a slow spell of the machine falls on both
        ones.append(in_process_tokens_per_s(engine, 1, vocab, 96))
        eights.append(in_process_tokens_per_s(engine, 8, vocab, 96))
    engine.stop()
    return statistics.median(eights), statistics.median(ones)


def decoder_ratio(checkpoints: Path, repeats: int) -> tuple[float, float]:
    """(block 20 ms, block 1 ms): median per-block cost of a 21-block stream with the bounded context."""
    decoder = load_speech_decoder(checkpoint_dirs(checkpoints)[2])
    codes = np.random.default_rng(0).integers(0, decoder.codebook_size, 21 * decoder.block_size).tolist()
    decoder.decode(codes[:20], seed=0)  # warm-up
    runs = np.array([run_stream(decoder, codes, StreamSettings(), seed=5)[0] for _ in range(repeats)])
    per_block = np.median(runs, axis=0)
    return 1000 * float(per_block[19]), 1000 * float(per_block[0])  # ms; block 21 holds the finalize pass: left out


AIMS = {
    "distributed / in-process TTFA": ("<=", 1.2),
    "TTFA 10 s utterance / 2 s utterance": ("<=", 1.3),
    "prefill turn 5 / turn 1": ("<=", 1.3),
    "LM aggregate tok/s 8 streams / 1 stream": (">=", 4.0),
    "decoder block 20 / block 1": ("<=", 1.3),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--sessions", type=int, default=6, help="sessions per TTFA figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("build/bench/ratios.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pairs = {"LM aggregate tok/s 8 streams / 1 stream": engine_ratio(args.checkpoints, args.rounds),
             "decoder block 20 / block 1": decoder_ratio(args.checkpoints, args.rounds)}
    with LocalStack(args.checkpoints, args.out.parent / "stack", ("triton", "inprocess", "baseline")) as stack:
        pairs.update(asyncio.run(stack_ratios(stack.addrs, args.sessions)))
    rows = {}
    print(f"ratios, {args.checkpoints}, CPU, one run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"{'ratio':<52} {'value':>7} {'numerator':>10} {'denominator':>12}  aim")
    for name, (num, den) in pairs.items():
        ratio = num / den if den else float("nan")
        op, aim = AIMS.get(name, ("", None))
        verdict = "" if aim is None else f"{op} {aim}: {'met' if (ratio <= aim if op == '<=' else ratio >= aim) else 'NOT met'}"
        rows[name] = {"ratio": round(ratio, 3), "numerator": round(num, 2), "denominator": round(den, 2), "aim": verdict}
        print(f"{name:<52} {ratio:>7.2f} {num:>10.1f} {den:>12.1f}  {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
