"""Real-size presets with random weights, in process: the figures a GPU node gives (`make bench-gpu`).

- LM engine: aggregate and per-stream tokens/s at 1, 4, 8, 16 streams (real time needs >= 18.75 tok/s per
  stream: 12.5 speech tokens/s plus the interleaved text), and prefill time of a 20 s spoken question.
- Speech decoder: cost of stream block 1 vs block 20 (bounded context) and the real-time factor.
- Speech tokenizer: real-time factor on 30 s of audio.
Runs anywhere (`--device cpu --preset tiny` is the smoke test); numbers mean something on a GPU node.

    python -m loadtest.bench.real_size --device cuda --preset glm-4-voice
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np
import torch

from glmvoice.models.llm import GLMConfig, Transformer
from glmvoice.models.speech_decoder import DecoderConfig, SpeechDecoder, build_speech_decoder
from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
from glmvoice.runtime.decoder_stream import DecoderStreams
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine
from glmvoice.runtime.tokenizer_stream import SpeechTokenizer
from glmvoice.sampling import SamplingParams


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_llm(preset: str, device: torch.device, dtype: torch.dtype, **overrides) -> Transformer:
    with torch.device("meta"):
        model = Transformer(GLMConfig.from_name(preset, **overrides))
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.randn_like(p) * 0.02)
    return model.eval()


def bench_llm(preset: str, device: torch.device, dtype: torch.dtype, new_tokens: int) -> None:
    model = random_llm(preset, device, dtype)
    engine = LLMEngine(model, EngineConfig(max_slots=16, max_seq_len=1024, prefill_chunk=512)).start()
    greedy = SamplingParams(temperature=0.0)
    vocab = model.config.vocab_size

    def run(streams: int, prompt_len: int, tokens: int) -> float:
        done = [threading.Event() for _ in range(streams)]
        start = time.perf_counter()
        for i in range(streams):
            prompt = np.random.default_rng(i).integers(0, vocab, size=prompt_len).tolist()
            engine.submit(GenerationRequest(prompt, greedy, tokens), lambda t: None, lambda r, e, d=done[i]: d.set())
        for d in done:
            d.wait()
        sync(device)
        return time.perf_counter() - start

    run(1, 16, 4)  # warm-up
    prompt_len = 16 + 250  # template + 20 s of speech at 12.5 tokens/s
    prefill_s = statistics.median(run(1, prompt_len, 1) for _ in range(3))
    print(f"LM {preset} on {device} ({dtype}): prefill of {prompt_len} tokens + 1 token: {prefill_s * 1000:.1f} ms")
    print(f"{'streams':>8} {'tok/s':>10} {'per stream':>11} {'x1':>6}  real time (>= 18.75 tok/s per stream)")
    base = None
    for streams in (1, 4, 8, 16):
        rate = streams * new_tokens / run(streams, 16, new_tokens)
        base = base or rate
        per = rate / streams
        print(f"{streams:>8} {rate:>10.1f} {per:>11.1f} {rate / base:>6.2f}  {'yes' if per >= 18.75 else 'no'}")
    engine.stop()
    del model  # the engine is stopped; run() still refers to it


def bench_decoder(preset: str, device: torch.device, blocks: int) -> None:
    built = build_speech_decoder(DecoderConfig.from_name(preset), seed=0)
    decoder = SpeechDecoder(built.flow, built.hift, device)
    streams = DecoderStreams(decoder)
    codes = np.random.default_rng(0).integers(0, decoder.codebook_size, size=blocks * decoder.block_size).tolist()
    with streams.stream("warm-up", seed=0) as stream:
        stream.push(codes[: decoder.block_size])
    costs, samples = [], 0
    with streams.stream("bench", seed=0) as stream:
        for b in range(blocks):
            sync(device)
            start = time.perf_counter()
            samples += len(stream.push(codes[b * decoder.block_size : (b + 1) * decoder.block_size]))
            sync(device)
            costs.append(time.perf_counter() - start)
        samples += len(stream.finalize())
    audio_s = samples / decoder.sample_rate
    print(f"decoder {preset} on {device}: block 1 {costs[0] * 1000:.1f} ms, block {blocks} {costs[-1] * 1000:.1f} ms, "
          f"ratio {costs[-1] / costs[0]:.2f}; real-time factor {sum(costs) / audio_s:.3f}")


def bench_tokenizer(preset: str, device: torch.device, seconds: float) -> None:
    model = SpeechTokenizerModel(SpeechTokenizerConfig.from_name(preset))
    model.init_random_weights(torch.Generator().manual_seed(0))
    tokenizer = SpeechTokenizer(model.to(device))
    audio = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    tokenizer.tokenize(audio[:16000], 16000)  # warm-up
    sync(device)
    start = time.perf_counter()
    tokenizer.tokenize(audio, 16000)
    sync(device)
    elapsed = time.perf_counter() - start
    print(f"tokenizer {preset} on {device}: {seconds:.0f} s of audio in {elapsed * 1000:.1f} ms, real-time factor {elapsed / seconds:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="glm-4-voice")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("loadtest.bench.real_size: no CUDA device here; run it on a GPU node (make bench-gpu)")
        return 0
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.inference_mode():
        bench_tokenizer(args.preset, device, args.seconds)
        bench_decoder(args.preset, device, args.blocks)
    bench_llm(args.preset, device, dtype, args.new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
