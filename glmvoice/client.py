"""A Python client of the public gRPC API (glmvoice.v1.VoiceChat): request builders, wire framing and a
one-turn `converse_wav`. The CLI's `chat` command, the gateway and the tests share it, so a request is built
one way everywhere."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FRAME_MS = 20
# Where `make up` (services.local_stack) writes the addresses it chose, under the checkout's root
# (see stack_file); GLMVOICE_STACK_FILE overrides.
STACK_FILE = Path("build/stack/stack.json")


def checkout_root(start: Path | None = None) -> Path | None:
    """The glmvoice source checkout that holds `start` (default: the working directory), else the one the
    imported package lives in (`make setup` installs it editable), else None (an installed wheel)."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "pyproject.toml").is_file() and (directory / "glmvoice" / "client.py").is_file():
            return directory
    package_root = Path(__file__).resolve().parents[1]
    return package_root if (package_root / "pyproject.toml").is_file() else None


def stack_file() -> Path:
    """The stack file: GLMVOICE_STACK_FILE, else build/stack/stack.json of the checkout the working directory
    is in (where `make up` runs; so `glmvoice chat` finds it from any subdirectory, and each checkout or
    worktree has its own stack), else of the checkout the package was installed from (chat from outside
    any checkout), else relative to the working directory."""
    if os.environ.get("GLMVOICE_STACK_FILE"):
        return Path(os.environ["GLMVOICE_STACK_FILE"])
    root = checkout_root()
    return root / STACK_FILE if root is not None else STACK_FILE


def stack_addresses() -> dict:
    """The addresses of the stack `make up` started (empty when none is up)."""
    path = stack_file()
    return json.loads(path.read_text()) if path.is_file() else {}


def frames(samples, rate: int, encoding: str, frame_ms: int = FRAME_MS) -> list[bytes]:
    """A mono float waveform at `rate` -> wire frames of frame_ms each, in `encoding` (LINEAR16/MULAW/ALAW)."""
    from glmvoice.audio import encode

    step = rate * frame_ms // 1000
    return [encode(samples[i : i + step], encoding) for i in range(0, len(samples), step)]


def config_request(
    in_encoding: str, in_rate: int, out_encoding: str, out_rate: int, *, server_vad: bool = False,
    session_id: str = "", style: str = "", vad_silence_ms: int = 0, vad_threshold: float = 0.0, **sampling,
):
    from glmvoice.v1 import common_pb2
    from glmvoice.v1 import voice_chat_pb2 as pb

    def fmt(encoding, rate):
        return common_pb2.AudioFormat(encoding=common_pb2.AudioEncoding.Value(f"AUDIO_ENCODING_{encoding}"), sample_rate_hz=rate)

    detection = pb.TURN_DETECTION_SERVER_VAD if server_vad else pb.TURN_DETECTION_CLIENT
    return pb.ConverseRequest(config=pb.SessionConfig(
        input_audio=fmt(in_encoding, in_rate), output_audio=fmt(out_encoding, out_rate), turn_detection=detection,
        session_id=session_id, style_instruction=style, vad_silence_ms=vad_silence_ms, vad_threshold=vad_threshold,
        sampling=common_pb2.SamplingParams(**{k: v for k, v in sampling.items() if v is not None}),
    ))


@dataclass
class Transcript:
    """Everything a Converse stream sent back, in order."""

    session_id: str = ""
    events: list[str] = field(default_factory=list)  # oneof names in arrival order
    text_deltas: list[str] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    turns: list = field(default_factory=list)  # TurnEnded messages

    def add(self, response) -> None:
        kind = response.WhichOneof("event")
        self.events.append(kind)
        if kind == "session_started":
            self.session_id = response.session_started.session_id
        elif kind == "text_delta":
            self.text_deltas.append(response.text_delta.text)
        elif kind == "audio":
            self.audio.append(response.audio.data)
        elif kind == "turn_ended":
            self.turns.append(response.turn_ended)


