"""Speech tokenizer network: Whisper encoder with causal convolutions, block-causal attention,
average pooling and a VQ bottleneck (GLM-4-Voice's WhisperVQEncoder, encoder part only).

Shapes: B batch, M mel bins, T mel frames (100 Hz), S encoder frames (T / 2, 50 Hz),
N tokens (S / pooling_kernel_size, 12.5 Hz), C d_model, H heads, D head dim.

Block-causal attention: frame s sees every frame of its own attention block and of all earlier
blocks. With left-padded (causal) convolutions this makes a block's codes independent of anything
after the block, so encoding block by block with a cache (`encode_chunk`) equals encoding the
whole segment at once (`forward`).

Checkpoint files: config.json / preprocessor_config.json are read and written here (the config maps
1:1 onto the published WhisperVQConfig); weights in glmvoice.models.speech_tokenizer_checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glmvoice.models.common import build_on_meta, count_parameters


@dataclass
class SpeechTokenizerConfig:
    # Field names are the published config.json's (WhisperVQConfig) so a checkpoint's config maps 1:1.
    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    encoder_layers: int = 32  # depth of the Whisper it was cut from; only quantize_position layers exist
    max_source_positions: int = 1500
    pooling_kernel_size: int = 4
    pooling_type: str = "avg"
    pooling_position: int = 16
    quantize_position: int = 16
    quantize_vocab_size: int = 16384
    quantize_causal_block_size: int | None = 200  # in encoder frames (50 Hz), i.e. before pooling
    quantize_ema_decay: float | None = 0.99
    quantize_encoder_only: bool = True
    quantize_causal_encoder: bool = False
    encoder_causal_attention: bool = False
    encoder_causal_convolution: bool = True
    activation_function: str = "gelu"
    # Feature extraction (preprocessor_config.json of the same directory).
    sampling_rate: int = 16000
    hop_length: int = 160
    n_fft: int = 400
    chunk_length: int = 30  # seconds per segment, as the official extract_speech_token cuts long audio
    extra: dict = field(default_factory=dict, repr=False)  # other config.json fields, written back unchanged

    def __post_init__(self):
        if not self.encoder_causal_convolution:
            raise ValueError("only causal convolutions (encoder_causal_convolution: true) are supported")
        if self.pooling_type not in POOLING:
            raise ValueError(f"pooling_type {self.pooling_type!r} not in {sorted(POOLING)}")
        if not 0 < self.pooling_position <= self.quantize_position:
            raise ValueError("need 0 < pooling_position <= quantize_position")
        if self.d_model % self.encoder_attention_heads:
            raise ValueError("d_model must be divisible by encoder_attention_heads")
        if self.attention_block not in (None, 1) and self.attention_block % self.pooling_kernel_size:
            raise ValueError("quantize_causal_block_size must be a multiple of pooling_kernel_size")

    @property
    def attention_block(self) -> int | None:
        """Attention block in encoder frames (None: full attention). Causal attention is a block of one frame."""
        if self.encoder_causal_attention or self.quantize_causal_encoder:
            return 1
        return self.quantize_causal_block_size

    @property
    def stream_unit(self) -> int | None:
        """Encoder frames a stream encodes at once: whole attention blocks and whole tokens."""
        block = self.attention_block
        return None if block is None else math.lcm(block, self.pooling_kernel_size)

    @property
    def samples_per_token(self) -> int:
        return self.hop_length * CONV_STRIDE * self.pooling_kernel_size

    @property
    def token_rate(self) -> float:
        return self.sampling_rate / self.samples_per_token

    @property
    def segment_samples(self) -> int:
        return self.chunk_length * self.sampling_rate

    @classmethod
    def from_name(cls, name: str) -> SpeechTokenizerConfig:
        if name not in transformer_configs:
            raise ValueError(f"unknown speech tokenizer preset {name!r}; choose from {sorted(transformer_configs)}")
        return cls(**transformer_configs[name])


transformer_configs: dict[str, dict[str, Any]] = {
    # Whisper-large-v3 encoder cut after 16 of 32 layers (glm-4-voice-tokenizer config.json).
    "glm-4-voice": dict(),
    # Random-weight stand-in for tests: same structure, 0.8 s attention blocks so short clips span several.
    "tiny": dict(
        num_mel_bins=80, d_model=128, encoder_attention_heads=4, encoder_ffn_dim=512, encoder_layers=4,
        pooling_position=2, quantize_position=2, quantize_vocab_size=1024, quantize_causal_block_size=40,
    ),
    # whisper-base's encoder (training.whisper_init loads its weights) cut after four of its six layers, 4 s
    # attention blocks as published: the demo's tokenizer. After four layers, not six: trained frozen, codes of
    # the sixth layer's states read back worse (CTC WER on unseen flite voices 69 % vs 30 %, 300 steps).
    "whisper-base": dict(
        num_mel_bins=80, d_model=512, encoder_attention_heads=8, encoder_ffn_dim=2048, encoder_layers=6,
        pooling_position=4, quantize_position=4, quantize_vocab_size=1024, quantize_causal_block_size=200,
    ),
}

CONV_STRIDE = 2  # conv1 stride 1 x conv2 stride 2: 100 Hz mel -> 50 Hz encoder frames
CONV_KERNEL = 3
POOLING: dict[str, Callable[[Tensor, int], Tensor]] = {"avg": F.avg_pool1d, "max": F.max_pool1d}


def block_causal_mask(valid: Tensor, block: int | None, offset: int = 0) -> Tensor:
    """valid: [B, S] bool -> attention mask [B, 1, S, S] (True = may attend) for frames offset..offset+S-1.

    Query q sees key k when k's block is not after q's block (same rule as the published tril | block_diag)
    and k is not padding. No block size means full attention.
    """
    positions = torch.arange(valid.shape[1], device=valid.device) + offset
    if block is None:
        allowed = torch.ones(valid.shape[1], valid.shape[1], dtype=torch.bool, device=valid.device)
    else:
        blocks = torch.div(positions, block, rounding_mode="floor")
        allowed = blocks[None, :] <= blocks[:, None]  # [S_q, S_k]
    return (allowed[None] & valid[:, None, :])[:, None]


def vector_quantize(x: Tensor, codebook: Tensor) -> Tensor:
    """x: [B, N, C], codebook: [V, C] -> codes [B, N]: argmin of squared L2 distance (published formula)."""
    flat = x.reshape(-1, x.shape[-1])
    base = codebook.pow(2).sum(1)[None, :] + flat.pow(2).sum(1, keepdim=True)
    distances = torch.addmm(base, flat, codebook.t(), alpha=-2.0, beta=1.0)  # [B*N, V]
    return distances.argmin(dim=1).reshape(x.shape[:2])


class Attention(nn.Module):
    def __init__(self, config: SpeechTokenizerConfig):
        super().__init__()
        self.n_head = config.encoder_attention_heads
        self.head_dim = config.d_model // self.n_head
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model, bias=False)  # Whisper's keys carry no bias
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # x: [B, S, C]; mask: [B, 1, S, S_past + S]; past: keys/values [B, H, S_past, D] of earlier blocks
        bsz, seqlen, _ = x.shape
        q, k, v = (proj(x).view(bsz, seqlen, self.n_head, self.head_dim).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, S, D]
        return self.out_proj(y.transpose(1, 2).reshape(bsz, seqlen, -1)), (k, v)


class EncoderLayer(nn.Module):
    def __init__(self, config: SpeechTokenizerConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, mask: Tensor, past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, kv = self.self_attn(self.self_attn_layer_norm(x), mask, past)
        x = x + h
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)))), kv


@dataclass
class EncoderCache:
    """What a stream carries between chunks: conv left context and each layer's keys/values."""

    mel_tail: Tensor  # [B, M, 2]: last mel frames, conv1's left context
    conv_tail: Tensor  # [B, C, 2]: last gelu(conv1) frames, conv2's left context
    kv: list[tuple[Tensor, Tensor] | None]  # per layer: keys, values [B, H, S_seen, D]
    position: int = 0  # encoder frames consumed


