"""Random tiny checkpoints of the three networks in the published layouts, for tests and benchmarks (timing
and parity do not depend on trained weights). Trained tiny checkpoints come from training.tiny."""

from __future__ import annotations

from pathlib import Path

import torch

from glmvoice.models.llm import GLMConfig, Transformer, pad_vocab
from glmvoice.models.llm_checkpoint import save_llm
from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder, save_speech_decoder
from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
from glmvoice.models.speech_tokenizer_checkpoint import save_speech_tokenizer
from training.bpe_tokenizer import TINY_TOKENIZER, build_tiny_tokenizer


def write_tiny_checkpoint(directory: str | Path, seed: int = 0, init_std: float = 0.1) -> Path:
    """A random tiny LM with our tiny tokenizer, in the published layout (several shards).

    The vocabulary is the tiny tokenizer's (text BPE + specials + the tiny speech codebook), padded to
    a multiple of 128. Weights are drawn with a std large enough that attention is far from uniform,
    which keeps parity tests sensitive to the attention, rotary and MLP details.
    """
    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(directory, **TINY_TOKENIZER)
    config = GLMConfig.from_name("tiny", vocab_size=pad_vocab(tokenizer.vocab_size))
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(init_std * torch.randn(param.shape, generator=generator))
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    save_llm(model, directory, max_shard_bytes=total // 3 + 1, tokenizer=tokenizer)
    return directory



def write_tiny_speech_tokenizer(directory: str | Path, seed: int = 0) -> Path:
    """A random tiny speech tokenizer: config.json, preprocessor_config.json and model.safetensors."""
    model = SpeechTokenizerModel(SpeechTokenizerConfig.from_name("tiny"))
    model.init_random_weights(torch.Generator().manual_seed(seed))
    save_speech_tokenizer(model, Path(directory))
    return Path(directory)


def write_tiny_speech_decoder(directory: str | Path, seed: int = 0) -> Path:
    """A random tiny speech decoder: config.yaml (HyperPyYAML tags), flow.pt and hift.pt."""
    return save_speech_decoder(build_speech_decoder(DecoderConfig.from_name("tiny"), seed=seed), Path(directory))
