"""Log-mel features for the networks (torch): Whisper's 128/80-bin log-mel for the speech tokenizer, and the
Slaney mel bank the decoder's training losses share. Kept apart from glmvoice.audio (codecs, resampling),
which the orchestrator and gateway use without loading torch."""

from __future__ import annotations

import math

import numpy as np
import torch

from glmvoice.audio import AudioFormatError, check_waveform

# Whisper log-mel features (what WhisperFeatureExtractor computes), without torchaudio or librosa.
# Numbers follow Whisper: 25 ms Hann window (n_fft 400), 10 ms hop (160), Slaney mel bank over 0-8 kHz,
# log10 power floored at 1e-10, dynamic range clamped to 8 decades below the loudest value, then (x + 4) / 4.
_SLANEY_F_SP = 200.0 / 3.0  # Hz per mel in the linear region below 1 kHz
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_F_SP
    log_part = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP + np.log(np.maximum(hz, 1e-10) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return np.where(hz >= _SLANEY_MIN_LOG_HZ, log_part, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    min_log_mel = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
    return np.where(mel >= min_log_mel, _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mel - min_log_mel)), mel * _SLANEY_F_SP)


def mel_filter_bank(
    n_mels: int, n_fft: int = 400, sample_rate: int = 16000, f_min: float = 0.0, f_max: float = 8000.0
) -> np.ndarray:
    """Slaney-scale, area-normalised triangular filters: [n_fft // 2 + 1, n_mels] (float64, as librosa/Whisper)."""
    fft_freqs = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(f_min), _hz_to_slaney_mel(f_max), n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]  # [F, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


_MEL_BANKS: dict = {}  # (n_mels, n_fft, rate) -> float32 torch filters, built once


def log10_mel_frames(padded: np.ndarray, n_mels: int, n_fft: int = 400, hop_length: int = 160, sample_rate: int = 16000):
    """log10 mel power of the frames that fit in `padded` (no centring, no clamp): torch [n_mels, T].

    Frame t covers padded[t * hop : t * hop + n_fft], so T = (len - n_fft) // hop + 1. Callers choose the
    padding; offline features and streams both go through this one function so that equal frames give
    bit-equal features. float32 throughout, like the feature extractor's torch path.
    """
    key = (n_mels, n_fft, sample_rate)
    if key not in _MEL_BANKS:
        _MEL_BANKS[key] = torch.from_numpy(mel_filter_bank(n_mels, n_fft, sample_rate)).float()
    filters = _MEL_BANKS[key]
    signal = torch.as_tensor(np.asarray(padded, dtype=np.float32))
    spectrum = torch.stft(signal, n_fft, hop_length, window=torch.hann_window(n_fft), center=False, return_complex=True)
    power = spectrum.abs() ** 2  # [F, T]
    return torch.clamp(filters.T @ power, min=1e-10).log10()


def whisper_normalize(log_mel, floor):
    """Whisper's dynamic-range clamp and scaling; `floor` is (loudest log10 value - 8), scalar or broadcastable."""
    return (torch.maximum(log_mel, torch.as_tensor(floor, dtype=log_mel.dtype)) + 4.0) / 4.0


def log_mel_spectrogram(samples: np.ndarray, n_mels: int, n_fft: int = 400, hop_length: int = 160, sample_rate: int = 16000):
    """Whisper log-mel of a 16 kHz waveform, exactly as WhisperFeatureExtractor: torch [n_mels, len // hop].

    The waveform is neither padded nor truncated to 30 s here: pass it already padded the way the model
    expects (Whisper pads with zeros to 30 s; the GLM-4-Voice tokenizer pads to a multiple of 1280 samples).
    The STFT is centred (reflect padding of n_fft // 2 at both ends) and the last frame is dropped, as in
    the feature extractor; the clamp uses the loudest value of this whole waveform.
    """
    samples = check_waveform(samples)
    if len(samples) <= n_fft // 2:
        raise AudioFormatError(f"need more than {n_fft // 2} samples for a log-mel frame, got {len(samples)}")
    padded = np.pad(samples, n_fft // 2, mode="reflect")
    log_mel = log10_mel_frames(padded, n_mels, n_fft, hop_length, sample_rate)[:, :-1]
    return whisper_normalize(log_mel, log_mel.max() - 8.0).to(torch.float32)
