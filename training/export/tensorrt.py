"""TensorRT plans from our ONNX exports, for GPU nodes: `make engines` / `python -m training.export.tensorrt`.

Each network that has a plan variant (model_repo/tensorrt/<name>/config.pbtxt) is exported to ONNX, then
built with the TensorRT builder (FP16, one optimisation profile over the shapes serving sees) into
`<out>/<name>/1/model.plan` next to a copy of its config: a Triton repository of plans. Where `tensorrt`
does not import (no GPU node, or TensorRT not installed) the ONNX files are still written and the command
stops with a clear message and exit code 2; nothing pretends to have built an engine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VARIANTS = Path(__file__).resolve().parents[2] / "model_repo" / "tensorrt"  # a training tool: runs from a checkout


class TensorRTUnavailable(RuntimeError):
    pass


# (min, opt, max) shape per input, batch first: the range one profile must cover.
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class PlanSpec:
    checkpoint_subdir: str  # in a checkpoints directory (published names)
    export: Callable[[Path, Path], Path]  # (checkpoint dir, out dir) -> onnx file
    profile: Callable[[Path], Profile]  # checkpoint dir -> shapes


def _export_tokenizer(checkpoint: Path, out: Path) -> Path:
    from glmvoice.models.speech_tokenizer_checkpoint import load_speech_tokenizer_model
    from training.export.onnx_speech_tokenizer import export_speech_tokenizer_onnx

    return export_speech_tokenizer_onnx(load_speech_tokenizer_model(checkpoint), out)


def _tokenizer_profile(checkpoint: Path) -> Profile:
    from glmvoice.models.speech_tokenizer import read_speech_tokenizer_config

    c = read_speech_tokenizer_config(checkpoint)
    unit = c.samples_per_token // c.hop_length  # mel frames per speech token
    frames = (unit, 10 * unit, c.segment_samples // c.hop_length)  # one token .. a 30 s segment
    return {
        "mel": tuple((b, c.num_mel_bins, f) for b, f in zip((1, 4, 16), frames)),
        "frame_mask": tuple((b, f) for b, f in zip((1, 4, 16), frames)),
    }


def _export_decoder_part(part: str) -> Callable[[Path, Path], Path]:
    def export(checkpoint: Path, out: Path) -> Path:
        from glmvoice.models.speech_decoder import load_speech_decoder
        from training.export.onnx_speech_decoder import export_speech_decoder

        return export_speech_decoder(load_speech_decoder(checkpoint), out)[part]

    return export


def _decoder_frames(checkpoint: Path) -> tuple[int, int, int]:
    from glmvoice.models.speech_decoder import read_decoder_config

    flow = read_decoder_config(checkpoint).flow
    # From one block (10 codes) to a bounded stream's widest window (prompt + overlap + 3 blocks).
    return flow.mel_frames(10), flow.mel_frames(30), flow.mel_frames(60)


def _estimator_profile(checkpoint: Path) -> Profile:
    from glmvoice.models.speech_decoder import read_decoder_config

    bins = read_decoder_config(checkpoint).flow.output_size
    frames = _decoder_frames(checkpoint)
    batches = (1, 8, 32)
    wide = {name: tuple((b, bins, f) for b, f in zip(batches, frames)) for name in ("x", "mu", "cond")}
    return wide | {
        "mask": tuple((b, 1, f) for b, f in zip(batches, frames)),
        "t": tuple((b,) for b in batches),
        "spks": tuple((b, bins) for b in batches),
    }


def _hift_profile(checkpoint: Path) -> Profile:
    from glmvoice.models.speech_decoder import read_decoder_config

    cfg = read_decoder_config(checkpoint)
    bins, harmonics, hop = cfg.flow.output_size, cfg.hift.nb_harmonics + 1, cfg.hift.samples_per_frame
    frames = _decoder_frames(checkpoint)
    batches = (1, 8, 32)
    return {
        "mel": tuple((b, bins, f) for b, f in zip(batches, frames)),
        "mel_lens": tuple((b,) for b in batches),
        "phase0": tuple((b, harmonics) for b in batches),
        "rand_phase": tuple((b, harmonics) for b in batches),
        "noise": tuple((b, harmonics, f * hop) for b, f in zip(batches, frames)),
    }


PLANS = {
    "speech_tokenizer_encoder": PlanSpec("glm-4-voice-tokenizer", _export_tokenizer, _tokenizer_profile),
    "flow_estimator": PlanSpec("glm-4-voice-decoder", _export_decoder_part("estimator"), _estimator_profile),
    "hift": PlanSpec("glm-4-voice-decoder", _export_decoder_part("hift"), _hift_profile),
}


def build_plan(onnx_path: Path, plan_path: Path, profile: Profile, fp16: bool = True, workspace_gib: int = 8) -> Path:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed here (`import tensorrt` failed): plans are built on a GPU node with "
            "TensorRT, e.g. NVIDIA's TensorRT container; the ONNX exports are ready for it"
        ) from exc
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        shapes.set_shape(name, low, opt, high)
    config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path}")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    return plan_path


def build_engines(checkpoints: Path, out: Path, fp16: bool = True) -> dict[str, Path]:
    """Exports every network with a plan variant, then builds the plans (TensorRTUnavailable if it cannot)."""
    exported = {}
    for name, spec in PLANS.items():
        checkpoint = checkpoints / spec.checkpoint_subdir
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"{checkpoint} does not exist (expected the published directory names)")
        exported[name] = spec.export(checkpoint, out / "onnx" / name)
    plans = {}
    for name, onnx_path in exported.items():
        plans[name] = build_plan(onnx_path, out / name / "1" / "model.plan", PLANS[name].profile(checkpoints / PLANS[name].checkpoint_subdir), fp16)
        shutil.copy2(VARIANTS / name / "config.pbtxt", out / name / "config.pbtxt")
    return plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export.tensorrt", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True, help="directory holding the published checkpoint dirs")
    parser.add_argument("--out", type=Path, default=Path("build/engines"))
    parser.add_argument("--fp32", action="store_true", help="build without FP16 kernels")
    args = parser.parse_args(argv)
    try:
        plans = build_engines(args.checkpoints, args.out, fp16=not args.fp32)
    except TensorRTUnavailable as exc:
        print(f"make engines: {exc}. ONNX exports are in {args.out / 'onnx'}.", file=sys.stderr)
        return 2
    for name, path in plans.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
