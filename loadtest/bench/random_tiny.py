"""`python -m loadtest.bench.random_tiny --out DIR`: the three tiny networks with random weights, in the
published layouts (glm-4-voice-tokenizer/, glm-4-voice-9b/, glm-4-voice-decoder/).

Timing does not depend on weight values, so benchmarks and load tests that must not wait for `make tiny`
(~10 min on two idle cores) can run on these; replies are then random ids, bounded by max_new_tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.random_checkpoints import write_tiny_checkpoint, write_tiny_speech_decoder, write_tiny_speech_tokenizer


def write_random_tiny(out: Path, seed: int = 0) -> Path:
    out = Path(out)
    write_tiny_speech_tokenizer(out / "glm-4-voice-tokenizer", seed=seed)
    write_tiny_speech_decoder(out / "glm-4-voice-decoder", seed=seed)
    write_tiny_checkpoint(out / "glm-4-voice-9b", seed=seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_random_tiny(args.out, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
