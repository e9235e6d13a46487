"""Reads and writes the LM checkpoint in the published `glm-4-voice-9b` layout.

Layout: `config.json` (model_type chatglm, ChatGLMConfig field names), sharded safetensors
`model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`, and the text tokenizer
(`tokenizer.model`, `tokenizer_config.json`). Key names are ChatGLM's; remapping happens here only.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import torch

from glmvoice.models.common import build_on_meta, load_safetensors, save_safetensors_sharded
from glmvoice.models.llm import GLMConfig, Transformer
from glmvoice.models.quantize import QuantScheme, load_quantized_linears, quantize_state
from glmvoice.models.text_tokenizer import TextTokenizer

SHARD_PATTERN = "model-{:05d}-of-{:05d}.safetensors"
INDEX_NAME = "model.safetensors.index.json"
INV_FREQ_KEY = "transformer.rotary_pos_emb.inv_freq"

# ChatGLM config.json field -> GLMConfig field.
CONFIG_FIELDS = {
    "num_layers": "n_layer",
    "hidden_size": "dim",
    "num_attention_heads": "n_head",
    "kv_channels": "head_dim",
    "ffn_hidden_size": "intermediate_size",
    "padded_vocab_size": "vocab_size",
    "seq_length": "block_size",
    "layernorm_epsilon": "norm_eps",
    "rope_ratio": "rope_ratio",
    "add_qkv_bias": "qkv_bias",
}
# Flags whose other values select code paths that GLM-4 does not use; we refuse them instead of guessing.
REQUIRED_FLAGS = {
    "rmsnorm": True,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "apply_residual_connection_post_layernorm": False,
    "original_rope": True,
}
# ChatGLMConfig's defaults for fields a config.json may omit. seq_length is the exception: a third-party
# mirror of glm-4-voice-9b's config.json lists no seq_length, and ChatGLMConfig's default (2048) would
# cut conversations the official demo allows (2000 new tokens after the prompt), so a missing value
# falls back to the length the model was trained at (REFERENCE.md: 8192).
CHATGLM_DEFAULTS = {
    "rope_ratio": 1, "add_qkv_bias": False, "multi_query_attention": False, "multi_query_group_num": 1,
    "seq_length": 8192,
}

# Published key (with N for the layer) -> our key.
KEY_MAP = {
    "transformer.embedding.word_embeddings.weight": "tok_embeddings.weight",
    "transformer.encoder.layers.N.input_layernorm.weight": "layers.N.attention_norm.weight",
    "transformer.encoder.layers.N.self_attention.query_key_value.weight": "layers.N.attention.wqkv.weight",
    "transformer.encoder.layers.N.self_attention.query_key_value.bias": "layers.N.attention.wqkv.bias",
    "transformer.encoder.layers.N.self_attention.dense.weight": "layers.N.attention.wo.weight",
    "transformer.encoder.layers.N.post_attention_layernorm.weight": "layers.N.ffn_norm.weight",
    "transformer.encoder.layers.N.mlp.dense_h_to_4h.weight": "layers.N.feed_forward.w13.weight",
    "transformer.encoder.layers.N.mlp.dense_4h_to_h.weight": "layers.N.feed_forward.w2.weight",
    "transformer.encoder.final_layernorm.weight": "norm.weight",
    "transformer.output_layer.weight": "output.weight",
}
# Weight-only quantized checkpoints (glmvoice.models.quantize) add a scale beside each block linear's weight.
KEY_MAP |= {
    theirs.replace(".weight", ".weight_scale"): ours.replace(".weight", ".weight_scale")
    for theirs, ours in KEY_MAP.items()
    if ours.endswith(("wqkv.weight", "wo.weight", "w13.weight", "w2.weight"))
}
QUANTIZATION_FIELD = "quantization"  # config.json: the scheme of a quantized checkpoint (QuantScheme.to_json)
_LAYER = re.compile(r"\.(\d+)\.")


def config_from_chatglm(raw: dict) -> GLMConfig:
    if raw.get("model_type") != "chatglm":
        raise ValueError(f"config.json: model_type {raw.get('model_type')!r}, expected 'chatglm'")
    for flag, value in REQUIRED_FLAGS.items():
        if flag in raw and raw[flag] != value:
            raise ValueError(f"config.json: {flag}={raw[flag]!r} is not supported (GLM-4 uses {value!r})")
    raw = CHATGLM_DEFAULTS | raw
    missing = [name for name in CONFIG_FIELDS if name not in raw]
    if missing:
        raise ValueError(f"config.json lacks {missing}")
    values = {ours: raw[theirs] for theirs, ours in CONFIG_FIELDS.items()}
    groups = raw["multi_query_group_num"] if raw["multi_query_attention"] else raw["num_attention_heads"]
    values["n_local_heads"] = groups
    values["rope_ratio"] = float(values["rope_ratio"])
    return GLMConfig(**values)


def config_to_chatglm(config: GLMConfig, torch_dtype: str, tokenizer: TextTokenizer | None = None) -> dict:
    ours = {f.name: getattr(config, f.name) for f in fields(config)}
    raw = {theirs: ours[name] for theirs, name in CONFIG_FIELDS.items()}
    raw |= REQUIRED_FLAGS | {
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "multi_query_attention": config.n_local_heads != config.n_head,
        "multi_query_group_num": config.n_local_heads,
        "apply_query_key_layer_scaling": True,
        "attention_softmax_in_fp32": True,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "fp32_residual_connection": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": torch_dtype,
    }
    if tokenizer is not None:  # as published: eos = <|endoftext|>, <|user|>, <|observation|>; pad = <|endoftext|>
        names = ("<|endoftext|>", "<|user|>", "<|observation|>")
        raw |= {"eos_token_id": [tokenizer.token_id(n) for n in names], "pad_token_id": tokenizer.token_id(names[0])}
    return raw


def _rename(key: str, table: dict[str, str]) -> str:
    """Maps a key through a table whose entries use N for the layer index."""
    generic = _LAYER.sub(".N.", key, count=1)
    if generic not in table:
        raise ValueError(f"unexpected tensor in checkpoint: {key}")
    match = _LAYER.search(key)
    return table[generic].replace(".N.", f".{match.group(1)}.") if match else table[generic]


def _published_inv_freq(config: GLMConfig) -> torch.Tensor:
    """ChatGLM's stored rotary buffer: frequencies of the rotated dims, before rope_ratio scales the base."""
    return 1.0 / (config.rope_base ** (torch.arange(0, config.rotary_dim, 2).float() / config.rotary_dim))


