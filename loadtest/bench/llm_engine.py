"""LM throughput: aggregate tokens/s at 1, 4, 8 and 16 concurrent streams, in process (the engine) and through
a real Triton server (the orchestrator's Triton client), on the tiny LM (CPU). Triton's cost per call is in
triton_cost.py.

    python -m loadtest.bench.llm_engine [--checkpoints build/checkpoints/tiny]

Prints figures; asserts nothing. All ratios come from one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine
from glmvoice.sampling import SamplingParams
from loadtest.bench.backends import DEFAULT_CHECKPOINTS, checkpoint_dirs, through_triton
from services.orchestrator.backends import LMRequest

CONCURRENCY = (1, 4, 8, 16)
NEW_TOKENS = 192  # a reply of ~10 s of speech (128 speech + 64 text ids); long runs average out the machine's noise
GREEDY = SamplingParams(temperature=0.0)


def prompt(i: int, vocab: int) -> list[int]:
    return np.random.default_rng(i).integers(0, vocab, size=16).tolist()


def in_process_tokens_per_s(engine: LLMEngine, streams: int, vocab: int, new_tokens: int = NEW_TOKENS) -> float:
    done = [threading.Event() for _ in range(streams)]
    start = time.perf_counter()
    for i in range(streams):
        request = GenerationRequest(prompt(i, vocab), GREEDY, new_tokens, stop_ids=frozenset())
        engine.submit(request, lambda t: None, lambda r, e, d=done[i]: d.set())
    for d in done:
        d.wait()
    return streams * new_tokens / (time.perf_counter() - start)


async def triton_tokens_per_s(backend, streams: int, vocab: int) -> float:
    async def one(i: int) -> int:
        return sum([1 async for _ in backend.generate(LMRequest(prompt(i, vocab), GREEDY, NEW_TOKENS, ""))])

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    return sum(counts) / (time.perf_counter() - start)  # ids actually produced (a stop id may end a stream early)


def paired(runs: dict[int, list[float]]) -> dict[int, tuple[float, list[float]]]:
    """-> per level: median tok/s, and the ratios to the 1-stream figure of the same round (paired, so a slow
    spell of the shared machine moves both sides of a ratio alike)."""
    ratios = {n: sorted(r / one for r, one in zip(runs[n], runs[1])) for n in runs}
    return {n: (statistics.median(runs[n]), ratios[n]) for n in runs}


async def measure(checkpoints: Path, rounds: int) -> dict[str, dict]:
    model, _ = load_llm(checkpoint_dirs(checkpoints)[1])
    vocab = model.config.vocab_size
    engine = LLMEngine(model, EngineConfig(max_slots=16, max_seq_len=256)).start()
    local = {n: [] for n in CONCURRENCY}
    for _ in range(rounds):
        for n in CONCURRENCY:
            local[n].append(in_process_tokens_per_s(engine, n, vocab))
    engine.stop()
    remote = {n: [] for n in CONCURRENCY}
    async with through_triton(checkpoints, Path(tempfile.mkdtemp(prefix="bench-llm-"))) as backend:
        await triton_tokens_per_s(backend, 4, vocab)  # warm-up
        for _ in range(rounds):
            for n in CONCURRENCY:
                remote[n].append(await triton_tokens_per_s(backend, n, vocab))
    return {"in-process": paired(local), "Triton": paired(remote)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--rounds", type=int, default=5, help="each figure is the median of this many rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as each Triton instance runs (cpu_threads in config.pbtxt): a fair comparison
    columns = asyncio.run(measure(args.checkpoints, args.rounds))
    print(f"LM, {args.checkpoints}, CPU, {NEW_TOKENS} new tokens per stream, greedy; median of {args.rounds} rounds,")
    print("x1 = median [min-max] of each round's ratio to that round's 1-stream figure")
    print(f"{'streams':>8}" + "".join(f" {name:>27}" for name in columns))
    for n in CONCURRENCY:
        cells = []
        for rate, ratios in (figures[n] for figures in columns.values()):
            cells.append(f"{rate:6.0f} x{statistics.median(ratios):.2f} [{ratios[0]:.1f}-{ratios[-1]:.1f}]")
        print(f"{n:>8}" + "".join(f" {c:>27}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
