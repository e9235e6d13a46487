"""Speech decoder trainer: the flow (conditional flow matching, codes -> mel) and the HiFT vocoder (mel -> audio).

Flow, as CosyVoice trains `MaskedDiffWithXvec`: mel targets at the decoder's rate (22050 Hz, hop 256, 80 bins,
n_fft 1024, 0-8 kHz, natural log of the magnitude mel floored at 1e-5); x_t = (1 - (1 - sigma) t) x0 + t x1
with t on the cosine schedule, the estimator regresses u = x1 - (1 - sigma) x0. Half the items get a prompt
(the first 0-30 % of their own mel as `cond`, as streaming passes the previous frames), and 20 % drop every
condition so classifier-free guidance has an unconditional model.

HiFT, as CosyVoice trains `HiFTGenerator` with HiFi-GAN's objective: mel L1 (weight 45) + multi-resolution
STFT loss (spectral convergence + log magnitude) + an F0 loss on the predictor (targets from autocorrelation
of the recording), on random crops; from HiFT step `adversarial_start` on, also least-squares adversarial and
feature-matching (weight 2) terms against HiFi-GAN's multi-period and multi-scale discriminators
(training.discriminators). Each of those steps updates the discriminators on its crops against the
generator's detached audio, then the generator against the updated discriminators.
Reconstruction only first (by default the first two thirds of the HiFT steps, like Vocos' `pretrain_mel_steps`):
the reconstruction losses are what turns a random generator into a usable vocoder within a short CPU run's few
hundred steps, and a discriminator only has fine structure to judge (phase, noise texture: what mel and STFT
magnitudes leave open) once the audio is roughly right. The phase also costs: on CPU an adversarial step of
the tiny plan takes several times a reconstruction step, so it runs where it can refine, not everywhere.
What it buys is perceptual (HiFi-GAN's reason for it), not lower mel L1: on the tiny plan the vocoder's
held-out mel L1 stays where reconstruction alone leaves it.
The discriminators live in the trainer state (the work directory) only: hift.pt holds the generator.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glmvoice.audio import resample
from glmvoice.models.mel import mel_filter_bank
from glmvoice.models.speech_decoder import SpeechDecoder
from training.discriminators import (
    DiscriminatorConfig,
    DiscriminatorOutput,
    HiFTDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from training.loop import cosine_warmup, run_steps

MEL_N_FFT, MEL_F_MAX = 1024, 8000.0  # CosyVoice's feature extractor (the rate and hop come from the config)
_BANKS: dict = {}


def decoder_mel(audio: torch.Tensor, sample_rate: int, hop: int, n_mels: int) -> torch.Tensor:
    """audio: [B, S] -> log mel [B, n_mels, S // hop] (differentiable; reflect padding, not centred)."""
    key = (n_mels, sample_rate)
    if key not in _BANKS:
        _BANKS[key] = torch.from_numpy(mel_filter_bank(n_mels, MEL_N_FFT, sample_rate, 0.0, MEL_F_MAX)).float().T
    pad = (MEL_N_FFT - hop) // 2
    x = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(x, MEL_N_FFT, hop, window=torch.hann_window(MEL_N_FFT, device=audio.device), center=False,
                      return_complex=True)
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    return torch.log(torch.clamp(_BANKS[key].to(audio.device) @ magnitude, min=1e-5))


def frame_f0(audio: np.ndarray, sample_rate: int, hop: int, f_min: float = 60.0, f_max: float = 400.0) -> np.ndarray:
    """Per-hop F0 in Hz (0 = unvoiced) by normalised autocorrelation over 1024-sample windows."""
    win = MEL_N_FFT
    n = len(audio) // hop
    padded = np.pad(audio.astype(np.float64), (win // 2, win // 2 + hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n]
    frames = frames - frames.mean(1, keepdims=True)
    spec = np.fft.rfft(frames, 2 * win)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :win]
    energy = ac[:, 0] + 1e-9
    lo, hi = int(sample_rate / f_max), int(sample_rate / f_min)
    lag = lo + ac[:, lo:hi].argmax(1)
    strength = ac[np.arange(n), lag] / energy
    loud = energy > 1e-4 * energy.max()
    return np.where((strength > 0.5) & loud, sample_rate / lag, 0.0).astype(np.float32)


@dataclass
class DecoderItem:
    codes: list[int]
    mel: torch.Tensor  # [80, T], T = flow mel_frames(len(codes))
    audio: torch.Tensor  # [T * hop] at the decoder rate
    f0: torch.Tensor  # [T] Hz


def decoder_item(decoder: SpeechDecoder, codes: list[int], audio: np.ndarray, sample_rate: int) -> DecoderItem:
    """Target mel, audio and F0 on the flow's frame grid for these codes (audio zero-padded or cut to fit)."""
    cfg = decoder.config
    hop = cfg.hift.samples_per_frame
    frames = cfg.flow.mel_frames(len(codes))
    wave = resample(audio, sample_rate, cfg.hift.sampling_rate)[: frames * hop]
    wave = np.pad(wave, (0, frames * hop - len(wave)))
    tensor = torch.from_numpy(wave).float()
    mel = decoder_mel(tensor[None], cfg.hift.sampling_rate, hop, cfg.flow.output_size)[0]
    return DecoderItem(list(codes), mel, tensor, torch.from_numpy(frame_f0(wave, cfg.hift.sampling_rate, hop)))


@dataclass(frozen=True)
class DecoderTrainConfig:
    flow_steps: int = 400
    hift_steps: int = 400
    batch_size: int = 8
    flow_lr: float = 5e-3
    hift_lr: float = 2e-3
    warmup_steps: int = 40
    grad_clip: float = 1.0
    cfg_dropout: float = 0.2  # training_cfg_rate in the published config
    prompt_probability: float = 0.5
    hift_frames: int = 32  # mel frames per vocoder crop
    mel_weight: float = 45.0
    # HiFT step from which the adversarial and feature-matching terms are on; None: the last third of
    # hift_steps, whatever the plan's length (the module docstring says why not from the start).
    adversarial_start: int | None = None
    adversarial_weight: float = 1.0
    feature_matching_weight: float = 2.0  # HiFi-GAN's
    discriminator_lr: float = 2e-3  # the generator's, as HiFi-GAN trains both at one rate
    discriminator: str = "tiny"  # training.discriminators size; "full" (HiFi-GAN's channels) for a full-size HiFT
    seed: int = 0
    save_every: int = 100

    @property
    def adversarial_from(self) -> int:
        return self.hift_steps - self.hift_steps // 3 if self.adversarial_start is None else self.adversarial_start


def _pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    width = max(t.shape[-1] for t in tensors)
    return torch.stack([F.pad(t, (0, width - t.shape[-1])) for t in tensors])


def flow_loss(decoder: SpeechDecoder, items: list[DecoderItem], config: DecoderTrainConfig) -> torch.Tensor:
    flow = decoder.flow
    device = flow.input_embedding.weight.device
    tokens = _pad_stack([torch.tensor(i.codes) for i in items]).to(device)  # [B, N]
    token_lens = torch.tensor([len(i.codes) for i in items], device=device)
    x1 = _pad_stack([i.mel for i in items]).to(device)  # [B, 80, T]
    mel_lens = torch.tensor([i.mel.shape[-1] for i in items], device=device)
    b, _, t_max = x1.shape
    mask = (torch.arange(t_max, device=device)[None, :] < mel_lens[:, None]).unsqueeze(1).float()
    mu = flow.encode(tokens, token_lens, mel_lens)
    cond = torch.zeros_like(x1)
    for row, n in enumerate(mel_lens.tolist()):
        if torch.rand(()) < config.prompt_probability:
            cut = int(torch.randint(0, max(1, int(0.3 * n)), ()))
            cond[row, :, :cut] = x1[row, :, :cut]
    # Every random draw comes from torch's CPU generator, so runs resume exactly on any device.
    t = torch.rand(b).to(device)
    if flow.cfg.t_scheduler == "cosine":
        t = 1 - torch.cos(t * 0.5 * math.pi)
    x0 = torch.randn(x1.shape).to(device)
    tt = t.view(-1, 1, 1)
    sigma = flow.cfg.sigma_min
    y = (1 - (1 - sigma) * tt) * x0 + tt * x1
    u = x1 - (1 - sigma) * x0
    spks = flow.speaker(b, x1.device)
    keep = (torch.rand(b) > config.cfg_dropout).float().to(device)
    pred = flow.decoder.estimator(y, mask, mu * keep.view(-1, 1, 1), t, spks * keep.view(-1, 1), cond * keep.view(-1, 1, 1))
    return ((pred - u).pow(2) * mask).sum() / (mask.sum() * x1.shape[1])


STFT_RESOLUTIONS = ((512, 128), (1024, 256), (256, 64))


def stft_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total = generated.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=generated.device)
        g = torch.stft(generated, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-7)
        r = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-7)
        convergence = torch.linalg.norm(r - g) / torch.linalg.norm(r)
        total = total + convergence + F.l1_loss(g.log(), r.log())
    return total / len(STFT_RESOLUTIONS)


