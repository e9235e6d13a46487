"""Speech tokenization, offline (whole files, batched) and streaming (audio chunks as the user speaks).

Offline follows the official `extract_speech_token`: resample to 16 kHz, cut into 30 s segments, pad each
to a multiple of one token's samples (1280), Whisper log-mel, encode, drop the codes of padded positions.

Streams emit the codes of each attention block (a stream unit: whole blocks and whole tokens) as soon as
its audio, plus the STFT window's reach past the block (n_fft / 2 - hop = 40 samples), has arrived;
`finalize()` pads and flushes the rest. They equal offline tokenization with `mel_floor="causal"`.

The mel floor is the one place where a stream cannot follow the official recipe: Whisper clamps the
log-mel 8 decades below the loudest value of the whole segment, which is not known while the user is
still speaking. `mel_floor="utterance"` is the official clamp (offline only); `"causal"` clamps each
stream unit 8 decades below the loudest value up to the end of that unit. The two agree whenever the
loudest frame falls in the first unit, and otherwise differ only where frames are very quiet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from glmvoice.audio import check_waveform, resample
from glmvoice.models.mel import log10_mel_frames, whisper_normalize
from glmvoice.models.speech_tokenizer import CONV_STRIDE, EncoderCache, SpeechTokenizerModel
from glmvoice.models.speech_tokenizer_checkpoint import load_speech_tokenizer_model
from glmvoice.runtime.streams import StreamRegistry

MEL_FLOORS = ("utterance", "causal")
DYNAMIC_RANGE = 8.0  # decades of log10 power kept below the loudest value (Whisper)


class SpeechTokenizer:
    """Audio -> speech token codes (0 .. codebook size - 1) with a loaded `SpeechTokenizerModel`."""

    def __init__(self, model: SpeechTokenizerModel):
        self.model = model.eval()
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.model.codebook.weight.device

    @property
    def unit_mel_frames(self) -> int:
        """Mel frames per stream unit (whole attention blocks): streams emit codes in these steps."""
        if self.config.stream_unit is None:
            raise ValueError("this tokenizer has full (not block-causal) attention: it cannot stream")
        return self.config.stream_unit * CONV_STRIDE

    def to_model_rate(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        return resample(check_waveform(samples), sample_rate, self.config.sampling_rate)

    def segments(self, samples: np.ndarray) -> list[np.ndarray]:
        """Cuts at every chunk_length seconds, each segment encoded on its own (official behaviour)."""
        step = self.config.segment_samples
        return [samples[i: i + step] for i in range(0, len(samples), step)]

    def reflect_padded(self, segment: np.ndarray) -> np.ndarray:
        """The zero-padded segment (whole tokens) with the STFT's centring reflection: frame t = [t*hop, t*hop + n_fft)."""
        padded = np.pad(segment, (0, -len(segment) % self.config.samples_per_token))
        return np.pad(padded, self.config.n_fft // 2, mode="reflect")

    def log10_mel(self, reflected: np.ndarray) -> torch.Tensor:
        c = self.config
        return log10_mel_frames(reflected, c.num_mel_bins, c.n_fft, c.hop_length, c.sampling_rate)

    def segment_features(self, segment: np.ndarray, mel_floor: str = "utterance") -> tuple[torch.Tensor, torch.Tensor]:
        """One segment (<= chunk_length s at the model rate) -> mel [M, T] and frame mask [T] (1 = real audio)."""
        if mel_floor not in MEL_FLOORS:
            raise ValueError(f"mel_floor must be one of {MEL_FLOORS}, got {mel_floor!r}")
        log_mel = self.log10_mel(self.reflect_padded(segment))[:, :-1]  # [M, T]; the centred STFT's extra frame dropped
        if mel_floor == "utterance":
            floor = log_mel.max() - DYNAMIC_RANGE
        else:
            unit = self.unit_mel_frames
            maxima = torch.stack([chunk.max() for chunk in log_mel.split(unit, dim=1)])
            floor = (torch.cummax(maxima, 0).values - DYNAMIC_RANGE).repeat_interleave(unit)[: log_mel.shape[1]]
        mask = torch.arange(log_mel.shape[1]) * self.config.hop_length < len(segment)
        return whisper_normalize(log_mel, floor), mask

    def n_tokens(self, n_samples: int) -> int:
        return -(-n_samples // self.config.samples_per_token)

    @torch.inference_mode()
    def tokenize_batch(
        self, waves: Sequence[np.ndarray], sample_rate: int, mel_floor: str = "utterance", batch_size: int = 16
    ) -> list[list[int]]:
        """Several waveforms (same sample rate) -> one code list each; segments are batched together."""
        pieces = [(i, seg) for i, wave in enumerate(waves) for seg in self.segments(self.to_model_rate(wave, sample_rate))]
        result: list[list[int]] = [[] for _ in waves]
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start: start + batch_size]
            feats = [self.segment_features(seg, mel_floor) for _, seg in batch]
            width = max(mel.shape[1] for mel, _ in feats)
            mel = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m, _ in feats])
            mask = torch.stack([torch.nn.functional.pad(k, (0, width - k.shape[0])) for _, k in feats])
            codes = self.model(mel.to(self.device), mask.to(self.device)).cpu()
            for row, (index, seg) in enumerate(batch):
                result[index].extend(codes[row, : self.n_tokens(len(seg))].tolist())
        return result

    def tokenize(self, samples: np.ndarray, sample_rate: int, mel_floor: str = "utterance") -> list[int]:
        return self.tokenize_batch([samples], sample_rate, mel_floor)[0]

    def open_stream(self, stream_id: str = "") -> TokenizerStream:
        return TokenizerStream(self, stream_id)


