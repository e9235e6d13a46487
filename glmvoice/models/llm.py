"""The GLM-4 language model of GLM-4-Voice (ChatGLM architecture), gpt-fast style.

Pre-norm decoder: RMSNorm, grouped-query attention with a fused QKV projection (with bias), rotary
embedding on the first half of each head's dims in ChatGLM's interleaved-pair convention, SwiGLU MLP,
untied output layer. A static KV cache (`setup_caches`) serves prefill and one-token decode steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from glmvoice.models.common import build_on_meta, count_parameters


@dataclass(frozen=True)
class GLMConfig:
    n_layer: int
    dim: int
    n_head: int
    n_local_heads: int  # KV groups (ChatGLM multi_query_group_num)
    head_dim: int  # ChatGLM kv_channels
    intermediate_size: int  # SwiGLU width (ChatGLM ffn_hidden_size)
    vocab_size: int  # padded vocabulary (text + specials + speech tokens, rounded up)
    block_size: int = 8192  # trained sequence length
    norm_eps: float = 1.5625e-07
    rope_base: float = 10000.0
    rope_ratio: float = 1.0  # ChatGLM scales the base: base * rope_ratio
    qkv_bias: bool = True

    @property
    def rotary_dim(self) -> int:
        # ChatGLM builds RotaryEmbedding(kv_channels // 2): only the first half of each head rotates.
        return self.head_dim // 2

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, at 2 bytes (bf16) per value."""
        return 2 * self.n_layer * self.n_local_heads * self.head_dim * 2

    @classmethod
    def from_name(cls, name: str, **overrides) -> GLMConfig:
        if name not in transformer_configs:
            raise ValueError(f"unknown LM preset {name!r}; known: {sorted(transformer_configs)}")
        return replace(cls(**transformer_configs[name]), **overrides)


transformer_configs: dict[str, dict[str, Any]] = {
    "glm-4-voice": dict(
        n_layer=40, dim=4096, n_head=32, n_local_heads=2, head_dim=128, intermediate_size=13696,
        vocab_size=168960, block_size=8192, norm_eps=3.90625e-08, rope_ratio=1.0,
    ),
    # Tiny: same structure at test size. The written tiny checkpoint sets vocab_size from its own
    # tokenizer (text BPE + specials + 1024 speech tokens, padded to a multiple of 128).
    "tiny": dict(
        n_layer=3, dim=192, n_head=4, n_local_heads=2, head_dim=48, intermediate_size=512,
        vocab_size=1536, block_size=1024, norm_eps=1e-5, rope_ratio=1.0,
    ),
}


