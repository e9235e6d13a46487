"""`make bench-gpu` (`python -m loadtest.gpu`): the GPU figures, in one prepared run.

Real-size presets with random weights (timing does not depend on weight values), the three networks on the
GPU (the LM in bf16; the tokenizer and decoder in float32, as the runtime runs them), then:
1. Batch-1 LM decode tokens/s against the memory-bandwidth roofline: every decode step reads every weight
   but the embedding table once, so tok/s <= bandwidth / weight bytes. Bandwidth is measured here with a
   device-to-device copy (and the spec figure from the device properties is printed when torch has them).
2. The load generator against an orchestrator on that runtime (in-process backend: the Triton server binary
   may be missing on a GPU node; Redis runs here): TTFA at concurrency 1, 8 and 32, then the capacity search
   (p95 TTFA <= --slo-ms, underrun <= 1% of turns). The generator runs in its own process.

    python -m loadtest.gpu --out build/loadtest/gpu                       # on a GPU node
    python -m loadtest.gpu --device cpu --preset tiny --levels 1,2 --capacity-levels 1,2   # the CPU smoke test

Replies are random ids under greedy sampling; the LM's output rows past the text tokenizer's vocabulary
are zeroed so no id without a token is ever chosen. Writes gpu.json and the load test's report under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from glmvoice.models.llm import pad_vocab
from glmvoice.models.speech_decoder import DecoderConfig, SpeechDecoder, build_speech_decoder
from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
from glmvoice.models.text_tokenizer import TextTokenizer
from glmvoice.runtime.decoder_service import DecoderService
from glmvoice.runtime.decoder_stream import DecoderStreams
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine
from glmvoice.runtime.serving import engine_config, pbtxt_parameters
from glmvoice.runtime.tokenizer_service import TokenizerService
from glmvoice.runtime.tokenizer_stream import SpeechTokenizer
from glmvoice.sampling import SamplingParams
from loadtest.bench.real_size import random_llm, sync
from services.local_stack import RedisServer, free_port
from services.orchestrator.backends.inprocess import InProcessBackend
from services.orchestrator.server import Orchestrator
from services.orchestrator.settings import CHECKPOINT_DIRS, Settings
from services.triton.repository import templates_dir
from training.bpe_tokenizer import build_tiny_tokenizer


def text_tokenizer_for(preset: str, directory: Path) -> TextTokenizer:
    """A tokenizer with the preset's speech codebook (the ids the LM routes to the decoder)."""
    codebook = SpeechTokenizerConfig.from_name(preset).quantize_vocab_size
    build_tiny_tokenizer(directory, audio_codebook_size=codebook)
    return TextTokenizer.from_directory(directory)


def build_llm(preset: str, device: torch.device, tokenizer: TextTokenizer):
    from glmvoice.models.llm import GLMConfig

    vocab = max(GLMConfig.from_name(preset).vocab_size, pad_vocab(tokenizer.vocab_size))
    model = random_llm(preset, device, torch.bfloat16 if device.type == "cuda" else torch.float32, vocab_size=vocab)
    with torch.no_grad():
        model.output.weight[tokenizer.vocab_size:] = 0  # greedy never picks an id without a token
    return model