def from_published(state: dict[str, torch.Tensor], config: GLMConfig) -> dict[str, torch.Tensor]:
    ours = {}
    for key, tensor in state.items():
        if key == INV_FREQ_KEY:
            # Derived, not learned: a mismatch means the rotary convention differs from ours.
            expected = _published_inv_freq(config)
            if tensor.shape != expected.shape or not torch.allclose(tensor.float(), expected, rtol=1e-2):
                raise ValueError("checkpoint rotary inv_freq does not match the config's rotary dims")
            continue
        ours[_rename(key, KEY_MAP)] = tensor
    return ours


def to_published(state: dict[str, torch.Tensor], config: GLMConfig) -> dict[str, torch.Tensor]:
    reverse = {ours: theirs for theirs, ours in KEY_MAP.items()}
    out = {_rename(key, reverse): tensor for key, tensor in state.items()}
    out[INV_FREQ_KEY] = _published_inv_freq(config).to(state["output.weight"].dtype)  # float in quantized ones too
    return out


def load_config(directory: str | Path) -> GLMConfig:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no config.json")
    return config_from_chatglm(json.loads(path.read_text()))


def stored_quantization(directory: str | Path) -> QuantScheme | None:
    """The scheme a quantized checkpoint was written with (None: float weights)."""
    raw = json.loads((Path(directory) / "config.json").read_text())
    return QuantScheme.from_json(raw[QUANTIZATION_FIELD]) if QUANTIZATION_FIELD in raw else None


