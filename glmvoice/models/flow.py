"""The flow model of the speech decoder: speech codes -> 80-bin mel at 22050 Hz / hop 256.

CosyVoice `MaskedDiffWithXvec` as configured by glm-4-voice-decoder: token embedding, block conformer encoder
(flow_encoder.py), projection to 80, length regulation to the mel rate (nearest interpolation + convs), then
conditional flow matching: Euler steps on a cosine time grid with the U-Net estimator (flow_estimator.py) and
classifier-free guidance. Mel frames for n tokens = int(n / input_frame_rate * sample_rate / hop).

`encode` and `sample` are separate so a stream can encode a token window and sample only the frames it needs.
Noise is an argument: callers own reproducibility (the reference reseeds 42 on every call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from glmvoice.models.flow_encoder import BlockConformerEncoder, EncoderConfig
from glmvoice.models.flow_estimator import ConditionalDecoder, EstimatorConfig, masked_group_norm


@dataclass
class FlowConfig:
    vocab_size: int = 16384
    input_size: int = 512
    output_size: int = 80  # mel bins
    spk_embed_dim: int = 192
    input_frame_rate: float = 12.5
    sample_rate: int = 22050
    hop_length: int = 256
    regulator_ratios: int = 4  # conv + GroupNorm + Mish layers of the length regulator
    sigma_min: float = 1e-6
    t_scheduler: str = "cosine"
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10  # hard-coded in the reference's flow, not in its config
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)

    @classmethod
    def from_name(cls, name: str) -> FlowConfig:
        if name not in transformer_configs:
            raise ValueError(f"unknown flow preset {name!r}; known: {sorted(transformer_configs)}")
        return from_dict(transformer_configs[name])

    def mel_frames(self, n_tokens: int) -> int:
        """Mel frames covering the first n tokens (the reference's int(), so the grid is global)."""
        return int(n_tokens / self.input_frame_rate * self.sample_rate / self.hop_length)


def from_dict(d: dict) -> FlowConfig:
    d = dict(d)
    enc = EncoderConfig(**d.pop("encoder", {}))
    est = EstimatorConfig(**d.pop("estimator", {}))
    return FlowConfig(**d, encoder=enc, estimator=est)


transformer_configs: dict[str, dict] = {
    "glm-4-voice": {},
    "tiny": {
        "vocab_size": 1024,
        "input_size": 64,
        "spk_embed_dim": 16,
        "regulator_ratios": 2,
        "encoder": {"input_size": 64, "output_size": 64, "attention_heads": 2, "linear_units": 128, "num_blocks": 2},
        "estimator": {"channels": [32, 32], "attention_head_dim": 16, "n_blocks": 1, "num_mid_blocks": 1, "num_heads": 2},
    },
}
# The demo's: the tiny layout, wider and deeper (the tiny flow's mels of answers stayed babble).
transformer_configs["demo"] = {
    **transformer_configs["tiny"],
    "input_size": 128,
    "encoder": {"input_size": 128, "output_size": 128, "attention_heads": 4, "linear_units": 256, "num_blocks": 3},
    "estimator": {"channels": [96, 96], "attention_head_dim": 32, "n_blocks": 1, "num_mid_blocks": 2, "num_heads": 2},
}


def nearest_indices(in_len: torch.Tensor, out_len: torch.Tensor, t_out: int) -> torch.Tensor:
    """Per-item `F.interpolate(mode="nearest")` source indices: [B, t_out] (float32 scale, as PyTorch computes it)."""
    scale = in_len.float() / out_len.float().clamp(min=1)
    dst = torch.arange(t_out, device=in_len.device, dtype=torch.float32)
    src = torch.floor(dst[None, :] * scale[:, None]).long()
    return torch.minimum(src, (in_len[:, None] - 1).clamp(min=0))


class InterpolateRegulator(nn.Module):
    """Stretches token features to mel frames; `model.{3i}` conv, `model.{3i+1}` GroupNorm(1), Mish, last 1x1 conv."""

    def __init__(self, channels: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        mods.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.ModuleList(mods)

    def forward(self, h: torch.Tensor, h_lens: torch.Tensor, mel_lens: torch.Tensor) -> torch.Tensor:
        # h: [B, N, C] token features; -> [B, C, T] with T = max(mel_lens), zero past each mel_len
        t_out = int(mel_lens.max())
        idx = nearest_indices(h_lens, mel_lens, t_out)
        x = torch.gather(h, 1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1])).transpose(1, 2)
        mask = (torch.arange(t_out, device=h.device)[None, :] < mel_lens[:, None]).unsqueeze(1).to(h.dtype)
        for i in range(0, len(self.model) - 1, 3):
            x = F.mish(masked_group_norm(self.model[i](x * mask), mask, cast(nn.GroupNorm, self.model[i + 1])))
        return self.model[-1](x * mask) * mask


