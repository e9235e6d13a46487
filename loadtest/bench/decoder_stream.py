"""Decoder stream benchmark: cost per block (block 1 vs block 20) with the bounded window and with the
official unbounded prompt, the seam metric, and the distance to the offline decode.

Wall time is measured on the model that runs (tiny by default). The sizes each block hands to the encoder,
estimator and vocoder do not depend on the model, so the same calls are also costed in FLOPs on the real
glm-4-voice networks, built on the meta device (the CPU here cannot run 20 real blocks in a benchmark).

    python -m loadtest.bench.decoder_stream [--preset tiny | --checkpoint DIR] [--blocks 20]

Random weights for presets (fixed seed); timings are medians over `--repeats` runs of the same stream.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder, load_speech_decoder, save_speech_decoder
from glmvoice.runtime.decoder_stream import DecoderStreams, StreamSettings, seam_metric


class ShapeRecorder:
    """Records the sizes each block hands to the encoder, the estimator and the vocoder (real calls, unchanged)."""

    def __init__(self, decoder):
        self.decoder, self.blocks = decoder, [[]]
        flow, hift = decoder.flow, decoder.hift
        encode, sample, vocode = flow.encode, flow.sample, hift.forward

        def rec_encode(tokens, token_lens, mel_lens):
            self.blocks[-1].append(("encoder", int(token_lens.max()), int(mel_lens.max())))
            return encode(tokens, token_lens, mel_lens)

        def rec_sample(mu, *args, **kwargs):
            self.blocks[-1].append(("estimator", mu.shape[-1]))
            return sample(mu, *args, **kwargs)

        def rec_vocode(mel, *args):
            self.blocks[-1].append(("vocoder", mel.shape[-1]))
            return vocode(mel, *args)

        flow.encode, flow.sample, hift.forward = rec_encode, rec_sample, rec_vocode

    def next_block(self) -> None:
        self.blocks.append([])

    def detach(self) -> None:
        del self.decoder.flow.encode, self.decoder.flow.sample, self.decoder.hift.forward


def real_preset_gflops(calls: list[tuple], preset: str = "glm-4-voice") -> float:
    """FLOPs the same calls cost on a preset's networks, counted on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from glmvoice.models.common import build_on_meta
    from glmvoice.models.flow import Flow
    from glmvoice.models.hift import HiFT

    cfg = DecoderConfig.from_name(preset)
    flow, hift = build_on_meta(lambda: Flow(cfg.flow)).eval(), build_on_meta(lambda: HiFT(cfg.hift)).eval()
    bins, h = cfg.flow.output_size, cfg.hift.nb_harmonics + 1
    passes = 2 if cfg.flow.inference_cfg_rate > 0 else 1
    total = 0
    with torch.device("meta"), torch.no_grad():
        for call in calls:
            with FlopCounterMode(display=False) as counter:
                if call[0] == "encoder":
                    # The conformer only: the length regulator needs real lengths and is a few small convs.
                    flow.encoder(torch.zeros(1, call[1], cfg.flow.input_size), torch.tensor([call[1]]))
                elif call[0] == "estimator":
                    x = torch.zeros(passes, bins, call[1])
                    flow.decoder.estimator(x, torch.ones(passes, 1, call[1]), x, torch.zeros(passes), torch.zeros(passes, bins), x)
                else:
                    frames = call[1]
                    hift(torch.zeros(1, bins, frames), torch.tensor([frames]), torch.zeros(1, h), torch.zeros(1, h), torch.zeros(1, h, frames * cfg.hift.samples_per_frame))
            steps = cfg.flow.n_timesteps if call[0] == "estimator" else 1
            total += counter.get_total_flops() * steps
    return total / 1e9