def bandwidth_gbs(device: torch.device, gib: float = 2.0) -> dict:
    """Measured device-to-device copy bandwidth (bytes read + written per second), and the spec if known."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    sync(device)
    measured = 5 * 2 * src.numel() * src.element_size() / (time.perf_counter() - start) / 1e9
    out = {"measured_copy_gbs": round(measured, 1)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        clock, width = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
        if clock and width:  # kHz, bits; double data rate
            out["spec_gbs"] = round(2 * clock * 1e3 * width / 8 / 1e9, 1)
    del src, dst
    return out


def roofline(model, device: torch.device, new_tokens: int) -> dict:
    engine = LLMEngine(model, EngineConfig(max_slots=1, max_seq_len=1024)).start()
    stamps: list[float] = []
    done = threading.Event()

    def on_token(_):
        sync(device)
        stamps.append(time.perf_counter())

    for tokens in (8, new_tokens):  # warm-up, then the measured stream
        stamps.clear()
        done.clear()
        request = GenerationRequest(list(range(1, 33)), SamplingParams(temperature=0.0), tokens)
        engine.submit(request, on_token, lambda r, e: done.set())
        done.wait()
    engine.stop()
    decode_tok_s = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    read_per_token = weights - model.tok_embeddings.weight.numel() * model.tok_embeddings.weight.element_size()
    bandwidth = bandwidth_gbs(device)
    bound = bandwidth["measured_copy_gbs"] * 1e9 / read_per_token
    return {"batch1_decode_tok_s": round(decode_tok_s, 1), "weight_bytes": weights, "bytes_read_per_token": read_per_token,
            **bandwidth, "roofline_tok_s": round(bound, 1), "share_of_roofline": round(decode_tok_s / bound, 3),
            "aim": ">= 0.70 of the roofline"}


class RandomRealSizeBackend(InProcessBackend):
    """The in-process backend over random networks built in memory (no 19 GB checkpoint to write and read)."""

    def __init__(self, preset: str, device: str, tokenizer_dir: Path, max_slots: int, seed: int = 0):
        super().__init__(tokenizer_dir, tokenizer_dir, tokenizer_dir, device)
        self.preset, self.max_slots, self.seed = preset, max_slots, seed

    def _load(self) -> None:
        device = torch.device(self.device)
        speech = SpeechTokenizerModel(SpeechTokenizerConfig.from_name(self.preset))
        speech.init_random_weights(torch.Generator().manual_seed(self.seed))
        speech_tokenizer = SpeechTokenizer(speech.to(device).eval())
        self.tokenizer = TokenizerService(speech_tokenizer)
        self.input_rate = speech_tokenizer.config.sampling_rate
        self.text_tokenizer = TextTokenizer.from_directory(self.dirs[1])
        model = build_llm(self.preset, device, self.text_tokenizer)
        config = engine_config(pbtxt_parameters(templates_dir() / "llm" / "config.pbtxt"))
        config = dataclasses.replace(config, max_slots=self.max_slots, max_seq_len=min(config.max_seq_len, model.config.block_size))
        self.max_seq_len = config.max_seq_len
        self.engine = LLMEngine(model, config).start()
        built = build_speech_decoder(DecoderConfig.from_name(self.preset), seed=self.seed)
        self.decoder = DecoderService(DecoderStreams(SpeechDecoder(built.flow, built.hift, device)))
        self.decoder_block = self.decoder.streams.block_size


def serve(args, workdir: Path, redis_addr: str):
    """An orchestrator on its own event loop thread, over the random backend -> (orchestrator, loop)."""
    for name in CHECKPOINT_DIRS.values():
        (workdir / "checkpoints" / name).mkdir(parents=True, exist_ok=True)
    llm_dir = workdir / "checkpoints" / CHECKPOINT_DIRS["llm"]
    text_tokenizer_for(args.preset, llm_dir)
    settings = Settings(backend="inprocess", redis_addr=redis_addr, checkpoints=workdir / "checkpoints",
                        grpc_port=free_port(), metrics_port=0, max_streams=args.max_streams, bind_address="127.0.0.1",
                        quota_streams=args.max_streams, quota_sessions_per_minute=10**6, quota_audio_s_per_minute=1e9)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="orchestrator", daemon=True).start()

    async def create():
        orchestrator = Orchestrator(settings)
        orchestrator.backend.tokenizer_pool.shutdown()  # the default backend is replaced before it loads
        orchestrator.backend.decoder_pool.shutdown()
        orchestrator.backend = orchestrator.service.backend = RandomRealSizeBackend(
            args.preset, args.device, llm_dir, args.max_slots)
        await orchestrator.start()
        return orchestrator

    return asyncio.run_coroutine_threadsafe(create(), loop).result(1800), loop


def load(args, addr: str, out: Path) -> dict:
    """The load generator in its own process: ramp over --levels, then the capacity search."""
    command = [sys.executable, "-m", "loadtest", "--target", f"gpu={addr}", "--workload", "ramp",
               "--levels", ",".join(map(str, args.levels)), "--sessions", str(args.sessions), "--turns", "2",
               "--think-s", "0.5", "--barge-in", "0", "--formats", "pcm16k,mulaw8k", "--speech", "mixed",
               "--temperature", "0", "--max-new-tokens", str(args.max_new_tokens), "--find-capacity",
               "--slo-ms", str(args.slo_ms), "--capacity-levels", ",".join(map(str, args.capacity_levels)),
               "--out", str(out), "--no-progress"]
    subprocess.run(command, check=True)
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="glm-4-voice")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens of the batch-1 decode measurement")
    parser.add_argument("--levels", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--capacity-levels", default="1,8,16,32,48,64,96,128", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--sessions", type=int, default=8, help="sessions per level (at least the level)")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--slo-ms", type=float, default=250.0)
    parser.add_argument("--max-slots", type=int, default=128, help="LM sequences decoded together")
    parser.add_argument("--max-streams", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("build/loadtest/gpu"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("loadtest.gpu: no CUDA device here; run it on a GPU node (make bench-gpu)")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "preset": args.preset, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "command": " ".join(sys.argv)}
    tokenizer = text_tokenizer_for(args.preset, args.out / "text-tokenizer")
    model = build_llm(args.preset, device, tokenizer)
    report["lm"] = roofline(model, device, args.new_tokens)
    print(json.dumps(report["lm"], indent=2), flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    redis = RedisServer(args.out / "redis").start()
    orchestrator = loop = None
    try:
        orchestrator, loop = serve(args, args.out, redis.addr)
        summary = load(args, f"127.0.0.1:{orchestrator.port}", args.out / "load")
    finally:
        if orchestrator is not None:
            asyncio.run_coroutine_threadsafe(orchestrator.stop(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
        redis.stop()
    levels = summary["summary"]["gpu"]["levels"]
    report["ttfa_ms_by_concurrency"] = {level: s["ttfa_ms"] for level, s in levels.items()}
    report["capacity"] = summary["capacity"][0] if summary["capacity"] else None
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("gpu", "ttfa_ms_by_concurrency")}, indent=2))
    print(f"capacity: {report['capacity']['capacity'] if report['capacity'] else '-'} real-time calls; "
          f"report {args.out / 'load' / 'report.html'}, figures {args.out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
