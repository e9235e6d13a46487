"""HiFT vocoder (CosyVoice `HiFTGenerator`): neural source filter + HiFi-GAN upsampling + iSTFT head.

mel [B, 80, T] -> F0 (conv predictor) -> harmonic sine source at 22050 Hz -> its STFT is fused into a HiFi-GAN
upsampler (x8, x8, Snake resblocks) whose output is a magnitude/phase spectrum (n_fft 16, hop 4) turned into
samples by an inverse STFT: 256 samples per mel frame.

Differences from the reference, all for serving: weight norm is folded into plain conv weights at load (the
loader maps `weight_g`/`weight_v`); STFT/iSTFT are convolutions with DFT kernels (exportable to ONNX); the
source's random phases and noise and its starting phase are inputs, so a stream can continue the sine phase
across blocks and runs are reproducible; every layer masks past each item's length and the STFT reflects per
item, so a padded batch item equals the item alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class HiFTConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: list[int] = field(default_factory=lambda: [8, 8])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16])
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    source_resblock_kernel_sizes: list[int] = field(default_factory=lambda: [7, 11])
    source_resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 2)
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_cond_channels: int = 512
    f0_layers: int = 5

    @classmethod
    def from_name(cls, name: str) -> HiFTConfig:
        if name not in transformer_configs:
            raise ValueError(f"unknown HiFT preset {name!r}; known: {sorted(transformer_configs)}")
        return cls(**transformer_configs[name])

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * self.hop_len


transformer_configs: dict[str, dict] = {
    "glm-4-voice": {},
    "tiny": {
        "base_channels": 32,
        "f0_cond_channels": 32,
        "resblock_kernel_sizes": [3, 7],
        "resblock_dilation_sizes": [[1, 3], [1, 3]],
        "source_resblock_dilation_sizes": [[1, 3], [1, 3]],
    },
}
transformer_configs["demo"] = transformer_configs["tiny"]  # the demo decoder differs in its flow only


def length_mask(lengths: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """[B] -> [B, 1, t] with 1 on valid positions."""
    return (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1).to(dtype)


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.view(1, -1, 1)
        return x + torch.sin(x * alpha) ** 2 / (alpha + 1e-9)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + c2(a2(c1(a1(x)) * mask)) * mask
        return x


class F0Predictor(nn.Module):
    """ConvRNNF0Predictor: `condnet.{0,2,..}` convs with ELU between, then `classifier`; |output| in Hz."""

    def __init__(self, in_channels: int, channels: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Conv1d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.ModuleList(mods)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # mel: [B, 80, T]; mask: [B, 1, T] -> f0 [B, T]
        x = mel
        for i in range(0, len(self.condnet), 2):
            x = F.elu(self.condnet[i](x)) * mask
        return torch.abs(self.classifier(x.transpose(1, 2)).squeeze(-1)) * mask[:, 0]


class SourceModule(nn.Module):
    """Harmonic sine source merged to one excitation channel (`m_source.l_linear`)."""

    def __init__(self, harmonics: int):
        super().__init__()
        self.l_linear = nn.Linear(harmonics + 1, 1)

    def forward(self, sines: torch.Tensor) -> torch.Tensor:
        # sines: [B, H+1, S] -> [B, 1, S]
        return torch.tanh(self.l_linear(sines.transpose(1, 2))).transpose(1, 2)


def dft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hann-windowed forward DFT [2K, 1, N] and windowed inverse real DFT [2K, 1, N], K = N/2 + 1 (onesided)."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft  # [K, N]
    forward = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    weight = torch.full((n_fft // 2 + 1, 1), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    weight[-1] = 1.0
    inverse = torch.cat([weight * torch.cos(angle), -weight * torch.sin(angle)]) * window / n_fft
    return forward.float().unsqueeze(1), inverse.float().unsqueeze(1)


def reflect_pad(x: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pads each item at both ends of its own length: x [B, S] -> [B, S + 2 pad]."""
    pos = torch.arange(-pad, x.shape[1] + pad, device=x.device)[None, :].expand(x.shape[0], -1)
    last = (lengths[:, None] - 1).clamp(min=0)
    idx = torch.where(pos < 0, -pos, pos)
    idx = torch.where(idx > last, 2 * last - idx, idx)
    return torch.gather(x, 1, idx.clamp(0, x.shape[1] - 1))