def run_stream(decoder, codes: list[int], settings: StreamSettings, seed: int) -> tuple[list[float], list[np.ndarray], torch.Tensor, list]:
    """Feeds one block at a time; returns seconds per block (finalize counted with the last), chunks, mel and
    the calls each block made."""
    streams = DecoderStreams(decoder, settings)
    times, chunks = [], []
    recorder = ShapeRecorder(decoder)
    try:
        with streams.stream("bench", seed=seed, record_mel=True) as stream:
            for i in range(0, len(codes), streams.block_size):
                start = time.perf_counter()
                chunks.append(stream.push(codes[i : i + streams.block_size]))
                times.append(time.perf_counter() - start)
                recorder.next_block()
            start = time.perf_counter()
            chunks.append(stream.finalize())
            times[-1] += time.perf_counter() - start
            mel = stream.state.recorded_mel()
    finally:
        recorder.detach()
    calls = recorder.blocks[: len(times)]
    calls[-1] += recorder.blocks[len(times)]  # the finalize pass belongs to the last block
    return times, chunks, mel, calls


def measure(decoder, codes, settings, seed, repeats) -> dict:
    runs = [run_stream(decoder, codes, settings, seed) for _ in range(repeats)]
    per_block = np.median(np.array([r[0] for r in runs]), axis=0)
    chunks, mel, calls = runs[0][1], runs[0][2], runs[0][3]
    last = min(19, len(calls) - 2)  # block 20, or the last non-final block of a shorter run
    gflops = [real_preset_gflops(calls[0]), real_preset_gflops(calls[last])]
    wave = np.concatenate(chunks)
    joins = sorted(set(int(j) for j in np.cumsum([len(c) for c in chunks])[:-1]))
    offline = decoder.decode(codes, seed=seed)
    offline_mel = decoder.decode_mel(codes, seed=seed)[0]
    n = len(per_block)
    def describe(block_calls):
        return [" ".join(str(x) for x in call) for call in block_calls]

    return {
        "block_ms": " ".join(f"{1000 * t:.1f}" for t in per_block),
        "block1_ms": round(1000 * per_block[0], 1),
        "block20_ms": round(1000 * per_block[min(19, n - 1)], 1),
        "ratio_block20_block1": round(float(per_block[min(19, n - 1)] / per_block[0]), 3),
        "ratio_block20_block3": round(float(per_block[min(19, n - 1)] / per_block[min(2, n - 1)]), 3),
        "real_time_factor": round(float(per_block.sum() / (len(wave) / decoder.sample_rate)), 3),
        "calls_block1": describe(calls[0]),
        "calls_block20": describe(calls[last]),
        "glm4voice_gflops_block1": round(gflops[0], 1),
        "glm4voice_gflops_block20": round(gflops[1], 1),
        "glm4voice_gflops_ratio_block20_block1": round(gflops[1] / gflops[0], 3),
        "seams": {k: round(v, 3) for k, v in seam_metric(wave, joins, period=decoder.hift.cfg.samples_per_frame).items()},
        "wave_distance_to_offline": round(float(np.sqrt(((wave - offline) ** 2).mean() / (offline**2).mean())), 4),
        "mel_distance_to_offline": round(float(((mel - offline_mel) ** 2).mean().sqrt() / offline_mel.std()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--checkpoint", help="a glm-4-voice-decoder directory instead of a random preset")
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        decoder = load_speech_decoder(args.checkpoint)
    else:
        # Through the published layout, so the benchmark runs what the loader produces.
        with tempfile.TemporaryDirectory() as tmp:
            decoder = load_speech_decoder(save_speech_decoder(build_speech_decoder(DecoderConfig.from_name(args.preset), seed=4321), tmp))
    codes = np.random.default_rng(0).integers(0, decoder.codebook_size, args.blocks * decoder.block_size).tolist()
    decoder.decode(codes[:20], seed=0)  # warm-up
    report = {
        "model": args.checkpoint or args.preset,
        "threads": args.threads,
        "blocks": args.blocks,
        "bounded": measure(decoder, codes, StreamSettings(), args.seed, args.repeats),
        "official_unbounded_prompt": measure(decoder, codes, StreamSettings(context_blocks=None, prompt_frames=None), args.seed, args.repeats),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
