"""Weights of the published `glm-4-voice-tokenizer` directory: model.safetensors (float32, bare key names),
beside config.json and preprocessor_config.json (read and written in glmvoice.models.speech_tokenizer).
Reads it as released and writes our own (tiny) tokenizers in the same layout; key remapping lives here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from glmvoice.models.common import build_on_meta, load_safetensors
from glmvoice.models.speech_tokenizer import (
    CONFIG_NAME,
    PREPROCESSOR_NAME,
    SpeechTokenizerConfig,
    SpeechTokenizerModel,
    config_json,
    preprocessor_json,
    read_speech_tokenizer_config,
)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_FULL_MODEL_PREFIX = "model.encoder."  # a whole WhisperVQ (encoder + decoder) checkpoint nests the encoder here


def _remap_key(name: str, config: SpeechTokenizerConfig) -> str | None:
    """Published key -> ours (the same bare name); None for tensors the tokenizer does not use."""
    if name.startswith(_FULL_MODEL_PREFIX):
        name = name[len(_FULL_MODEL_PREFIX):]
    elif name.startswith(("model.decoder.", "proj_out.")):
        return None
    if name.startswith("layer_norm."):  # the final encoder norm comes after the layers the tokenizer keeps
        return None
    if name.startswith("layers.") and int(name.split(".")[1]) >= config.quantize_position:
        return None
    return name


def load_speech_tokenizer_model(directory: str | Path, device: str | torch.device = "cpu") -> SpeechTokenizerModel:
    config = read_speech_tokenizer_config(directory)
    state = {}
    for name, tensor in load_safetensors(directory, WEIGHTS_NAME, INDEX_NAME).items():
        ours = _remap_key(name, config)
        if ours is not None:
            state[ours] = tensor.float()
    model = build_on_meta(lambda: SpeechTokenizerModel(config))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, assign=True)
    return model.to(device).eval()


def save_weights(model: SpeechTokenizerModel, directory: Path) -> None:
    """model.safetensors alone (bare keys, float32): bytes a given state always writes the same."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})


def save_speech_tokenizer(tokenizer_or_model, directory: str | Path) -> None:
    """Writes config.json, preprocessor_config.json and model.safetensors (bare keys, float32) as published."""
    model = getattr(tokenizer_or_model, "model", tokenizer_or_model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory)
    (directory / CONFIG_NAME).write_text(json.dumps(config_json(model.config), indent=2) + "\n")
    (directory / PREPROCESSOR_NAME).write_text(json.dumps(preprocessor_json(model.config), indent=2) + "\n")