def pad_vocab(size: int, multiple: int = 128) -> int:
    return -(-size // multiple) * multiple


class KVCache(nn.Module):
    """Static cache: positions are written in place, attention reads the whole buffer under a mask."""

    k_cache: torch.Tensor  # [B, H_kv, S, D] buffers (declared for the type checker)
    v_cache: torch.Tensor

    def __init__(self, max_batch_size: int, max_seq_length: int, n_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (max_batch_size, n_heads, max_seq_length, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None, span: int | None = None):
        """k, v: [B, H_kv, T, D] -> this batch's caches up to position span, [B, H_kv, span, D].

        input_pos [T] with rows None: the batch is cache rows 0..B-1, all at the same positions.
        input_pos [B, T] with rows [B]: batch row b is cache row rows[b] at positions input_pos[b]
        (in-flight batching: each request owns a cache row and has its own length).
        """
        if rows is None:
            batch = k.shape[0]
            self.k_cache[:batch].index_copy_(2, input_pos, k.to(self.k_cache.dtype))
            self.v_cache[:batch].index_copy_(2, input_pos, v.to(self.v_cache.dtype))
            return self.k_cache[:batch, :, :span], self.v_cache[:batch, :, :span]
        # Advanced indices around a slice put their dims first: the target view is [B, T, H_kv, D].
        self.k_cache[rows[:, None], :, input_pos] = k.transpose(1, 2).to(self.k_cache.dtype)
        self.v_cache[rows[:, None], :, input_pos] = v.transpose(1, 2).to(self.v_cache.dtype)
        # Only positions below span can be attended: gathering the rest would copy empty cache.
        return self.k_cache[rows, :, :span], self.v_cache[rows, :, :span]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ChatGLM normalises in float32 and casts back only after the weight is applied.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * normed).to(x.dtype)


def rotary_table(config: GLMConfig, positions: torch.Tensor) -> torch.Tensor:
    """positions: [T] -> [T, rotary_dim // 2, 2] (cos, sin), as ChatGLM's rope cache."""
    base = config.rope_base * config.rope_ratio
    exponents = torch.arange(0, config.rotary_dim, 2, dtype=torch.float32, device=positions.device) / config.rotary_dim
    inv_freq = 1.0 / (base**exponents)
    angles = torch.outer(positions.float(), inv_freq)
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; table: [T, R/2, 2] or per row [B, T, R/2, 2].
    Rotates pairs (x[2i], x[2i+1]) of the first R dims; the rest pass."""
    rot = table.shape[-2] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    pairs = x_rot.float().reshape(*x_rot.shape[:-1], rot // 2, 2)  # [B, T, H, R/2, 2]
    table = table if table.dim() == 4 else table[None]  # [B or 1, T, R/2, 2]
    cos, sin = table[:, :, None, :, 0], table[:, :, None, :, 1]  # [B or 1, T, 1, R/2]
    rotated = torch.stack(
        [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1
    ).flatten(-2)
    return torch.cat([rotated.to(x.dtype), x_pass], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.n_head, self.n_local_heads, self.head_dim = config.n_head, config.n_local_heads, config.head_dim
        # Fused rows: all query heads, then the key groups, then the value groups (ChatGLM layout).
        qkv_rows = (config.n_head + 2 * config.n_local_heads) * config.head_dim
        self.wqkv = nn.Linear(config.dim, qkv_rows, bias=config.qkv_bias)
        self.wo = nn.Linear(config.n_head * config.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, table, mask: torch.Tensor | None, input_pos, cache, rows=None, span=None) -> torch.Tensor:
        # x: [B, T, C]; mask: [1 or B, 1, T, S] bool (True = attend), or None with cache None: plain
        # causal attention over these T tokens (training).
        bsz, seqlen, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_local_heads * self.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rotary(q.view(bsz, seqlen, self.n_head, self.head_dim), table)
        k = apply_rotary(k.view(bsz, seqlen, self.n_local_heads, self.head_dim), table)
        v = v.view(bsz, seqlen, self.n_local_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if cache is not None:
            k, v = cache.update(input_pos, k, v, rows, span)  # [B, H_kv, span, D]
        # Query head h reads KV group h // (n_head / n_local_heads): SDPA's grouped-query mode maps heads
        # exactly so without copying keys and values; the ONNX exporter lacks that mode, so it gets copies.
        gqa = not torch.onnx.is_in_onnx_export()
        if not gqa:
            groups = self.n_head // self.n_local_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)  # [B, H, T, D]
        return self.wo(y.transpose(1, 2).reshape(bsz, seqlen, q_size))


class FeedForward(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.w13 = nn.Linear(config.dim, 2 * config.intermediate_size, bias=False)  # rows: gate, then up
        self.w2 = nn.Linear(config.intermediate_size, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, table, mask, input_pos, cache, rows=None, span=None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), table, mask, input_pos, cache, rows, span)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    rope: torch.Tensor  # [S, R/2, 2] buffer, made by setup_caches
    causal_mask: torch.Tensor  # [S, S] buffer, made by setup_caches

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.kv_caches: nn.ModuleList | None = None
        self.max_batch_size = self.max_seq_length = -1

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype | None = None) -> None:
        if max_seq_length > self.config.block_size:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's {self.config.block_size}")
        if self.max_batch_size >= max_batch_size and self.max_seq_length >= max_seq_length:
            return
        device, dtype = self.output.weight.device, dtype or self.output.weight.dtype
        c = self.config
        self.kv_caches = nn.ModuleList(
            KVCache(max_batch_size, max_seq_length, c.n_local_heads, c.head_dim, dtype).to(device)
            for _ in range(c.n_layer)
        )
        positions = torch.arange(max_seq_length, device=device)
        self.register_buffer("rope", rotary_table(c, positions), persistent=False)  # [S, R/2, 2]
        causal = torch.tril(torch.ones(max_seq_length, max_seq_length, dtype=torch.bool, device=device))
        self.register_buffer("causal_mask", causal, persistent=False)  # [S, S]
        self.max_batch_size, self.max_seq_length = max_batch_size, max_seq_length

    def hidden_states(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None, rows=None) -> torch.Tensor:
        """idx: [B, T] -> final-norm hidden states [B, T, C].

        With input_pos the step reads and writes the KV cache: [T] positions shared by cache rows
        0..B-1, or [B, T] per-row positions with rows [B] naming each row's cache slot. Without it,
        the T tokens attend causally among themselves at positions 0..T-1 (training, no cache).
        """
        x = self.tok_embeddings(idx)
        if input_pos is None:
            table = rotary_table(self.config, torch.arange(idx.shape[1], device=idx.device))
            for layer in self.layers:
                x = layer(x, table, None, None, None)
            return self.norm(x)
        if self.kv_caches is None:
            raise RuntimeError("call setup_caches() before a cached forward")
        if (input_pos.dim() == 2) != (rows is not None):
            raise ValueError("per-row positions [B, T] go with rows [B], shared positions [T] without")
        # Attend only up to the furthest position in the batch, not the whole cache length.
        span = int(input_pos.max()) + 1
        mask = self.causal_mask[input_pos][..., :span].unsqueeze(-3)  # [1 or B, 1, T, span]
        if mask.dim() == 3:
            mask = mask[None]
        table = self.rope[input_pos]  # [T or B x T, R/2, 2]
        for layer, cache in zip(self.layers, self.kv_caches):
            x = layer(x, table, mask, input_pos, cache, rows, span)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor | None = None, rows=None) -> torch.Tensor:
        """idx: [B, T] -> logits [B, T, V] (float32); input_pos and rows as in hidden_states."""
        return self.output(self.hidden_states(idx, input_pos, rows)).float()

    @torch.inference_mode()
    def prefill(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """idx: [B, T] -> logits of the last position [B, V]; the output layer runs on that position only
        (all T positions would be T x 169k floats for the real vocabulary)."""
        return self.output(self.hidden_states(idx, input_pos)[:, -1]).float()

    @torch.inference_mode()
    def decode_one_token(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """idx: [B, 1]; input_pos: [1] -> logits [B, V]."""
        return self.output(self.hidden_states(idx, input_pos)[:, -1]).float()


def llm_info(config: GLMConfig, tokenizer=None) -> dict:
    """Facts for `glmvoice info`: parameters counted on the meta device, vocabulary and KV cache sizes."""
    info = {
        "network": "llm",
        "parameters": count_parameters(build_on_meta(lambda: Transformer(config))),
        "layers": config.n_layer,
        "hidden_size": config.dim,
        "attention_heads": config.n_head,
        "kv_groups": config.n_local_heads,
        "padded_vocab_size": config.vocab_size,
        "max_sequence_length": config.block_size,
        "kv_bytes_per_token_bf16": config.kv_bytes_per_token,
    }
    if tokenizer is not None:
        info.update(tokenizer.vocabulary_facts())
    return info
