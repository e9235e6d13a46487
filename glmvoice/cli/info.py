"""`glmvoice info`: what a checkpoint or preset is — network, parameter count, vocabulary facts.

Real-size presets are built on the meta device, so counting 9.5 B parameters allocates nothing.
A checkpoint directory is recognised by its published layout: chatglm config.json (LM), Whisper-VQ
config.json + preprocessor_config.json (speech tokenizer), config.yaml + flow.pt + hift.pt (decoder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a published-layout checkpoint directory")
    source.add_argument("--preset", help="a preset name: glm-4-voice or tiny")
    parser.add_argument("--network", choices=sorted(PRESET_INFO), help="with --preset: one network (default: all three)")


def detect_network(directory: Path) -> str:
    if (directory / "config.yaml").exists() and (directory / "flow.pt").exists():
        return "speech_decoder"
    config_file = directory / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{directory}: no config.json or config.yaml: not a glm-4-voice checkpoint directory")
    if json.loads(config_file.read_text()).get("model_type") == "chatglm":
        return "llm"
    if (directory / "preprocessor_config.json").exists():
        return "speech_tokenizer"
    raise ValueError(f"{directory}: config.json is neither a chatglm LM nor a speech tokenizer config")


# Imports stay inside the functions: `glmvoice --help` must not load torch.
def _tokenizer_preset(preset: str) -> dict:
    from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, speech_tokenizer_info

    return speech_tokenizer_info(SpeechTokenizerConfig.from_name(preset))


def _llm_preset(preset: str) -> dict:
    from glmvoice.models.llm import GLMConfig, llm_info

    return llm_info(GLMConfig.from_name(preset))


def _decoder_preset(preset: str) -> dict:
    from glmvoice.models.speech_decoder import DecoderConfig, speech_decoder_info

    return {"network": "speech_decoder", **speech_decoder_info(DecoderConfig.from_name(preset))}


def _tokenizer_checkpoint(directory: Path) -> dict:
    from glmvoice.models.speech_tokenizer import read_speech_tokenizer_config, speech_tokenizer_info

    return speech_tokenizer_info(read_speech_tokenizer_config(directory))


def _llm_checkpoint(directory: Path) -> dict:
    from glmvoice.models.llm import llm_info
    from glmvoice.models.llm_checkpoint import load_config
    from glmvoice.models.text_tokenizer import TextTokenizer

    return llm_info(load_config(directory), TextTokenizer.from_directory(directory))


def _decoder_checkpoint(directory: Path) -> dict:
    from glmvoice.models.speech_decoder import read_decoder_config, speech_decoder_info

    return {"network": "speech_decoder", **speech_decoder_info(read_decoder_config(directory))}


PRESET_INFO = {"speech_tokenizer": _tokenizer_preset, "llm": _llm_preset, "speech_decoder": _decoder_preset}
CHECKPOINT_INFO = {"speech_tokenizer": _tokenizer_checkpoint, "llm": _llm_checkpoint, "speech_decoder": _decoder_checkpoint}


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        if not args.checkpoint.is_dir():
            raise FileNotFoundError(f"{args.checkpoint} is not a directory")
        info = {"checkpoint": str(args.checkpoint), **CHECKPOINT_INFO[detect_network(args.checkpoint)](args.checkpoint)}
    else:
        networks = [args.network] if args.network else list(PRESET_INFO)
        info = {"preset": args.preset, "networks": {n: PRESET_INFO[n](args.preset) for n in networks}}
    print(json.dumps(info, indent=2))
    return 0
