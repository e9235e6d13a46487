"""The flow-matching estimator: Matcha-TTS `ConditionalDecoder`, a 1-D U-Net with transformer blocks.

Input channels are [x | mu | speaker | prompt cond] stacked (4 x 80 = 320); output is the velocity field over
80 mel bins. One downsampling by 2 (channels [256, 256]), `num_mid_blocks` middle blocks, `n_blocks`
transformer blocks after every resnet. Module names match the published flow.pt under `decoder.estimator.`.

Padding-exact on purpose: GroupNorm statistics and attention keys only count valid frames, and every conv sees
zeros past the end, so a padded batch item gives the same result as the item alone. (The reference adds its
0/1 mask to the attention scores and normalises over padding; with one unpadded item, as the reference always
runs, both are the same computation.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EstimatorConfig:
    in_channels: int = 320
    out_channels: int = 80
    channels: list[int] = field(default_factory=lambda: [256, 256])
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8


def masked_group_norm(x: torch.Tensor, mask: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm over valid frames only. x: [B, C, T]; mask: [B, 1, T] (1 = valid)."""
    b, c, t = x.shape
    g = norm.num_groups
    xg = x.view(b, g, c // g, t)
    m = mask.view(b, 1, 1, t)
    count = (m.sum(dim=(2, 3), keepdim=True) * (c // g)).clamp(min=1.0)
    mean = (xg * m).sum(dim=(2, 3), keepdim=True) / count
    var = (((xg - mean) * m) ** 2).sum(dim=(2, 3), keepdim=True) / count
    y = ((xg - mean) / torch.sqrt(var + norm.eps)).view(b, c, t)
    return y * norm.weight.view(1, c, 1) + norm.bias.view(1, c, 1)


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Matcha `SinusoidalPosEmb`: t [B] in [0, 1] -> [B, dim] as [sin | cos]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    arg = scale * t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t)))


class Block1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int = 8):
        super().__init__()
        # `block.0` conv, `block.1` GroupNorm, (`block.2` Mish has no weights)
        self.block = nn.ModuleList([nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = masked_group_norm(self.block[0](x * mask), mask, cast(nn.GroupNorm, self.block[1]))
        return F.mish(h) * mask


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = Block1D(dim, dim_out)
        self.block2 = Block1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T]; mask: [B, 1, T]; temb: [B, time_dim]
        h = self.block1(x, mask) + self.mlp(temb).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class Attention(nn.Module):
    """diffusers `Attention` names: to_q/to_k/to_v without bias, to_out.0 with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        # x: [B, T, dim]; key_valid: [B, 1, 1, T] bool
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class GELUProj(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # `net.0` GELU projection, `net.1` dropout (no weights), `net.2` output
        self.net = nn.ModuleList([GELUProj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), key_valid)
        return x + self.ff(self.norm3(x))


class Downsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _modules(stage: nn.Module) -> list[Any]:
    """A U-Net stage's modules [resnet, transformers, (down | up)]; stages are ModuleLists to keep the
    published key layout (down_blocks.0.1.0...), which the type checker cannot see through."""
    return list(cast(nn.ModuleList, stage))


class ConditionalDecoder(nn.Module):
    def __init__(self, cfg: EstimatorConfig):
        super().__init__()
        self.cfg = cfg
        ch = list(cfg.channels)
        time_dim = ch[0] * 4
        self.time_mlp = TimestepMLP(cfg.in_channels, time_dim)

        def transformers(dim: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(dim, cfg.num_heads, cfg.attention_head_dim) for _ in range(cfg.n_blocks))

        self.down_blocks = nn.ModuleList()
        out_ch = cfg.in_channels
        for i, c in enumerate(ch):
            in_ch, out_ch = out_ch, c
            last = i == len(ch) - 1
            down = nn.Conv1d(out_ch, out_ch, 3, padding=1) if last else Downsample1D(out_ch)
            self.down_blocks.append(nn.ModuleList([ResnetBlock1D(in_ch, out_ch, time_dim), transformers(out_ch), down]))
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock1D(ch[-1], ch[-1], time_dim), transformers(ch[-1])]) for _ in range(cfg.num_mid_blocks)
        )
        up_ch = ch[::-1] + [ch[0]]
        self.up_blocks = nn.ModuleList()
        for i in range(len(up_ch) - 1):
            out_ch = up_ch[i + 1]
            last = i == len(up_ch) - 2
            up = nn.Conv1d(out_ch, out_ch, 3, padding=1) if last else Upsample1D(out_ch)
            self.up_blocks.append(nn.ModuleList([ResnetBlock1D(up_ch[i] * 2, out_ch, time_dim), transformers(out_ch), up]))
        self.final_block = Block1D(up_ch[-1], up_ch[-1])
        self.final_proj = nn.Conv1d(up_ch[-1], cfg.out_channels, 1)

    @staticmethod
    def _transformers(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        key_valid = mask.unsqueeze(1) > 0  # [B, 1, 1, T]
        h = x.transpose(1, 2)
        for block in blocks:
            h = block(h, key_valid)
        return h.transpose(1, 2)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        # x, mu, cond: [B, 80, T]; mask: [B, 1, T]; t: [B]; spks: [B, 80] -> velocity [B, 80, T]
        temb = self.time_mlp(timestep_embedding(t, self.cfg.in_channels))
        h = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)
        skips, masks = [], [mask]
        for stage in self.down_blocks:
            resnet, blocks, down = _modules(stage)
            m = masks[-1]
            h = self._transformers(blocks, resnet(h, m, temb), m)
            skips.append(h)
            h = down(h * m)
            masks.append(m[:, :, ::2])
        masks = masks[:-1]
        m = masks[-1]
        for stage in self.mid_blocks:
            resnet, blocks = _modules(stage)
            h = self._transformers(blocks, resnet(h, m, temb), m)
        for stage in self.up_blocks:
            resnet, blocks, up = _modules(stage)
            m = masks.pop()
            skip = skips.pop()
            h = torch.cat([h[:, :, : skip.shape[-1]], skip], dim=1)
            h = self._transformers(blocks, resnet(h, m, temb), m)
            h = up(h * m)
        h = self.final_block(h, m)
        return self.final_proj(h * m) * mask