class SpeechTokenizerModel(nn.Module):
    ema_count: Tensor  # [codebook] EMA buffers, as published
    ema_weight: Tensor  # [codebook, C]

    def __init__(self, config: SpeechTokenizerConfig):
        super().__init__()
        self.config = config
        c = config
        self.conv1 = nn.Conv1d(c.num_mel_bins, c.d_model, CONV_KERNEL)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, CONV_KERNEL, stride=CONV_STRIDE)
        self.embed_positions = nn.Embedding(c.max_source_positions, c.d_model)
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.quantize_position))
        self.codebook = nn.Embedding(c.quantize_vocab_size, c.d_model)
        # Positions of the quantized sequence: the published model adds them to the codebook vectors it
        # hands to the layers after the bottleneck (the ASR half used in training). Codes do not depend on it;
        # `dequantize` reproduces that output.
        self.embed_positions2 = nn.Embedding(math.ceil(c.max_source_positions / c.pooling_kernel_size), c.d_model)
        # EMA state of the codebook (training only), kept because the published file carries it.
        self.register_buffer("ema_count", torch.ones(c.quantize_vocab_size))
        self.register_buffer("ema_weight", torch.zeros(c.quantize_vocab_size, c.d_model))

    def init_random_weights(self, generator: torch.Generator | None = None) -> None:
        """Random init for test checkpoints: Whisper's sinusoidal positions, codebook initialised as published
        (EMA weight = codebook, counts 1). Weights at std 0.1 keep the audio's share of the hidden states large
        enough against the positions that random codes still follow the audio."""
        c = self.config
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.normal_(module.weight, std=0.1, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.embed_positions.weight.copy_(sinusoids(c.max_source_positions, c.d_model))
            self.embed_positions2.weight.copy_(self.embed_positions.weight[: self.embed_positions2.num_embeddings])
            nn.init.normal_(self.codebook.weight, generator=generator)
            self.ema_weight.copy_(self.codebook.weight)
            self.ema_count.fill_(1.0)

    def _conv_stem(self, mel: Tensor, mel_tail: Tensor, conv_tail: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # mel: [B, M, T] with T even; tails: the two frames before mel / before conv1's output (zeros at the start)
        x = torch.cat([mel_tail, mel], dim=2)
        h = F.gelu(self.conv1(x))  # [B, C, T]
        h2 = torch.cat([conv_tail, h], dim=2)
        out = F.gelu(self.conv2(h2))  # [B, C, T / 2]
        return out.transpose(1, 2), x[:, :, -(CONV_KERNEL - 1):], h2[:, :, -(CONV_KERNEL - 1):]

    def _pool(self, x: Tensor) -> Tensor:
        # x: [B, S, C] -> [B, ceil(S / k), C]; a ragged tail is zero-padded as in the published model
        k = self.config.pooling_kernel_size
        x = F.pad(x.transpose(1, 2), (0, -x.shape[1] % k))
        return POOLING[self.config.pooling_type](x, k).transpose(1, 2)

    def _layers(self, x: Tensor, valid: Tensor, offset: int, cache: EncoderCache | None) -> Tensor:
        # x: [B, S, C] encoder frames from `offset`, valid: [B, S] -> pooled states [B, N, C]
        c = self.config
        k = c.pooling_kernel_size
        block = c.attention_block
        mask = self._mask(valid, block, offset, cache, 0)
        for idx, layer in enumerate(self.layers):
            past = cache.kv[idx] if cache is not None else None
            x, kv = layer(x, mask, past)
            if cache is not None:
                cache.kv[idx] = kv
            if idx + 1 == c.pooling_position:
                x, valid, offset = self._pool(x), valid[:, ::k], offset // k
                mask = self._mask(valid, None if block is None else max(1, block // k), offset, cache, idx + 1)
        return x

    def _mask(self, valid: Tensor, block: int | None, offset: int, cache: EncoderCache | None, layer: int) -> Tensor:
        mask = block_causal_mask(valid, block, offset)
        past = cache.kv[layer] if cache is not None and layer < len(cache.kv) else None
        if past is None:
            return mask
        # Earlier chunks ended on block boundaries and were never padding: every cached frame is visible.
        seen = past[0].shape[2]
        return torch.cat([mask.new_ones(*mask.shape[:3], seen), mask], dim=3)

    def forward(self, mel: Tensor, frame_mask: Tensor) -> Tensor:
        """mel: [B, M, T] log-mel of whole segments; frame_mask: [B, T] (1 = real audio) -> codes [B, N]."""
        return vector_quantize(self.hidden(mel, frame_mask), self.codebook.weight)

    def hidden(self, mel: Tensor, frame_mask: Tensor) -> Tensor:
        """The pooled states the VQ bottleneck quantizes: [B, N, C]."""
        bsz = mel.shape[0]
        zeros_mel = mel.new_zeros(bsz, mel.shape[1], CONV_KERNEL - 1)
        zeros_conv = mel.new_zeros(bsz, self.config.d_model, CONV_KERNEL - 1)
        x, _, _ = self._conv_stem(mel, zeros_mel, zeros_conv)
        x = x + self.embed_positions.weight[: x.shape[1]]
        valid = frame_mask[:, ::CONV_STRIDE].bool()
        return self._layers(x, valid, 0, None)

    def setup_caches(self, batch_size: int = 1) -> EncoderCache:
        """An empty streaming cache (one per stream); `encode_chunk` fills it."""
        p = self.embed_positions.weight
        return EncoderCache(
            mel_tail=p.new_zeros(batch_size, self.config.num_mel_bins, CONV_KERNEL - 1),
            conv_tail=p.new_zeros(batch_size, self.config.d_model, CONV_KERNEL - 1),
            kv=[None] * len(self.layers),
        )

    def encode_chunk(self, mel: Tensor, cache: EncoderCache, frame_mask: Tensor | None = None) -> Tensor:
        """mel: [B, M, T] the next whole attention blocks of a segment (or its padded tail) -> codes [B, N].

        Chunks must end on attention-block boundaries except the last one of a segment, which may carry
        padding (frame_mask zero); after that chunk the cache is spent.
        """
        if self.config.attention_block is None:
            raise ValueError("full attention sees the whole segment: it cannot be encoded in chunks")
        x, cache.mel_tail, cache.conv_tail = self._conv_stem(mel, cache.mel_tail, cache.conv_tail)
        start = cache.position
        if start + x.shape[1] > self.config.max_source_positions:
            raise ValueError(f"segment longer than {self.config.max_source_positions} encoder frames")
        x = x + self.embed_positions.weight[start: start + x.shape[1]]
        if frame_mask is None:
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            valid = frame_mask[:, ::CONV_STRIDE].bool()
        x = self._layers(x, valid, start, cache)
        cache.position = start + valid.shape[1]
        return vector_quantize(x, self.codebook.weight)

    def dequantize(self, codes: Tensor) -> Tensor:
        """codes: [B, N] -> [B, N, C]: the published encoder's output when quantize_position is its last layer."""
        return self.codebook(codes) + self.embed_positions2.weight[: codes.shape[1]]


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed positional embedding: [length, channels] = [sin | cos]."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


# --- config files of a checkpoint directory, and facts for `glmvoice info` ---------------------------------
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
_FEATURE_FIELDS = ("sampling_rate", "hop_length", "n_fft", "chunk_length")  # from preprocessor_config.json

# Bookkeeping fields of the published config.json that the network does not read; written into our own
# directories so that Whisper-aware tools (transformers' WhisperConfig, the official loader) open them too.
PUBLISHED_CONFIG_EXTRAS = {
    "architectures": ["WhisperVQEncoder"],
    "model_type": "whisper",
    "torch_dtype": "float32",
    "scale_embedding": False,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "skip_language_detection": True,
}


def config_from_json(config: dict, preprocessor: dict) -> SpeechTokenizerConfig:
    names = {f.name for f in fields(SpeechTokenizerConfig)} - {"extra", *_FEATURE_FIELDS}
    known = {k: v for k, v in config.items() if k in names}
    extra = {k: v for k, v in config.items() if k not in names}
    # A key missing from preprocessor_config.json takes WhisperFeatureExtractor's default, as transformers does.
    defaults = {f.name: f.default for f in fields(SpeechTokenizerConfig) if f.name in _FEATURE_FIELDS}
    features = {k: preprocessor.get(k, defaults[k]) for k in _FEATURE_FIELDS}
    result = SpeechTokenizerConfig(**known, **features, extra=extra)
    if preprocessor.get("feature_size", result.num_mel_bins) != result.num_mel_bins:
        raise ValueError(f"preprocessor feature_size {preprocessor['feature_size']} != num_mel_bins {result.num_mel_bins}")
    return result


def config_json(config: SpeechTokenizerConfig) -> dict:
    ours = {k: v for k, v in asdict(config).items() if k not in ("extra", *_FEATURE_FIELDS)}
    return {**PUBLISHED_CONFIG_EXTRAS, **config.extra, **ours}


def preprocessor_json(config: SpeechTokenizerConfig) -> dict:
    """The WhisperFeatureExtractor keys, as in Whisper-large-v3's preprocessor_config.json."""
    return {
        "chunk_length": config.chunk_length,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": config.num_mel_bins,
        "hop_length": config.hop_length,
        "n_fft": config.n_fft,
        "n_samples": config.segment_samples,
        "nb_max_frames": config.segment_samples // config.hop_length,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": config.sampling_rate,
    }


def read_speech_tokenizer_config(directory: str | Path) -> SpeechTokenizerConfig:
    directory = Path(directory)
    for name in (CONFIG_NAME, PREPROCESSOR_NAME):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory}: no {name} (expected a glm-4-voice-tokenizer directory)")
    return config_from_json(json.loads((directory / CONFIG_NAME).read_text()),
                            json.loads((directory / PREPROCESSOR_NAME).read_text()))


def speech_tokenizer_info(config: SpeechTokenizerConfig) -> dict:
    """Facts for `glmvoice info`; parameters are counted on the meta device (nothing allocated)."""
    block = config.attention_block
    return {
        "network": "speech_tokenizer",
        "parameters": count_parameters(build_on_meta(lambda: SpeechTokenizerModel(config))),
        "codebook_size": config.quantize_vocab_size,
        "sample_rate": config.sampling_rate,
        "token_rate_hz": config.token_rate,
        "num_mel_bins": config.num_mel_bins,
        "layers": config.quantize_position,
        "attention_block_s": None if block is None else block * CONV_STRIDE * config.hop_length / config.sampling_rate,
    }
