"""Block conformer encoder of the flow model (CosyVoice `BlockConformerEncoder` as used by GLM-4-Voice).

Linear input layer, ESPnet relative positions, `num_blocks` pre-norm layers of block-causal relative-position
self-attention + SiLU FFN (no macaron FFN, no convolution module). A token sees every earlier token and the
rest of its own block of `block_size` tokens, so the encoding of finished blocks never changes when later
tokens arrive: streaming with a token window only loses the context that falls off the window's left edge.
Module names match the published flow.pt under the `encoder.` prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderConfig:
    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    block_size: int = 10


def rel_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ESPnet relative sinusoids for offsets +(T-1) .. -(T-1): [1, 2T-1, dim]. Computed, not stored (no state key)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / dim))
    positive = torch.zeros(length, dim, device=device)
    negative = torch.zeros(length, dim, device=device)
    positive[:, 0::2] = torch.sin(position * div_term)
    positive[:, 1::2] = torch.cos(position * div_term)
    negative[:, 0::2] = torch.sin(-position * div_term)
    negative[:, 1::2] = torch.cos(-position * div_term)
    pe = torch.cat([torch.flip(positive, [0]), negative[1:]], dim=0)
    return pe.unsqueeze(0).to(dtype)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL shift: scores over relative offsets [B, H, T, 2T-1] -> over key positions [B, H, T, T]."""
    b, h, t, p = x.shape
    padded = torch.cat([x.new_zeros(b, h, t, 1), x], dim=-1).view(b, h, p + 1, t)
    return padded[:, :, 1:].reshape(b, h, t, p)[:, :, :, : p // 2 + 1]


class InputLayer(nn.Module):
    """Linear + LayerNorm (`embed.out.0`, `embed.out.1`), then scaling by sqrt(d) as the positional encoder does."""

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.xscale


class BlockRelAttention(nn.Module):
    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.h, self.d_k = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        # x: [B, T, D]; allowed: [B, 1, T, T] bool; pos_emb: [1, 2T-1, D]
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        scores = ((ac + bd) / math.sqrt(self.d_k)).masked_fill(~allowed, float("-inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.self_attn = BlockRelAttention(cfg.attention_heads, cfg.output_size)
        self.feed_forward = FeedForward(cfg.output_size, cfg.linear_units)
        self.norm_mha = nn.LayerNorm(cfg.output_size, eps=1e-5)
        self.norm_ff = nn.LayerNorm(cfg.output_size, eps=1e-5)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), allowed, pos_emb)
        return x + self.feed_forward(self.norm_ff(x))


class BlockConformerEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = InputLayer(cfg.input_size, cfg.output_size)
        self.encoders = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_blocks))
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=1e-5)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: [B, T, input_size]; lengths: [B] -> [B, T, output_size]
        t = x.shape[1]
        idx = torch.arange(t, device=x.device)
        # Block-causal: key j is visible from query i when j lies before the end of i's block.
        block_end = (idx // self.cfg.block_size + 1) * self.cfg.block_size
        allowed = idx[None, :] < block_end[:, None]  # [T, T]
        valid = idx[None, :] < lengths[:, None]  # [B, T]
        allowed = (allowed[None] & valid[:, None, :]).unsqueeze(1)  # [B, 1, T, T]
        x = self.embed(x)
        pos_emb = rel_positions(t, self.cfg.output_size, x.device, x.dtype)
        for layer in self.encoders:
            x = layer(x, allowed, pos_emb)
        return self.after_norm(x)
