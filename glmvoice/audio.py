"""Audio I/O and conversions: WAV files, PCM16 / mu-law / A-law codecs, resampling.

Waveforms inside glmvoice are mono float32 numpy arrays in [-1, 1] with an explicit sample rate.
"""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
WAV_RATES = (8000, 192000)  # sample rates a WAV file may declare (lowest, highest)
# Sample rates a reply can be delivered at (the decoder makes 22.05 kHz; the rest are resampled).
OUTPUT_RATES = (8000, 16000, 22050, 24000, 48000)


class AudioFormatError(ValueError):
    """Bytes or arrays that are not the audio they claim to be."""


def read_wav(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """PCM16 (or 8/32-bit integer) WAV → (mono float32 waveform, sample rate). Channels are averaged."""
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    try:
        with handle, wave.open(handle, "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, RuntimeError) as exc:  # the wave module raises RuntimeError on bad chunk sizes
        raise AudioFormatError(f"not a readable WAV file: {exc}") from exc
    # A header may declare any rate; resampling 1 Hz audio to 16 kHz would multiply it 16,000-fold.
    if not WAV_RATES[0] <= rate <= WAV_RATES[1]:
        raise AudioFormatError(f"WAV sample rate {rate} Hz is outside {WAV_RATES[0]}..{WAV_RATES[1]} Hz")
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        samples = np.frombuffer(frames, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise AudioFormatError(f"unsupported WAV sample width: {width} bytes")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Mono float waveform → PCM16 WAV file bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(float_to_pcm16(samples))
    return buffer.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    Path(path).write_bytes(wav_bytes(samples, rate))


def float_to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise AudioFormatError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0


# G.711 mu-law and A-law, computed from the standard's segment tables rather than a lookup file.
_MU = 255.0


def float_to_mulaw(samples: np.ndarray) -> bytes:
    pcm = np.clip(samples, -1.0, 1.0) * 32767.0
    sign = (pcm < 0).astype(np.int32)
    magnitude = np.minimum(np.abs(pcm).astype(np.int32), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~((sign << 7) | (exponent << 4) | mantissa) & 0xFF
    return code.astype(np.uint8).tobytes()


def mulaw_to_float(data: bytes) -> np.ndarray:
    code = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign, -magnitude, magnitude) / 32768.0).astype(np.float32)


def float_to_alaw(samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int32) >> 3  # A-law works on 13 bits
    sign = np.where(pcm >= 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(pcm), 4095)
    exponent = np.where(magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    code = (sign | (exponent << 4) | mantissa) ^ 0x55
    return code.astype(np.uint8).tobytes()


def alaw_to_float(data: bytes) -> np.ndarray:
    code = np.frombuffer(data, np.uint8).astype(np.int32) ^ 0x55
    sign, exponent, mantissa = code & 0x80, (code >> 4) & 0x07, code & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 1) + 1, ((mantissa << 1) + 33) << (exponent - 1))
    return (np.where(sign, magnitude, -magnitude) * 8 / 32768.0).astype(np.float32)


ENCODERS = {"LINEAR16": float_to_pcm16, "MULAW": float_to_mulaw, "ALAW": float_to_alaw}
DECODERS = {"LINEAR16": pcm16_to_float, "MULAW": mulaw_to_float, "ALAW": alaw_to_float}


def encode(samples: np.ndarray, encoding: str) -> bytes:
    try:
        return ENCODERS[encoding](samples)
    except KeyError:
        raise AudioFormatError(f"unknown audio encoding {encoding!r}; expected one of {sorted(ENCODERS)}") from None


def decode(data: bytes, encoding: str) -> np.ndarray:
    try:
        return DECODERS[encoding](data)
    except KeyError:
        raise AudioFormatError(f"unknown audio encoding {encoding!r}; expected one of {sorted(DECODERS)}") from None


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR) between any two integer rates."""
    if orig_rate <= 0 or target_rate <= 0:
        raise AudioFormatError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    samples = np.asarray(samples, dtype=np.float32)
    if orig_rate == target_rate:
        return samples
    g = math.gcd(orig_rate, target_rate)
    return resample_poly(samples, target_rate // g, orig_rate // g).astype(np.float32)


class StreamResampler:
    """Polyphase resampling of a growing signal that equals resampling the whole signal at once.

    Each call resamples the buffered tail with `margin` samples of left context, starting on an input sample
    that maps onto the output grid, and emits only outputs whose filter support is complete."""

    def __init__(self, orig_rate: int, target_rate: int):
        g = math.gcd(orig_rate, target_rate)
        self.orig_rate, self.target_rate = orig_rate, target_rate
        self.up, self.down = target_rate // g, orig_rate // g
        # scipy's resample_poly filter has 10 * max(up, down) taps per side at the upsampled rate.
        self.margin = math.ceil(10 * max(self.up, self.down) / self.up) + 2
        self.buffer = np.zeros(0, dtype=np.float32)
        self.start = 0  # input index of buffer[0]; a multiple of `down`
        self.emitted = 0  # output samples emitted so far

    def push(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        if self.up == self.down:
            return np.asarray(samples, dtype=np.float32)
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, dtype=np.float32)])
        total = self.start + len(self.buffer)
        if final:
            ready = -(-total * self.up // self.down)
        else:
            ready = max(total - self.margin, 0) * self.up // self.down
        if ready <= self.emitted or len(self.buffer) == 0:
            return np.zeros(0, dtype=np.float32)
        y = resample(self.buffer, self.orig_rate, self.target_rate)
        offset = self.start * self.up // self.down
        out = y[self.emitted - offset : ready - offset]
        self.emitted = ready
        keep_from = max(self.emitted * self.down // self.up - self.margin, 0) // self.down * self.down
        self.buffer = self.buffer[keep_from - self.start :]
        self.start = keep_from
        return out


def check_waveform(samples: np.ndarray) -> np.ndarray:
    """Rejects what no network should see: empty, multi-dimensional, or non-finite audio."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise AudioFormatError(f"expected a mono waveform [T], got shape {samples.shape}")
    if samples.size == 0:
        raise AudioFormatError("empty audio")
    if not np.isfinite(samples).all():
        raise AudioFormatError("audio contains NaN or infinite samples")
    return samples
