"""`python -m loadtest.bench.random_tiny --out DIR`: the three tiny networks with random weights, in the
published layouts (glm-4-voice-tokenizer/, glm-4-voice-9b/, glm-4-voice-decoder/).

Timing does not depend on weight values, so benchmarks and load tests that must not wait for `make tiny`
(~10 min on two idle cores) can run on these; replies are then random ids, bounded by max_new_tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder, save_speech_decoder
from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
from glmvoice.models.speech_tokenizer_checkpoint import save_speech_tokenizer
from training.random_checkpoints import write_tiny_checkpoint


def write_random_tiny(out: Path, seed: int = 0) -> Path:
    out = Path(out)
    tokenizer = SpeechTokenizerModel(SpeechTokenizerConfig.from_name("tiny"))
    tokenizer.init_random_weights(torch.Generator().manual_seed(seed))
    save_speech_tokenizer(tokenizer, out / "glm-4-voice-tokenizer")
    save_speech_decoder(build_speech_decoder(DecoderConfig.from_name("tiny"), seed=seed), out / "glm-4-voice-decoder")
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
