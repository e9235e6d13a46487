"""What flows through a Converse stream, as plain dataclasses: the stream's config in, and the events out;
server.py converts them to and from protobuf (client frames after the config are read straight from protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

from glmvoice.sampling import SamplingParams


@dataclass(frozen=True)
class AudioSpec:
    encoding: str  # a glmvoice.audio codec name: LINEAR16, MULAW, ALAW
    sample_rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "LINEAR16" else 1


@dataclass(frozen=True)
class StreamConfig:
    input_audio: AudioSpec
    output_audio: AudioSpec
    sampling: SamplingParams
    max_new_tokens: int
    server_vad: bool = True
    vad_silence_ms: int = 500
    style_instruction: str = ""
    session_id: str = ""
    vad_threshold: float = 0.0  # 0: the server's setting


# Server -> client.
@dataclass(frozen=True)
class SessionStarted:
    session_id: str
    turns: int


@dataclass(frozen=True)
class SpeechStarted:
    audio_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_ms: int


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AudioOut:
    data: bytes


@dataclass
class Latency:
    """Milliseconds per stage of one turn (the paper's decomposition), plus first audio and RTF."""

    tokenize_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_to_first_speech_ms: float = 0.0
    speech_decode_ms: float = 0.0
    first_audio_ms: float = 0.0
    real_time_factor: float = 0.0


@dataclass(frozen=True)
class Usage:
    """LM ids of one turn: the whole prompt in, what was generated out."""

    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0


@dataclass(frozen=True)
class TurnEnded:
    reason: str  # "completed", "length" or "cancelled"
    text: str
    audio_seconds: float
    latency: Latency = field(default_factory=Latency)
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class ReplyTruncated:
    text: str
    speech_tokens: int
    audio_seconds: float