def load_speech_tokenizer(directory, device: str | torch.device = "cpu") -> SpeechTokenizer:
    """Reads a glm-4-voice-tokenizer directory as published (config.json, model.safetensors, preprocessor_config.json)."""
    return SpeechTokenizer(load_speech_tokenizer_model(directory, device))


@dataclass
class TokenizerStream:
    """One speaker's stream (the runtime's Stream protocol): audio at the model rate (16 kHz) `push`ed in,
    codes out as attention blocks complete; `finalize` encodes the tail."""

    tokenizer: SpeechTokenizer
    stream_id: str = ""
    buffer: np.ndarray = field(init=False, repr=False)  # the current segment's samples
    filled: int = field(init=False, default=0)
    units_done: int = field(init=False, default=0)  # stream units of this segment already encoded
    loudest: float = field(init=False, default=float("-inf"))  # log10 mel maximum so far in this segment
    cache: EncoderCache = field(init=False, repr=False)

    def __post_init__(self):
        _ = self.tokenizer.unit_mel_frames  # fails early for a tokenizer that cannot stream
        self.reset()

    def reset(self) -> None:
        self.buffer = np.zeros(self.tokenizer.config.segment_samples, dtype=np.float32)
        self.filled, self.units_done, self.loudest = 0, 0, float("-inf")
        self.cache = self.tokenizer.model.setup_caches(1)

    @torch.inference_mode()
    def push(self, chunk: np.ndarray) -> list[int]:
        """Appends audio at the model rate (any length, empty allowed) and returns the codes that became final."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.size:
            chunk = check_waveform(chunk)
        codes: list[int] = []
        while chunk.size:
            take = min(len(chunk), len(self.buffer) - self.filled)
            self.buffer[self.filled: self.filled + take] = chunk[:take]
            self.filled, chunk = self.filled + take, chunk[take:]
            codes += self._encode_ready_units()
            if self.filled == len(self.buffer):
                codes += self._finish_segment()
        return codes

    @torch.inference_mode()
    def finalize(self) -> list[int]:
        """End of the utterance: pads and encodes what is left, then resets for the next one."""
        return self._finish_segment() if self.filled else []

    def _encode_ready_units(self) -> list[int]:
        c = self.tokenizer.config
        unit = self.tokenizer.unit_mel_frames
        half = c.n_fft // 2
        codes: list[int] = []
        while True:
            first = self.units_done * unit
            # The unit's last frame reaches `half` samples past its centre; those samples must be real audio.
            needed = c.hop_length * (first + unit - 1) + half
            if needed > self.filled:
                return codes
            if first == 0:
                window = np.pad(self.buffer[:needed], (half, 0), mode="reflect")
            else:
                window = self.buffer[c.hop_length * first - half: needed]
            codes += self._encode(self.tokenizer.log10_mel(window), None)
            self.units_done += 1

    def _finish_segment(self) -> list[int]:
        c = self.tokenizer.config
        unit = self.tokenizer.unit_mel_frames
        segment = self.buffer[: self.filled]
        first = self.units_done * unit
        tail = self.tokenizer.log10_mel(self.tokenizer.reflect_padded(segment)[c.hop_length * first:])[:, :-1]
        frames = torch.arange(first, first + tail.shape[1]) * c.hop_length < len(segment)
        codes: list[int] = []
        for mel, mask in zip(tail.split(unit, dim=1), frames.split(unit)):
            codes += self._encode(mel, mask)
        total = self.tokenizer.n_tokens(len(segment))
        emitted = first // (CONV_STRIDE * c.pooling_kernel_size)
        self.reset()
        return codes[: total - emitted]

    def _encode(self, log_mel: torch.Tensor, mask: torch.Tensor | None) -> list[int]:
        # log_mel: [M, T] of one stream unit (or of the padded tail); the floor follows the loudest frame so far
        self.loudest = max(self.loudest, float(log_mel.max()))
        mel = whisper_normalize(log_mel, self.loudest - DYNAMIC_RANGE)
        device = self.tokenizer.device
        frame_mask = None if mask is None else mask[None].to(device)
        return self.tokenizer.model.encode_chunk(mel[None].to(device), self.cache, frame_mask)[0].tolist()


class TokenizerStreams(StreamRegistry[TokenizerStream]):
    """Open speakers' streams by id (the runtime's Stream protocol)."""

    def __init__(self, tokenizer: SpeechTokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def _new(self, stream_id: str) -> TokenizerStream:
        return TokenizerStream(self.tokenizer, stream_id)
