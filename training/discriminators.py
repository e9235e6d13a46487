"""HiFT's discriminators and the GAN objective its vocoder trains with (training only: serving never loads them).

HiFi-GAN's pair: the multi-period discriminator (the waveform folded into [S / p, p] for periods 2, 3, 5, 7,
11, so each sub-discriminator sees samples p apart: periodic structure) and the multi-scale discriminator
(grouped 1-D convs over the waveform, then over it average-pooled x2 and x4: structure over longer spans).
Weight norm on every conv but the raw scale's, which HiFi-GAN gives spectral norm. The "full" size has
HiFi-GAN's channels (41 M + 29 M parameters); "tiny" keeps the layout with narrow convs to train on CPU.
CosyVoice pairs the period discriminator with a multi-resolution spectrogram discriminator instead; tried here
in UnivNet's layout at the tiny width, its 2-D convs over whole spectrograms cost more than twice the scale
discriminator on CPU.

Objective, as HiFi-GAN: least squares (the discriminator pushes real logits to 1 and generated ones to 0, the
generator pushes its logits to 1) and feature matching (L1 between the discriminator's feature maps of real
and generated audio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

# logits per sub-discriminator, and each one's feature maps (every conv's activation, the logits' included)
DiscriminatorOutput = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


@dataclass(frozen=True)
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    # HiFi-GAN's period convs: (5, 1) kernels, stride 3 along time in all but the last.
    period_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    scales: int = 3  # the waveform, then average-pooled x2, x4
    # HiFi-GAN's scale convs: kernels, strides and groups in SCALE_LAYERS.
    scale_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)
    lrelu_slope: float = 0.1

    @classmethod
    def from_name(cls, name: str) -> DiscriminatorConfig:
        if name not in discriminator_sizes:
            raise ValueError(f"unknown discriminator size {name!r}; known: {sorted(discriminator_sizes)}")
        return cls(**discriminator_sizes[name])


discriminator_sizes: dict[str, dict] = {
    "full": {},
    "tiny": {"period_channels": (8, 16, 32, 32, 32), "scale_channels": (16, 16, 32, 32, 32, 32, 32)},
}
SCALE_LAYERS = ((15, 1, 1), (41, 2, 4), (41, 2, 16), (41, 4, 16), (41, 4, 16), (41, 1, 16), (5, 1, 1))  # kernel, stride, groups


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, channels: tuple[int, ...], lrelu_slope: float):
        super().__init__()
        self.period, self.lrelu_slope = period, lrelu_slope
        widths = (1, *channels)
        strides = [3] * (len(channels) - 1) + [1]
        self.convs = nn.ModuleList(weight_norm(nn.Conv2d(c_in, c_out, (5, 1), (s, 1), padding=(2, 0)))
                                   for c_in, c_out, s in zip(widths, widths[1:], strides))
        self.conv_post = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # audio [B, S] -> logits [B, N], feature maps [B, C, ~S / (p 3^k), p]
        return _conv_stack(fold(audio, self.period), self.convs, self.conv_post, self.lrelu_slope)


def fold(audio: torch.Tensor, period: int) -> torch.Tensor:
    """audio [B, S] -> [B, 1, ceil(S / p), p], row i holding samples i p .. i p + p - 1; a partial last row is
    completed by reflection, as HiFi-GAN pads."""
    tail = -audio.shape[-1] % period
    x = F.pad(audio.unsqueeze(1), (0, tail), mode="reflect") if tail else audio.unsqueeze(1)
    return x.view(audio.shape[0], 1, -1, period)


class ScaleDiscriminator(nn.Module):
    def __init__(self, channels: tuple[int, ...], lrelu_slope: float, norm: Callable[[nn.Module], nn.Module]):
        super().__init__()
        self.lrelu_slope = lrelu_slope
        widths = (1, *channels)
        self.convs = nn.ModuleList(norm(nn.Conv1d(c_in, c_out, k, stride, padding=k // 2, groups=groups))
                                   for c_in, c_out, (k, stride, groups) in zip(widths, widths[1:], SCALE_LAYERS))
        self.conv_post = norm(nn.Conv1d(channels[-1], 1, 3, padding=1))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # audio [B, S] -> logits [B, N], feature maps [B, C, ~S / 64]
        return _conv_stack(audio.unsqueeze(1), self.convs, self.conv_post, self.lrelu_slope)


def _conv_stack(x: torch.Tensor, convs: nn.ModuleList, conv_post: nn.Module,
                slope: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), slope)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return x.flatten(1), features


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, cfg.period_channels, cfg.lrelu_slope) for p in cfg.periods)

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        return _gather(self.discriminators, audio)


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        norms = [spectral_norm] + [weight_norm] * (cfg.scales - 1)
        self.discriminators = nn.ModuleList(ScaleDiscriminator(cfg.scale_channels, cfg.lrelu_slope, norm) for norm in norms)
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        logits, features = [], []
        for index, discriminator in enumerate(self.discriminators):
            if index:
                audio = self.pool(audio.unsqueeze(1)).squeeze(1)
            scale_logits, scale_features = discriminator(audio)
            logits.append(scale_logits)
            features.append(scale_features)
        return logits, features


def _gather(discriminators: nn.ModuleList, audio: torch.Tensor) -> DiscriminatorOutput:
    outputs = [d(audio) for d in discriminators]
    return [logits for logits, _ in outputs], [features for _, features in outputs]


class HiFTDiscriminator(nn.Module):
    """Both discriminators: audio [B, S] -> the period sub-discriminators' outputs, then the scales'."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        self.mpd = MultiPeriodDiscriminator(cfg)
        self.msd = MultiScaleDiscriminator(cfg)

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        period_logits, period_features = self.mpd(audio)
        scale_logits, scale_features = self.msd(audio)
        return period_logits + scale_logits, period_features + scale_features


def discriminator_loss(real_logits: list[torch.Tensor], generated_logits: list[torch.Tensor]) -> torch.Tensor:
    """Least squares, summed over sub-discriminators: real towards 1, generated towards 0."""
    return sum(torch.mean((1 - real) ** 2) + torch.mean(generated ** 2)
               for real, generated in zip(real_logits, generated_logits))


def generator_adversarial_loss(generated_logits: list[torch.Tensor]) -> torch.Tensor:
    """Least squares, summed over sub-discriminators: the generator wants its audio judged real (1)."""
    return sum(torch.mean((1 - generated) ** 2) for generated in generated_logits)


def feature_matching_loss(real_features: list[list[torch.Tensor]],
                          generated_features: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean L1 between real and generated feature maps, summed over every map of every sub-discriminator."""
    return sum(F.l1_loss(generated, real.detach())
               for reals, generateds in zip(real_features, generated_features) for real, generated in zip(reals, generateds))
