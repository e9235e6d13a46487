"""Speech decoder cost in CPU seconds (not wall seconds) per second of audio, one stream and N streams batched.

On a shared machine wall time measures the neighbours; CPU time measures the decoder. With C idle cores the
decoder alone holds at most C / (core-seconds per audio second) real-time calls: the bound that names it as
the stage that saturates first on the CPU.

    python -m loadtest.bench.decoder_cpu [--checkpoints build/checkpoints/tiny] [--streams 1,8,16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from glmvoice.models.speech_decoder import load_speech_decoder
from glmvoice.runtime.decoder_stream import DecoderStreams
from loadtest.bench.backends import DEFAULT_CHECKPOINTS, checkpoint_dirs


def core_seconds_per_audio_second(decoder, streams: int, blocks: int = 3) -> tuple[float, float]:
    """-> (CPU s / audio s, wall s / audio s) of steady-state blocks, `streams` decoded in one batched pass."""
    pool = DecoderStreams(decoder)
    codes = np.random.default_rng(0).integers(0, decoder.codebook_size, (blocks + 1) * pool.block_size).tolist()
    for i in range(streams):
        pool.open(str(i), seed=i)
        pool.feed(str(i), codes[: pool.block_size])
    pool.run()  # the first block (warm-up)
    cpu = wall = audio = 0.0
    for b in range(1, blocks + 1):
        for i in range(streams):
            pool.feed(str(i), codes[b * pool.block_size : (b + 1) * pool.block_size])
        c, w = time.process_time(), time.perf_counter()
        out = pool.run()
        cpu, wall = cpu + time.process_time() - c, wall + time.perf_counter() - w
        audio += sum(len(a) for a in out.values()) / decoder.sample_rate
    return cpu / audio, wall / audio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--streams", default="1,8,16")
    parser.add_argument("--cores", type=int, default=2, help="idle cores the bound is computed for")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as each Triton instance runs
    decoder = load_speech_decoder(checkpoint_dirs(args.checkpoints)[2])
    print(f"speech decoder ({args.checkpoints}), one torch thread: cost per second of audio")
    print(f"{'streams':>8} {'core-s/s':>9} {'wall-s/s':>9} {'calls on ' + str(args.cores) + ' idle cores':>22}")
    with torch.inference_mode():
        for n in (int(x) for x in args.streams.split(",")):
            cpu, wall = core_seconds_per_audio_second(decoder, n)
            print(f"{n:>8} {cpu:>9.3f} {wall:>9.3f} {args.cores / cpu:>22.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
