"""Speech tokenizer speed on this machine: offline real-time factor, and what streaming costs.

Random weights (the speed does not depend on them) for the `tiny` preset and, unless --tiny-only, the
real-size `glm-4-voice` preset. Audio: the LibriVox clips, concatenated. Prints one JSON object per preset.

    python -m loadtest.bench.speech_tokenizer [--tiny-only] [--seconds 12]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
from glmvoice.runtime.tokenizer_stream import SpeechTokenizer
from loadtest.speech import librivox


def bench(preset: str, audio: np.ndarray, chunk: int) -> dict:
    torch.manual_seed(0)
    model = SpeechTokenizerModel(SpeechTokenizerConfig.from_name(preset))
    if preset == "tiny":
        model.init_random_weights(torch.Generator().manual_seed(0))
    tokenizer = SpeechTokenizer(model)
    seconds = len(audio) / 16000
    tokenizer.tokenize(audio[:16000], 16000)  # warm-up
    start = time.perf_counter()
    offline = tokenizer.tokenize(audio, 16000, mel_floor="causal")
    offline_s = time.perf_counter() - start

    stream = tokenizer.open_stream()
    emit_ms, codes = [], []
    start = time.perf_counter()
    for i in range(0, len(audio), chunk):
        t = time.perf_counter()
        out = stream.push(audio[i: i + chunk])
        if out:
            emit_ms.append((time.perf_counter() - t) * 1000)
        codes += out
    t = time.perf_counter()
    codes += stream.finalize()
    finalize_ms = (time.perf_counter() - t) * 1000
    stream_s = time.perf_counter() - start
    unit_s = tokenizer.unit_mel_frames * tokenizer.config.hop_length / tokenizer.config.sampling_rate
    return {
        "preset": preset,
        "threads": torch.get_num_threads(),
        "audio_s": round(seconds, 2),
        "tokens": len(offline),
        "offline_real_time_factor": round(offline_s / seconds, 4),
        "stream_real_time_factor": round(stream_s / seconds, 4),
        "stream_over_offline": round(stream_s / offline_s, 2),
        "stream_equals_offline": codes == offline,
        "stream_unit_s": unit_s,
        "stream_lookahead_ms": (tokenizer.config.n_fft // 2 - tokenizer.config.hop_length) / 16,
        "unit_encode_ms_median": round(float(np.median(emit_ms)), 2) if emit_ms else None,
        "finalize_ms": round(finalize_ms, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-only", action="store_true")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--chunk-ms", type=int, default=20, help="size of the audio chunks a client sends")
    args = parser.parse_args()
    clips = [clip.audio for clip in librivox()]
    audio = np.concatenate(clips * 4)[: int(args.seconds * 16000)]
    for preset in ["tiny"] + ([] if args.tiny_only else ["glm-4-voice"]):
        print(json.dumps(bench(preset, audio, args.chunk_ms * 16)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
