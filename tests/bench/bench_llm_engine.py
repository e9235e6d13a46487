"""LM engine throughput: aggregate tokens/s at 1, 4, 8 and 16 concurrent streams, in process and through
a real Triton server (tiny preset, CPU). Triton's cost per call is in bench_triton_cost.py.

Prints figures; asserts nothing (`make bench`). All ratios come from one run on one machine.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmvoice.models.llm_checkpoint import load_llm  # noqa: E402
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine  # noqa: E402
from glmvoice.sampling import SamplingParams  # noqa: E402
from services.triton.launcher import TritonServer, TritonSettings  # noqa: E402
from services.triton.repository import build_repository  # noqa: E402
from tests.fixtures.servers import free_port  # noqa: E402
from tests.integration.test_triton_llm import Stream  # noqa: E402
from training.random_checkpoints import write_tiny_checkpoint  # noqa: E402

CONCURRENCY = (1, 4, 8, 16)
NEW_TOKENS = 192  # a reply of ~10 s of speech (128 speech + 64 text ids); long runs average out the machine's noise
ROUNDS = 5  # each figure is the median of ROUNDS runs, the levels interleaved so load falls on all alike
GREEDY = SamplingParams(temperature=0.0)


def prompt(i: int, vocab: int) -> list[int]:
    return np.random.default_rng(i).integers(0, vocab, size=16).tolist()


def in_process_tokens_per_s(engine: LLMEngine, streams: int, vocab: int) -> float:
    done = [threading.Event() for _ in range(streams)]
    start = time.perf_counter()
    for i in range(streams):
        request = GenerationRequest(prompt(i, vocab), GREEDY, NEW_TOKENS, stop_ids=frozenset())
        engine.submit(request, lambda t: None, lambda r, e, d=done[i]: d.set())
    for d in done:
        d.wait()
    return streams * NEW_TOKENS / (time.perf_counter() - start)


def triton_tokens_per_s(url: str, streams: int, vocab: int, chunk: int) -> float:
    # Streams are opened before the clock starts, as a serving client keeps its channels: the figure is the
    # engine's throughput, not the cost of connecting.
    opened = [Stream(url) for _ in range(streams)]
    chunking = {"stream_chunk_tokens": np.array([chunk], np.int32)}
    start = time.perf_counter()
    for i, s in enumerate(opened):
        s.send(prompt(i, vocab), NEW_TOKENS, stop_ids=np.array([-1], np.int64), **chunking)
    for s in opened:
        s.final.wait()
    elapsed = time.perf_counter() - start
    for s in opened:
        s.close()
    assert all(len(s.ids) == NEW_TOKENS and not s.errors for s in opened)
    return streams * NEW_TOKENS / elapsed


def interleaved(measure) -> dict[int, tuple[float, list[float]]]:
    """-> per level: median tok/s, and the ratios to the 1-stream figure of the same round (paired, so a
    slow spell of the shared machine moves both sides of a ratio alike)."""
    runs: dict[int, list[float]] = {n: [] for n in CONCURRENCY}
    for _ in range(ROUNDS):
        for n in CONCURRENCY:
            runs[n].append(measure(n))
    ratios = {n: sorted(r / one for r, one in zip(runs[n], runs[1])) for n in CONCURRENCY}
    return {n: (statistics.median(runs[n]), ratios[n]) for n in CONCURRENCY}


def main() -> None:
    torch.set_num_threads(1)  # as each Triton instance runs (cpu_threads in config.pbtxt): a fair comparison
    work = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    checkpoint = write_tiny_checkpoint(work / "llm", seed=0)
    model, _ = load_llm(checkpoint)
    vocab = model.config.vocab_size
    config = EngineConfig(max_slots=16, max_seq_len=256)

    engine = LLMEngine(model, config).start()
    in_process = interleaved(lambda n: in_process_tokens_per_s(engine, n, vocab))
    engine.stop()

    repo = build_repository(work / "repo", {"llm": checkpoint}, device="cpu")
    settings = TritonSettings(model_repository=repo, models=("llm",), grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(settings, log_path=work / "triton.log").start() as server:
        triton_tokens_per_s(server.grpc_url, 4, vocab, 1)  # warm-up
        # Ids sent as soon as they are ready, and in responses of at least 10 (a decoder block of speech codes).
        per_id = interleaved(lambda n: triton_tokens_per_s(server.grpc_url, n, vocab, 1))
        per_block = interleaved(lambda n: triton_tokens_per_s(server.grpc_url, n, vocab, 10))

    print(f"LM engine, tiny preset, CPU, {NEW_TOKENS} new tokens per stream, greedy; median of {ROUNDS} rounds,")
    print("x1 = median [min-max] of each round's ratio to that round's 1-stream figure")
    columns = {"in-process": in_process, "Triton, ids when ready": per_id, "Triton, >=10 ids/response": per_block}
    print(f"{'streams':>8}" + "".join(f" {name:>27}" for name in columns))
    for n in CONCURRENCY:
        cells = []
        for rate, ratios in (figures[n] for figures in columns.values()):
            cells.append(f"{rate:6.0f} x{statistics.median(ratios):.2f} [{ratios[0]:.1f}-{ratios[-1]:.1f}]")
        print(f"{n:>8}" + "".join(f" {c:>27}" for c in cells))


if __name__ == "__main__":
    main()