HIFT_BETAS = (0.8, 0.99)  # HiFi-GAN's, for the generator and the discriminators


def hift_crops(items: list[DecoderItem], config: DecoderTrainConfig,
               hop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crops of `hift_frames` frames, zero-padded when an item is shorter: mel [B, 80, F], audio
    [B, F hop], F0 [B, F]."""
    mels, waves, f0s = [], [], []
    for item in items:
        frames = min(config.hift_frames, item.mel.shape[-1])
        start = int(torch.randint(0, item.mel.shape[-1] - frames + 1, ()))
        mels.append(F.pad(item.mel[:, start: start + frames], (0, config.hift_frames - frames)))
        waves.append(F.pad(item.audio[start * hop: (start + frames) * hop], (0, (config.hift_frames - frames) * hop)))
        f0s.append(F.pad(item.f0[start: start + frames], (0, config.hift_frames - frames)))
    return torch.stack(mels), torch.stack(waves), torch.stack(f0s)


def hift_generate(decoder: SpeechDecoder, mel: torch.Tensor) -> torch.Tensor:
    """HiFT's audio [B, F hop] for mel crops [B, 80, F], with fresh random source phases and noise."""
    hift, cfg = decoder.hift, decoder.config.hift
    b, h, frames = mel.shape[0], cfg.nb_harmonics + 1, mel.shape[-1]
    device = mel.device
    rand_phase = (torch.rand(b, h) * 2 - 1) * math.pi
    rand_phase[:, 0] = 0.0
    noise = torch.randn(b, h, frames * cfg.samples_per_frame)
    lens = torch.full((b,), frames, device=device)
    audio, _ = hift(mel, lens, torch.zeros(b, h, device=device), rand_phase.to(device), noise.to(device))
    return audio


def reconstruction_losses(decoder: SpeechDecoder, mel: torch.Tensor, wave: torch.Tensor, f0_target: torch.Tensor,
                          audio: torch.Tensor, config: DecoderTrainConfig) -> dict[str, torch.Tensor]:
    """Weighted mel L1, multi-resolution STFT and F0 losses of generated `audio` against the crop it came from."""
    cfg = decoder.config.hift
    hop = cfg.samples_per_frame
    mel_gen = decoder_mel(audio, cfg.sampling_rate, hop, mel.shape[1])
    f0 = decoder.hift.f0_predictor(mel, torch.ones(mel.shape[0], 1, mel.shape[-1], device=mel.device))
    return {"mel_l1": config.mel_weight * F.l1_loss(mel_gen, decoder_mel(wave, cfg.sampling_rate, hop, mel.shape[1])),
            "stft": stft_loss(audio, wave), "f0": F.l1_loss(f0, f0_target) / 100.0}


def judge(discriminator: HiFTDiscriminator, real: torch.Tensor,
          generated: torch.Tensor) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
    """The discriminators' outputs for real and generated audio, from one pass over both: nothing in them mixes
    the items of a batch, and on CPU one pass costs less than two."""
    logits, features = discriminator(torch.cat([real, generated]))
    b = real.shape[0]
    return (([x[:b] for x in logits], [[f[:b] for f in maps] for maps in features]),
            ([x[b:] for x in logits], [[f[b:] for f in maps] for maps in features]))


def generator_adversarial_terms(discriminator: HiFTDiscriminator, wave: torch.Tensor, audio: torch.Tensor,
                                config: DecoderTrainConfig) -> dict[str, torch.Tensor]:
    """Weighted least-squares adversarial and feature-matching losses of generated `audio`."""
    discriminator.requires_grad_(False)  # the generator's step: no gradients for the discriminators' weights
    (_, real_features), (generated_logits, generated_features) = judge(discriminator, wave, audio)
    discriminator.requires_grad_(True)
    return {"hift_adv": config.adversarial_weight * generator_adversarial_loss(generated_logits),
            "hift_fm": config.feature_matching_weight * feature_matching_loss(real_features, generated_features)}


def _optimizer_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR,
                    loss: torch.Tensor, grad_clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    schedule.step()


def _run_part(name: str, module: torch.nn.Module, step: Callable[[int, random.Random], dict[str, float]], steps: int,
              stateful: dict[str, object], config: DecoderTrainConfig, work_dir: Path | None,
              stop_at: int | None) -> dict[str, list[float]]:
    module.train()
    history = run_steps(f"train {name}", step, steps, config.seed, stateful,
                        None if work_dir is None else Path(work_dir) / name, config.save_every, stop_at)
    module.eval()
    return history


def _train_flow(decoder: SpeechDecoder, items: list[DecoderItem], batch: int, config: DecoderTrainConfig,
                work_dir: Path | None, stop_at: int | None) -> dict[str, list[float]]:
    optimizer = torch.optim.AdamW(decoder.flow.parameters(), lr=config.flow_lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_warmup(config.warmup_steps, config.flow_steps))

    def step(index: int, rng: random.Random) -> dict[str, float]:
        loss = flow_loss(decoder, rng.sample(items, batch), config)
        _optimizer_step(decoder.flow, optimizer, schedule, loss, config.grad_clip)
        return {"flow_matching": loss.item()}

    stateful = {"model": decoder.flow, "optimizer": optimizer, "schedule": schedule}
    return _run_part("flow", decoder.flow, step, config.flow_steps, stateful, config, work_dir, stop_at)


def new_discriminator(config: DecoderTrainConfig) -> HiFTDiscriminator:
    """Initialised from the run's seed on a forked generator: the same weights whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return HiFTDiscriminator(DiscriminatorConfig.from_name(config.discriminator))


def _train_hift(decoder: SpeechDecoder, items: list[DecoderItem], batch: int, config: DecoderTrainConfig,
                work_dir: Path | None, stop_at: int | None) -> dict[str, list[float]]:
    hift = decoder.hift
    device = hift.conv_pre.weight.device
    optimizer = torch.optim.AdamW(hift.parameters(), lr=config.hift_lr, betas=HIFT_BETAS, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_warmup(config.warmup_steps, config.hift_steps))
    discriminator = new_discriminator(config).to(device)
    d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=config.discriminator_lr, betas=HIFT_BETAS, weight_decay=0.0)
    # Spans the adversarial phase only: warm-up from its first step, zero at the end with the generator's.
    d_schedule = torch.optim.lr_scheduler.LambdaLR(
        d_optimizer, cosine_warmup(config.warmup_steps, config.hift_steps - config.adversarial_from))

    def step(index: int, rng: random.Random) -> dict[str, float]:
        crops = hift_crops(rng.sample(items, batch), config, decoder.config.hift.samples_per_frame)
        mel, wave, f0 = (x.to(device) for x in crops)
        audio = hift_generate(decoder, mel)
        losses = reconstruction_losses(decoder, mel, wave, f0, audio, config)
        logged: dict[str, float] = {}
        if index >= config.adversarial_from:
            (real_logits, _), (generated_logits, _) = judge(discriminator, wave, audio.detach())
            d_loss = discriminator_loss(real_logits, generated_logits)
            _optimizer_step(discriminator, d_optimizer, d_schedule, d_loss, config.grad_clip)
            logged["hift_disc"] = d_loss.item()
            losses |= generator_adversarial_terms(discriminator, wave, audio, config)
        _optimizer_step(hift, optimizer, schedule, sum(losses.values()), config.grad_clip)
        return {**{k: v.item() for k, v in losses.items()}, **logged}

    stateful = {"model": hift, "optimizer": optimizer, "schedule": schedule, "discriminator": discriminator,
                "discriminator_optimizer": d_optimizer, "discriminator_schedule": d_schedule}
    return _run_part("hift", hift, step, config.hift_steps, stateful, config, work_dir, stop_at)


def train_decoder(decoder: SpeechDecoder, items: list[DecoderItem], config: DecoderTrainConfig,
                  work_dir: Path | None = None, stop_at: int | None = None) -> dict[str, list[float]]:
    """Trains the flow, then HiFT (independent: HiFT learns from recorded mels). Returns both histories.
    `stop_at` counts flow steps then HiFT steps: end early there, resumable from work_dir."""
    batch = min(config.batch_size, len(items))
    flow_history = _train_flow(decoder, items, batch, config, work_dir, stop_at)
    if stop_at is not None and stop_at <= config.flow_steps:
        return flow_history
    hift_history = _train_hift(decoder, items, batch, config, work_dir,
                               None if stop_at is None else stop_at - config.flow_steps)
    return {**flow_history, **hift_history}


def init_f0_bias(decoder: SpeechDecoder, items: list[DecoderItem]) -> None:
    """Starts the F0 predictor at the data's mean voiced F0: from zero, L1 steps of size lr would take thousands
    of steps just to reach the speaking range."""
    voiced = torch.cat([i.f0[i.f0 > 0] for i in items])
    if len(voiced):
        with torch.no_grad():
            decoder.hift.f0_predictor.classifier.bias.fill_(float(voiced.mean()))


@torch.no_grad()
def vocoder_mel_loss(decoder: SpeechDecoder, items: list[DecoderItem], seed: int = 0) -> float:
    """Mean L1 between the mel of HiFT's audio from a recording's mel and that mel: the vocoder's metric."""
    cfg = decoder.config.hift
    total = 0.0
    for item in items:
        audio = decoder.vocode(item.mel[None], seed)
        total += float((decoder_mel(audio, cfg.sampling_rate, cfg.samples_per_frame, item.mel.shape[0])[0] - item.mel).abs().mean())
    return total / max(1, len(items))


@torch.no_grad()
def mel_loss(decoder: SpeechDecoder, items: list[DecoderItem], seed: int = 0) -> float:
    """Mean L1 between the mel the flow generates from codes (as served: configured steps and guidance) and
    the recording's mel: the decoder's held-out metric."""
    total, frames = 0.0, 0
    for item in items:
        mel = decoder.decode_mel(item.codes, seed=seed)[0]
        n = min(mel.shape[-1], item.mel.shape[-1])
        total += float((mel[:, :n] - item.mel[:, :n]).abs().sum() / mel.shape[0])
        frames += n
    return total / max(frames, 1)