def load_llm(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
    quantize: QuantScheme | None = None, shard: tuple[int, int] | None = None,
):
    """-> (Transformer in eval mode, TextTokenizer). dtype None keeps the checkpoint's float dtype.

    A quantized checkpoint (`glmvoice quantize`) loads as it was written; `quantize` quantizes a float
    checkpoint while loading (on the host, before anything reaches `device`), or must match the stored scheme.
    shard (rank, world): that tensor-parallel rank's slices (llm_tensor_parallel), cut after quantizing, so a
    rank computes exactly its part of the unsplit quantized model."""
    directory = Path(directory)
    config = load_config(directory)
    tokenizer = TextTokenizer.from_directory(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer ids reach {tokenizer.vocab_size}, beyond padded_vocab_size {config.vocab_size}")
    state = from_published(load_safetensors(directory, "model.safetensors", INDEX_NAME), config)
    stored = stored_quantization(directory)
    if stored is not None and quantize is not None and quantize != stored:
        raise ValueError(f"{directory} is quantized as {stored}; cannot load it as {quantize}")
    scheme = stored or quantize
    if scheme is not None and stored is None:
        state = quantize_state(state, scheme)
    if shard is not None:
        from glmvoice.models import llm_tensor_parallel as tp

        state, config = tp.shard_state(state, config, *shard), tp.shard_config(config, shard[1])
    float_dtype = dtype or state["output.weight"].dtype
    model = build_on_meta(lambda: Transformer(config))
    if scheme is not None:
        state = load_quantized_linears(model, state, scheme, float_dtype, device)
    state = {k: v.to(device=device, dtype=float_dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), tokenizer


def write_quantized_llm(source: str | Path, out: str | Path, scheme: QuantScheme, max_shard_bytes: int = 5 << 30) -> dict:
    """Writes a quantized copy of a float checkpoint: config.json recording the scheme, sharded safetensors
    with the stored weights and scales (published key names), and every other file (tokenizer, provenance)
    as it was. -> {"source_bytes", "bytes"}: the tensors' bytes before and after."""
    source, out = Path(source), Path(out)
    if stored_quantization(source) is not None:
        raise ValueError(f"{source} is already quantized")
    if out.resolve() == source.resolve():
        raise ValueError("--out must differ from --checkpoint")
    config = load_config(source)
    state = from_published(load_safetensors(source, "model.safetensors", INDEX_NAME), config)
    quantized = quantize_state(state, scheme)
    out.mkdir(parents=True, exist_ok=True)
    weight_files = {INDEX_NAME, "config.json", "model.safetensors"}
    for path in source.iterdir():
        if path.is_file() and path.name not in weight_files and not path.name.endswith(".safetensors"):
            shutil.copy2(path, out / path.name)
    raw = json.loads((source / "config.json").read_text()) | {QUANTIZATION_FIELD: scheme.to_json()}
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    save_safetensors_sharded(to_published(quantized, config), out, SHARD_PATTERN, INDEX_NAME, max_shard_bytes)
    nbytes = lambda s: sum(t.numel() * t.element_size() for t in s.values())  # noqa: E731
    return {"source_bytes": nbytes(state), "bytes": nbytes(quantized)}


def save_llm(
    model: Transformer, directory: str | Path, max_shard_bytes: int, tokenizer: TextTokenizer | None = None
) -> None:
    """Writes config.json and sharded safetensors + index (the tokenizer files are written separately;
    a given tokenizer only supplies config.json's eos/pad ids)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    raw = config_to_chatglm(model.config, dtype, tokenizer)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    save_safetensors_sharded(to_published(state, model.config), directory, SHARD_PATTERN, INDEX_NAME, max_shard_bytes)