class HiFT(nn.Module):
    stft_kernel: torch.Tensor  # buffers: STFT / iSTFT as convolutions
    istft_kernel: torch.Tensor
    window_sq: torch.Tensor

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.cfg = cfg
        base = cfg.base_channels
        self.m_source = SourceModule(cfg.nb_harmonics)
        self.conv_pre = nn.Conv1d(cfg.in_channels, base, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        spec_ch = cfg.n_fft + 2
        down_rates = [1] + cfg.upsample_rates[::-1][:-1]
        cum_rates = [math.prod(down_rates[: i + 1]) for i in range(len(down_rates))][::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(zip(cum_rates, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes)):
            ch = base // 2 ** (i + 1)
            conv = nn.Conv1d(spec_ch, ch, 1, 1) if u == 1 else nn.Conv1d(spec_ch, ch, u * 2, u, padding=u // 2)
            self.source_downs.append(conv)
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        )
        self.conv_post = nn.Conv1d(base // 2 ** len(self.ups), spec_ch, 7, 1, padding=3)
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels, cfg.f0_layers)
        stft_k, istft_k = dft_kernels(cfg.n_fft)
        # Derived constants, rebuilt at construction: kept out of the state_dict like the reference's window.
        self.register_buffer("stft_kernel", stft_k, persistent=False)
        self.register_buffer("istft_kernel", istft_k, persistent=False)
        self.register_buffer("window_sq", torch.hann_window(cfg.n_fft, periodic=True).pow(2).view(1, 1, -1), persistent=False)

    def sines(
        self, f0: torch.Tensor, sample_lens: torch.Tensor, phase0: torch.Tensor, rand_phase: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SineGen. f0: [B, T] Hz; phase0, rand_phase: [B, H+1] (cycles, radians); noise: [B, H+1, S] standard normal.
        Returns sines [B, H+1, S] and the cycles reached after each sample [B, H+1, S] (to continue a stream)."""
        cfg = self.cfg
        f0_up = torch.repeat_interleave(f0, cfg.samples_per_frame, dim=1).unsqueeze(1)  # [B, 1, S]
        harmonics = torch.arange(1, cfg.nb_harmonics + 2, device=f0.device, dtype=f0.dtype).view(1, -1, 1)
        step = (f0_up * harmonics / cfg.sampling_rate).double()
        cycles = torch.remainder(phase0.double().unsqueeze(-1) + torch.cumsum(step, dim=-1), 1.0).float()
        sine = cfg.nsf_alpha * torch.sin(2 * math.pi * cycles + rand_phase.unsqueeze(-1))
        uv = (f0_up > cfg.nsf_voiced_threshold).to(f0.dtype)
        noise_amp = uv * cfg.nsf_sigma + (1 - uv) * cfg.nsf_alpha / 3
        mask = length_mask(sample_lens, f0_up.shape[-1], f0.dtype)
        return (sine * uv + noise_amp * noise) * mask, cycles

    def stft(self, s: torch.Tensor, sample_lens: torch.Tensor) -> torch.Tensor:
        # s: [B, S] -> [B, n_fft + 2, S / hop + 1] (real rows, then imaginary rows)
        padded = reflect_pad(s, sample_lens, self.cfg.n_fft // 2).unsqueeze(1)
        return F.conv1d(padded, self.stft_kernel, stride=self.cfg.hop_len)

    def istft(self, spec: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # spec: [B, n_fft + 2, F] (real rows, imaginary rows), zero on padded frames -> [B, hop * (F - 1)]
        n_fft, hop = self.cfg.n_fft, self.cfg.hop_len
        y = F.conv_transpose1d(spec, self.istft_kernel, stride=hop)
        envelope = F.conv_transpose1d(frame_mask, self.window_sq, stride=hop)
        y = y / torch.where(envelope > 1e-11, envelope, torch.ones_like(envelope))
        return y[:, 0, n_fft // 2 : n_fft // 2 + hop * (spec.shape[-1] - 1)]

    def forward(
        self,
        mel: torch.Tensor,
        mel_lens: torch.Tensor,
        phase0: torch.Tensor,
        rand_phase: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # mel: [B, 80, T]; noise: [B, H+1, 256 T] -> audio [B, 256 T], cycles [B, H+1, 256 T]
        cfg = self.cfg
        t = mel.shape[-1]
        m = length_mask(mel_lens, t, mel.dtype)
        mel = mel * m
        f0 = self.f0_predictor(mel, m)
        sample_lens = mel_lens * cfg.samples_per_frame
        sines, cycles = self.sines(f0, sample_lens, phase0, rand_phase, noise)
        source = self.m_source(sines)[:, 0] * length_mask(sample_lens, sines.shape[-1], mel.dtype)[:, 0]
        frame_lens = mel_lens * (cfg.samples_per_frame // cfg.hop_len) + 1
        s_spec = self.stft(source, sample_lens) * length_mask(frame_lens, t * cfg.samples_per_frame // cfg.hop_len + 1, mel.dtype)

        x = self.conv_pre(mel) * m
        lens = mel_lens
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            lens = lens * cfg.upsample_rates[i]
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
                lens = lens + 1
            m = length_mask(lens, x.shape[-1], x.dtype)
            x = x * m
            si = self.source_resblocks[i](self.source_downs[i](s_spec) * m, m)
            x = x + si
            x = sum(self.resblocks[i * n_kernels + j](x, m) for j in range(n_kernels)) / n_kernels
        x = self.conv_post(F.leaky_relu(x)) * m
        k = cfg.n_fft // 2 + 1
        magnitude = torch.exp(x[:, :k]).clamp(max=1e2) * m
        phase = torch.sin(x[:, k:])
        spec = torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
        audio = self.istft(spec, m).clamp(-cfg.audio_limit, cfg.audio_limit)
        return audio * length_mask(sample_lens, audio.shape[-1], audio.dtype)[:, 0], cycles
