"""Batch decode speed and memory of the LM per weight format (bf16, INT8, INT4), against the roofline.

For issue 15's GPU figures: the glm-4-voice preset with random weights on one GPU, decode tok/s at 1, 8 and
32 streams for bf16 / int8 / int4-g128, peak memory, and the memory-bandwidth roofline: a decode step reads
every weight byte once plus each stream's KV, so tok/s <= streams x bandwidth / (weight bytes + KV bytes read).
Prints one JSON object.

    python loadtest/bench/bench_llm_gpu.py --device cuda --bandwidth-gbs 4800            # H200 (not run yet)
    python loadtest/bench/bench_llm_gpu.py --preset tiny --device cpu --bandwidth-gbs 20  # the CPU check
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from glmvoice.models.llm import GLMConfig, Transformer
from glmvoice.models.quantize import QuantScheme, quantize_model, weight_bytes
from glmvoice.runtime.model_runner import ModelRunner


def build(config: GLMConfig, device: torch.device, dtype: torch.dtype, scheme: QuantScheme | None) -> Transformer:
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(config).to(dtype)  # random init; speed does not depend on the values
    if scheme is not None:
        quantize_model(model, scheme)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rate(runner: ModelRunner, streams: int, context: int, steps: int, device: torch.device) -> float:
    """Tokens per second of `steps` batched decode steps of `streams` sequences each `context` long."""
    slots = list(range(streams))
    for slot in slots:  # prefill each stream's context once
        runner.forward([[1] * context], [0], [slot])
    for warm in range(2):
        runner.forward([[1]] * streams, [context + warm] * streams, slots)
    sync(device)
    started = time.perf_counter()
    for step in range(steps):
        runner.forward([[1]] * streams, [context + 2 + step] * streams, slots)
    sync(device)
    return streams * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="glm-4-voice")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--formats", default="bf16,int8,int4-g128")
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--context", type=int, default=256, help="tokens already in each stream's KV")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--bandwidth-gbs", type=float, required=True, help="device memory bandwidth, GB/s")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = GLMConfig.from_name(args.preset)
    streams = [int(s) for s in args.streams.split(",")]
    report = {"preset": args.preset, "device": str(device), "bandwidth_gbs": args.bandwidth_gbs,
              "context": args.context, "formats": {}}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    for name in args.formats.split(","):
        scheme = None if name == "bf16" else QuantScheme.parse(name)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:  # a format whose kernel this device lacks is reported, and the others still run
            model = build(config, device, torch.bfloat16, scheme)
            runner = ModelRunner(model, max(streams), args.context + args.steps + 4)
            decode_rate(runner, 1, 8, 1, device)
        except (RuntimeError, NotImplementedError) as exc:
            report["formats"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        weights = weight_bytes(model)["total"]
        row = {"weight_bytes": weights, "per_streams": {}}
        for count in streams:
            rate = decode_rate(runner, count, args.context, args.steps, device)
            kv_read = count * (args.context + args.steps // 2) * config.kv_bytes_per_token
            # The output layer and embedding rows are in `weights`; the roofline ignores activations.
            roofline = count * args.bandwidth_gbs * 1e9 / (weights + kv_read)
            row["per_streams"][count] = {"tok_s": round(rate, 1), "roofline_tok_s": round(roofline, 1),
                                         "fraction_of_roofline": round(rate / roofline, 3)}
        if device.type == "cuda":
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        report["formats"][name] = row
        del runner, model
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
