"""`glmvoice synthesize --checkpoint DIR --tokens 1,2,3 | --tokens-file F --out reply.wav`: codes to speech.

Decodes the way serving does, block by block through a decoder stream (`--offline` decodes the whole utterance
at once instead). `--tokens-file` takes codes separated by commas or whitespace, a JSON list, or a JSON object
with "tokens" (one line of `glmvoice tokenize` output). Prints one JSON object describing the result.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="glm-4-voice-decoder directory")
    codes = parser.add_mutually_exclusive_group(required=True)
    codes.add_argument("--tokens", help="speech codes, comma-separated (0 .. codebook size - 1)")
    codes.add_argument("--tokens-file", type=Path, help="file with speech codes (text or JSON)")
    parser.add_argument("--out", required=True, type=Path, help="output WAV file")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same waveform)")
    parser.add_argument("--block-size", type=int, default=None, help="codes per streamed block (default: checkpoint's, 10)")
    parser.add_argument("--rate", type=int, default=None, help="output sample rate: 8000, 16000, 24000 or 48000 (default 22050)")
    parser.add_argument("--offline", action="store_true", help="decode the whole utterance at once, not block by block")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def parse_codes(text: str) -> list[int]:
    text = text.strip()
    if text.startswith(("[", "{")):
        data = json.loads(text)
        data = data.get("tokens") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise ValueError("JSON tokens must be a list or an object with a 'tokens' list")
        return [int(c) for c in data]
    parts = [p for p in re.split(r"[,\s]+", text) if p]
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise ValueError(f"speech codes must be integers: {exc}") from None


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from glmvoice.audio import OUTPUT_RATES, resample, write_wav
    from glmvoice.models.speech_decoder import load_speech_decoder
    from glmvoice.runtime.decoder_stream import DecoderStreams, StreamSettings

    if args.tokens_file is not None and not args.tokens_file.is_file():
        raise FileNotFoundError(f"no such tokens file: {args.tokens_file}")
    codes = parse_codes(args.tokens if args.tokens is not None else args.tokens_file.read_text())
    if not codes:
        raise ValueError("no speech codes given")
    if args.rate is not None and args.rate not in OUTPUT_RATES:
        raise ValueError(f"--rate must be one of {OUTPUT_RATES}")
    if args.block_size is not None and args.block_size <= 0:
        raise ValueError("--block-size must be positive")
    decoder = load_speech_decoder(args.checkpoint, args.device)
    rate = args.rate or decoder.sample_rate
    start = time.perf_counter()
    first_audio = None
    if args.offline:
        wave = resample(decoder.decode(codes, seed=args.seed), decoder.sample_rate, rate)
        blocks = 1
    else:
        streams = DecoderStreams(decoder, StreamSettings(block_size=args.block_size))
        chunks = []
        with streams.stream("cli", seed=args.seed, output_rate=args.rate) as stream:
            for i in range(0, len(codes), streams.block_size):
                chunks.append(stream.push(codes[i : i + streams.block_size]))
                if first_audio is None and len(chunks[-1]):
                    first_audio = time.perf_counter() - start
            chunks.append(stream.finalize())
        wave = np.concatenate(chunks)
        blocks = -(-len(codes) // streams.block_size)
    elapsed = time.perf_counter() - start
    write_wav(args.out, wave, rate)
    print(json.dumps({
        "out": str(args.out),
        "codes": len(codes),
        "sample_rate": rate,
        "samples": int(len(wave)),
        "seconds": round(len(wave) / rate, 3),
        "mode": "offline" if args.offline else "stream",
        "blocks": blocks,
        "decode_seconds": round(elapsed, 3),
        "first_audio_seconds": None if first_audio is None else round(first_audio, 3),
    }))
    return 0
