"""What Triton costs per call, per model: the same small call through the orchestrator's in-process backend
and through its Triton backend (a real Triton server here).

speech_tokenizer: one 1 s turn; llm: a one-token generation; speech_decoder: one 10-code reply. Medians of
alternating calls, both paths in this run on this machine (tiny checkpoints, CPU), one torch thread each.

    python -m loadtest.bench.triton_cost [--checkpoints build/checkpoints/tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from glmvoice.sampling import SamplingParams
from loadtest.bench.backends import DEFAULT_CHECKPOINTS, in_process, through_triton
from services.orchestrator.backends import LMRequest

GREEDY = SamplingParams(temperature=0.0)


def calls(backend) -> dict:
    clip = (np.sin(np.arange(16000) / 9) * 0.3).astype(np.float32)
    codes = list(range(backend.decoder_block))

    async def tokenize():
        await backend.open_tokenizer().push(clip, end=True)

    async def generate():
        async for _ in backend.generate(LMRequest(list(range(1, 17)), GREEDY, 1, "")):
            pass

    async def decode():
        session = backend.open_decoder(seed=0, output_rate=22050)
        await session.send(codes, end=True)
        async for _ in session:
            pass

    return {"speech_tokenizer": tokenize, "llm": generate, "speech_decoder": decode}


async def paired_medians_ms(first, second, repeats: int) -> tuple[float, float]:
    """Alternates the two calls, so load from other processes falls on both alike."""
    await first(), await second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for call, record in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            await call()
            record.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


async def measure(checkpoints: Path, repeats: int) -> dict[str, tuple[float, float]]:
    async with in_process(checkpoints) as local, through_triton(checkpoints, Path(tempfile.mkdtemp(prefix="bench-triton-"))) as remote:
        a, b = calls(local), calls(remote)
        return {model: await paired_medians_ms(a[model], b[model], repeats) for model in a}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as each Triton instance runs (cpu_threads in config.pbtxt)
    results = asyncio.run(measure(args.checkpoints, args.repeats))
    print(f"Triton cost per call ({args.checkpoints}, CPU, median of {args.repeats})")
    print(f"{'model':>17} {'in-process ms':>14} {'Triton ms':>10} {'cost ms':>8} {'ratio':>6}")
    for model, (a, b) in results.items():
        print(f"{model:>17} {a:>14.2f} {b:>10.2f} {b - a:>8.2f} {b / a:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