def converse_wav(
    addr: str, audio_path, *, encoding: str = "LINEAR16", rate: int = 16000, out_encoding: str = "LINEAR16",
    out_rate: int = 22050, paced: bool = False, server_vad: bool = False, api_key: str | None = None,
    timeout: float = 300.0, **config,
) -> tuple[Transcript, np.ndarray]:
    """Streams a WAV as 20 ms frames to VoiceChat.Converse -> (everything sent back, reply waveform)."""
    import time

    from glmvoice.audio import decode, read_wav, resample
    from glmvoice.v1 import voice_chat_pb2 as pb

    samples, wav_rate = read_wav(audio_path)
    wire = frames(resample(samples, wav_rate, rate), rate, encoding)
    if server_vad:  # trailing silence lets the VAD hear the end of speech
        wire += frames(np.zeros(rate, np.float32), rate, encoding)
    first = config_request(encoding, rate, out_encoding, out_rate, server_vad=server_vad, **config)

    def requests():
        yield first
        started = time.monotonic()
        for index, frame in enumerate(wire):
            if paced:  # frame i leaves when its audio would have been spoken
                time.sleep(max(0.0, started + index * FRAME_MS / 1000 - time.monotonic()))
            yield pb.ConverseRequest(audio=pb.AudioChunk(data=frame))
        if not server_vad:
            yield pb.ConverseRequest(end_of_turn=pb.EndOfTurn())

    transcript = converse(addr, requests(), api_key, timeout)
    return transcript, decode(b"".join(transcript.audio), out_encoding)


def summary(transcript: Transcript, reply_seconds: float) -> dict:
    from glmvoice.v1 import voice_chat_pb2 as pb

    turn = transcript.turns[-1] if transcript.turns else None
    latency = turn.latency if turn else None
    return {
        "session_id": transcript.session_id,
        "text": "".join(transcript.text_deltas),
        "audio_seconds": round(reply_seconds, 3),
        "reason": pb.TurnEndReason.Name(turn.reason) if turn else None,
        "latency_ms": None if latency is None else {
            name.removesuffix("_ms"): round(getattr(latency, name), 1) for name in
            ("tokenize_ms", "prefill_ms", "decode_to_first_speech_ms", "speech_decode_ms", "first_audio_ms")
        },
        "real_time_factor": None if latency is None else round(latency.real_time_factor, 2),
    }


def auth_metadata(api_key: str | None) -> list | None:
    return [("authorization", f"Bearer {api_key}")] if api_key else None


def converse(address: str, requests, api_key: str | None = None, timeout: float = 120.0) -> Transcript:
    """One Converse stream over `requests` (an iterator of ConverseRequest) -> everything sent back."""
    import grpc

    from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub

    transcript = Transcript()
    with grpc.insecure_channel(address) as channel:
        for response in VoiceChatStub(channel).Converse(requests, metadata=auth_metadata(api_key), timeout=timeout):
            transcript.add(response)
    return transcript


def text_turn(address: str, text: str, session_id: str = "", api_key: str | None = None, max_new_tokens: int = 30,
              **sampling) -> Transcript:
    """One typed turn (LINEAR16 16 kHz reply) in a new or an existing session."""
    from glmvoice.v1 import voice_chat_pb2 as pb

    config = config_request("LINEAR16", 16000, "LINEAR16", 16000, session_id=session_id,
                            max_new_tokens=max_new_tokens, **sampling)
    return converse(address, iter([config, pb.ConverseRequest(text=pb.TextTurn(text=text))]), api_key)


def get_session(address: str, session_id: str, api_key: str | None = None):
    import grpc

    from glmvoice.v1 import voice_chat_pb2 as pb
    from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub

    with grpc.insecure_channel(address) as channel:
        return VoiceChatStub(channel).GetSession(pb.GetSessionRequest(session_id=session_id),
                                                 metadata=auth_metadata(api_key), timeout=10)


class LiveStream:
    """A Converse stream driven step by step: `send` requests, `next_event` reads responses (reader thread)."""

    def __init__(self, address: str, api_key: str | None = None, timeout: float = 120.0):
        import queue
        import threading

        import grpc

        from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub

        self.channel = grpc.insecure_channel(address)
        self.outgoing: queue.Queue = queue.Queue()
        self.incoming: queue.Queue = queue.Queue()
        self.call = VoiceChatStub(self.channel).Converse(iter(self.outgoing.get, None),
                                                         metadata=auth_metadata(api_key), timeout=timeout)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        import grpc

        try:
            for response in self.call:
                self.incoming.put(response)
        except grpc.RpcError as exc:
            self.incoming.put(exc)
        self.incoming.put(None)

    def send(self, request) -> None:
        self.outgoing.put(request)

    def send_audio(self, wire: list[bytes]) -> None:
        from glmvoice.v1 import voice_chat_pb2 as pb

        for frame in wire:
            self.send(pb.ConverseRequest(audio=pb.AudioChunk(data=frame)))

    def close(self) -> None:
        self.outgoing.put(None)

    def next_event(self, timeout: float = 60.0):
        """The next response; raises the stream's grpc.RpcError if it failed."""
        import grpc

        item = self.incoming.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def shutdown(self) -> None:
        self.call.cancel()
        self.channel.close()
