"""A client of the gateway's `/v1/realtime` (the OpenAI Realtime protocol, GA event names): one spoken turn,
the WebSocket twin of glmvoice.client's gRPC `converse_wav`; `glmvoice chat AUDIO --ws [URL]` runs it.

Waits for `session.created`, sends `session.update` (formats, turn detection, instructions, budget, and our
extras under `glmvoice`), streams the WAV as `input_audio_buffer.append` events (paced at the speed of
speech with `--paced`), then either lets server VAD end the turn (trailing silence) or commits and sends
`response.create`, and collects the reply until `response.done`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

# --encoding -> the protocol's format object (audio/pcm's rate is 24 kHz in the protocol; others are our extension)
FORMATS = {"LINEAR16": "audio/pcm", "MULAW": "audio/pcmu", "ALAW": "audio/pcma"}


def audio_format(encoding: str, rate: int) -> dict:
    kind = FORMATS[encoding]
    if kind != "audio/pcm" and rate != 8000:
        raise ValueError(f"{encoding.lower()} over /v1/realtime is 8000 Hz (G.711), not {rate}")
    return {"type": kind, "rate": rate} if kind == "audio/pcm" else {"type": kind}


@dataclass
class RealtimeReply:
    """What one realtime turn sent back, in order."""

    session_id: str = ""
    events: list[str] = field(default_factory=list)  # server event types in arrival order
    transcript: list[str] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    response: dict = field(default_factory=dict)  # the response of response.done

    def add(self, event: dict) -> None:
        kind = event["type"]
        self.events.append(kind)
        if kind == "error":
            error = event["error"]
            raise ValueError(f"{error.get('code')}: {error.get('message')} (param {error.get('param')})")
        if kind in ("session.created", "session.updated"):
            self.session_id = event["session"].get("glmvoice", {}).get("session_id", self.session_id)
        elif kind in ("response.output_audio_transcript.delta", "response.output_text.delta"):
            self.transcript.append(event["delta"])
        elif kind == "response.output_audio.delta":
            self.audio.append(base64.b64decode(event["delta"]))
        elif kind == "response.done":
            self.response = event["response"]

    def waveform(self, encoding: str):
        from glmvoice.audio import decode

        return decode(b"".join(self.audio), encoding)


def realtime_turn(
    url: str, audio_path, *, encoding: str = "LINEAR16", rate: int = 24000, out_encoding: str = "LINEAR16",
    out_rate: int = 24000, paced: bool = False, server_vad: bool = False, api_key: str | None = None,
    timeout: float = 300.0, session_id: str = "", style: str = "", max_new_tokens: int | None = None, **sampling,
) -> RealtimeReply:
    import time

    import numpy as np
    from websockets.sync.client import connect

    from glmvoice.audio import read_wav, resample
    from glmvoice.client import FRAME_MS, frames

    samples, wav_rate = read_wav(audio_path)
    wire = frames(resample(samples, wav_rate, rate), rate, encoding)
    if server_vad:  # trailing silence lets the VAD hear the end of speech
        wire += frames(np.zeros(rate, np.float32), rate, encoding)
    extension = {k: v for k, v in {**sampling, "session_id": session_id or None}.items() if v is not None}
    session = {
        "type": "realtime", "instructions": style, "max_output_tokens": max_new_tokens or "inf",
        "audio": {"input": {"format": audio_format(encoding, rate),
                            "turn_detection": {"type": "server_vad"} if server_vad else None},
                  "output": {"format": audio_format(out_encoding, out_rate)}},
        "glmvoice": extension,
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    reply = RealtimeReply()
    with connect(url, additional_headers=headers, open_timeout=30, max_size=None) as ws:
        def receive_until(kind: str) -> None:
            while not reply.events or reply.events[-1] != kind:
                reply.add(json.loads(ws.recv(timeout=timeout)))

        receive_until("session.created")
        ws.send(json.dumps({"type": "session.update", "session": session}))
        receive_until("session.updated")
        started = time.monotonic()
        for index, frame in enumerate(wire):
            if paced:  # frame i leaves when its audio would have been spoken
                time.sleep(max(0.0, started + index * FRAME_MS / 1000 - time.monotonic()))
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}))
        if not server_vad:
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            ws.send(json.dumps({"type": "response.create"}))
        receive_until("response.done")
    return reply


def summary(reply: RealtimeReply, reply_seconds: float) -> dict:
    response = reply.response
    extension = response.get("glmvoice", {})
    latency = extension.get("latency", {})
    return {
        "session_id": reply.session_id,
        "text": "".join(reply.transcript),
        "audio_seconds": round(reply_seconds, 3),
        "status": response.get("status"),
        "usage": response.get("usage"),
        "latency_ms": {k.removesuffix("_ms"): round(v, 1) for k, v in latency.items() if k.endswith("_ms")},
        "real_time_factor": round(latency.get("real_time_factor", 0.0), 2),
    }
