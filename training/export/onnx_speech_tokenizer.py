"""ONNX export of the speech tokenizer encoder: log-mel segments -> speech codes.

- speech_tokenizer.onnx: mel [B, M, T] float32 (T a multiple of 8: whole tokens), frame_mask [B, T] int64
  (1 = real audio) -> codes [B, T / 8] int64, hidden [B, T / 8, C] float32 (the states the VQ quantizes).

Feature extraction (resampling, Whisper log-mel, 30 s segments) stays in glmvoice (SpeechTokenizer); the
graph is what a TensorRT engine is built from.

    python -m training.export.onnx_speech_tokenizer --checkpoint DIR --out DIR [--check AUDIO.wav]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from glmvoice.models.speech_tokenizer import SpeechTokenizerModel, vector_quantize

OPSET = 17
FILE_NAME = "speech_tokenizer.onnx"


class _CodesAndHidden(nn.Module):
    def __init__(self, model: SpeechTokenizerModel):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor, frame_mask: torch.Tensor):
        hidden = self.model.hidden(mel, frame_mask)
        return vector_quantize(hidden, self.model.codebook.weight), hidden


def export_speech_tokenizer_onnx(model: SpeechTokenizerModel, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAME
    c = model.config
    mel = torch.zeros(2, c.num_mel_bins, 2 * c.samples_per_token // c.hop_length)
    mask = torch.ones(2, mel.shape[2], dtype=torch.long)
    # The TorchScript exporter: the torch.export-based one needs onnxscript, which we do not ship.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _CodesAndHidden(model.eval()), (mel, mask), path, dynamo=False, opset_version=OPSET,
            input_names=["mel", "frame_mask"], output_names=["codes", "hidden"],
            dynamic_axes={"mel": {0: "batch", 2: "frames"}, "frame_mask": {0: "batch", 1: "frames"},
                          "codes": {0: "batch", 1: "tokens"}, "hidden": {0: "batch", 1: "tokens"}},
        )
    return path


def check_against_torch(model: SpeechTokenizerModel, path: Path, mel: torch.Tensor, frame_mask: torch.Tensor) -> dict:
    """Runs one batch in onnxruntime and in torch; returns the hidden-state difference and code agreement."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    codes, hidden = session.run(None, {"mel": mel.numpy(), "frame_mask": frame_mask.long().numpy()})
    with torch.no_grad():
        torch_hidden = model.hidden(mel, frame_mask)
        torch_codes = vector_quantize(torch_hidden, model.codebook.weight)
    return {
        "max_abs_diff": float(np.abs(hidden - torch_hidden.numpy()).max()),
        "codes_equal": bool((codes == torch_codes.numpy()).all()),
        "tokens": int(codes.size),
    }


def main(argv=None) -> int:
    from glmvoice.audio import read_wav
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--check", type=Path, help="a WAV file whose first segment is compared with torch")
    args = parser.parse_args(argv)
    tokenizer = load_speech_tokenizer(args.checkpoint)
    path = export_speech_tokenizer_onnx(tokenizer.model, args.out)
    report: dict = {"onnx": str(path)}
    if args.check:
        samples, rate = read_wav(args.check)
        segment = tokenizer.segments(tokenizer.to_model_rate(samples, rate))[0]
        mel, mask = tokenizer.segment_features(segment)
        report["check"] = check_against_torch(tokenizer.model, path, mel[None], mask[None])
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