class ConditionalCFM(nn.Module):
    """Holds the estimator under the published name `decoder.estimator`."""

    def __init__(self, cfg: EstimatorConfig):
        super().__init__()
        self.estimator = ConditionalDecoder(cfg)


class Flow(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = BlockConformerEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.length_regulator = InterpolateRegulator(cfg.output_size, cfg.regulator_ratios)
        self.decoder = ConditionalCFM(cfg.estimator)

    def encode(self, tokens: torch.Tensor, token_lens: torch.Tensor, mel_lens: torch.Tensor) -> torch.Tensor:
        # tokens: [B, N] codes; -> mu [B, 80, max(mel_lens)], zero past each item's mel_len
        valid = (torch.arange(tokens.shape[1], device=tokens.device)[None, :] < token_lens[:, None]).unsqueeze(-1)
        x = self.input_embedding(tokens.clamp(min=0)) * valid
        h = self.encoder_proj(self.encoder(x, token_lens))
        return self.length_regulator(h, token_lens, mel_lens)

    def speaker(self, batch: int, device: torch.device) -> torch.Tensor:
        """The released decoder has one voice: its x-vector input is zeros, so only the affine bias remains."""
        xvec = torch.zeros(batch, self.cfg.spk_embed_dim, device=device)
        return self.spk_embed_affine_layer(F.normalize(xvec, dim=1))

    def time_grid(self, n_steps: int, device: torch.device) -> torch.Tensor:
        t = torch.linspace(0, 1, n_steps + 1, device=device)
        return 1 - torch.cos(t * 0.5 * math.pi) if self.cfg.t_scheduler == "cosine" else t

    def sample(
        self,
        mu: torch.Tensor,
        mel_lens: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor,
        n_steps: int | None = None,
        cfg_rate: float | None = None,
    ) -> torch.Tensor:
        # mu, cond, noise: [B, 80, T]; mel_lens: [B] -> mel [B, 80, T] (zero past mel_len)
        n_steps = self.cfg.n_timesteps if n_steps is None else n_steps
        cfg_rate = self.cfg.inference_cfg_rate if cfg_rate is None else cfg_rate
        b, _, t = mu.shape
        mask = (torch.arange(t, device=mu.device)[None, :] < mel_lens[:, None]).unsqueeze(1).to(mu.dtype)
        spks = self.speaker(b, mu.device)
        estimator = self.decoder.estimator
        if cfg_rate > 0:
            # Conditional and unconditional passes share one batch of 2B.
            mask2, mu2 = torch.cat([mask, mask]), torch.cat([mu, torch.zeros_like(mu)])
            spks2, cond2 = torch.cat([spks, torch.zeros_like(spks)]), torch.cat([cond, torch.zeros_like(cond)])
        x = noise * mask
        grid = self.time_grid(n_steps, mu.device)
        for step in range(n_steps):
            t_now, dt = grid[step], grid[step + 1] - grid[step]
            if cfg_rate > 0:
                v = estimator(torch.cat([x, x]), mask2, mu2, t_now.expand(2 * b), spks2, cond2)
                v = (1.0 + cfg_rate) * v[:b] - cfg_rate * v[b:]
            else:
                v = estimator(x, mask, mu, t_now.expand(b), spks, cond)
            x = x + dt * v
        return x * mask

    @torch.inference_mode()
    def inference(self, tokens: torch.Tensor, token_lens: torch.Tensor, noise: torch.Tensor, **kw) -> torch.Tensor:
        """Whole-utterance decode without a prompt: [B, N] codes -> mel [B, 80, T] (T frames per item's grid)."""
        mel_lens = torch.tensor([self.cfg.mel_frames(int(n)) for n in token_lens], device=tokens.device)
        mu = self.encode(tokens, token_lens, mel_lens)
        noise = noise[:, :, : mu.shape[-1]]
        return self.sample(mu, mel_lens, torch.zeros_like(mu), noise, **kw)
