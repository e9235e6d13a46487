"""ONNX export of the speech decoder's two heavy parts: the flow estimator (run 10x per block, 2x batch with
guidance) and the HiFT vocoder. The encoder and the Euler loop stay in Python; they are cheap.

Both graphs have dynamic batch and time axes. HiFT's random inputs (start phase, overtone phases, noise) are
graph inputs, so onnxruntime and torch can be compared on identical numbers.

    python -m training.export.onnx_speech_decoder --checkpoint DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

OPSET = 17
ESTIMATOR_FILE, HIFT_FILE = "flow_estimator.onnx", "hift.onnx"


class _HiFTAudio(torch.nn.Module):
    """HiFT without the phase output the stream uses (a serving graph returns audio only)."""

    def __init__(self, hift: torch.nn.Module):
        super().__init__()
        self.hift = hift

    def forward(self, mel, mel_lens, phase0, rand_phase, noise):
        return self.hift(mel, mel_lens, phase0, rand_phase, noise)[0]


def example_inputs(decoder, batch: int = 2, frames: int = 40) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs with the right shapes and a padded second item, for tracing and parity checks."""
    gen = torch.Generator().manual_seed(0)
    bins, h = decoder.flow.cfg.output_size, decoder.hift.cfg.nb_harmonics + 1
    lens = torch.tensor([frames] + [frames - 7] * (batch - 1))
    mask = (torch.arange(frames)[None, :] < lens[:, None]).unsqueeze(1).float()
    estimator = (
        torch.randn(batch, bins, frames, generator=gen) * mask,
        mask,
        torch.randn(batch, bins, frames, generator=gen) * mask,
        torch.rand(batch, generator=gen),
        torch.randn(batch, bins, generator=gen),
        torch.randn(batch, bins, frames, generator=gen) * mask,
    )
    hop = decoder.hift.cfg.samples_per_frame
    hift = (
        torch.randn(batch, bins, frames, generator=gen) * mask,
        lens,
        torch.rand(batch, h, generator=gen),
        torch.rand(batch, h, generator=gen),
        torch.randn(batch, h, frames * hop, generator=gen),
    )
    return {"estimator": estimator, "hift": hift}


def export_speech_decoder(decoder, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(decoder)
    paths = {"estimator": out_dir / ESTIMATOR_FILE, "hift": out_dir / HIFT_FILE}
    bt = {0: "batch", 2: "frames"}
    torch.onnx.export(
        decoder.flow.decoder.estimator.eval(),
        inputs["estimator"],
        str(paths["estimator"]),
        input_names=["x", "mask", "mu", "t", "spks", "cond"],
        output_names=["velocity"],
        dynamic_axes={"x": bt, "mask": bt, "mu": bt, "t": {0: "batch"}, "spks": {0: "batch"}, "cond": bt, "velocity": bt},
        opset_version=OPSET,
        dynamo=False,
    )
    torch.onnx.export(
        _HiFTAudio(decoder.hift.eval()),
        inputs["hift"],
        str(paths["hift"]),
        input_names=["mel", "mel_lens", "phase0", "rand_phase", "noise"],
        output_names=["audio"],
        dynamic_axes={
            "mel": bt, "mel_lens": {0: "batch"}, "phase0": {0: "batch"}, "rand_phase": {0: "batch"},
            "noise": {0: "batch", 2: "samples"}, "audio": {0: "batch", 1: "samples"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a glm-4-voice-decoder layout directory")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from glmvoice.models.speech_decoder import load_speech_decoder

    paths = export_speech_decoder(load_speech_decoder(args.checkpoint), args.out)
    print(json.dumps({name: str(path) for name, path in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
