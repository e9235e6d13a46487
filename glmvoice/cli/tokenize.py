"""`glmvoice tokenize --checkpoint DIR AUDIO...`: one JSON line per file, {"file": ..., "tokens": [...]}.

Tokens are speech codes (0 .. codebook size - 1), not LM ids. WAV files at any sample rate are resampled
to the tokenizer's rate; long files are cut into 30 s segments as the official tokenizer does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="glm-4-voice-tokenizer directory")
    parser.add_argument("audio", nargs="+", type=Path, help="WAV files (8-48 kHz, mono or multi-channel)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--mel-floor", choices=("utterance", "causal"), default="utterance",
                        help="utterance: official clamp (default); causal: what streaming tokenization computes")


def run(args: argparse.Namespace) -> int:
    from glmvoice.audio import read_wav
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

    for path in args.audio:
        if not path.is_file():
            raise FileNotFoundError(f"no such audio file: {path}")
    tokenizer = load_speech_tokenizer(args.checkpoint, args.device)
    for path in args.audio:
        samples, rate = read_wav(path)
        tokens = tokenizer.tokenize(samples, rate, mel_floor=args.mel_floor)
        print(json.dumps({"file": str(path), "tokens": tokens}), flush=True)
    return 0
