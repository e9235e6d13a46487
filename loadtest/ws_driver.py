"""The WebSocket door: the gateway's /v1/realtime (the OpenAI Realtime protocol, glmvoice extensions under
"glmvoice"), with the caller committing each turn itself (turn_detection null, then response.create).

Kept to this one module on purpose: only this adapter knows the endpoint's event names and fields;
everything the caller measures stays in caller.py. Formats come from glmvoice.realtime_client.
"""

from __future__ import annotations

import base64
import json

import websockets

from glmvoice.realtime_client import audio_format
from loadtest.caller import CallFailed

STATUS = {"completed": "completed", "incomplete": "length", "cancelled": "cancelled"}
TEXT_DELTAS = ("response.output_audio_transcript.delta", "response.output_text.delta")


class WsTransport:
    def __init__(self, url: str, api_key: str | None = None):
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.socket = None
        self.session_id = ""

    async def open(self, encoding: str, rate: int, sampling: dict) -> None:
        try:
            self.socket = await websockets.connect(self.url, additional_headers=self.headers, max_size=None)
        except (OSError, websockets.InvalidHandshake) as exc:
            raise CallFailed("UNAVAILABLE", f"{self.url}: {exc}") from None
        while (await self._receive())["type"] != "session.created":
            pass
        extension = {k: v for k, v in sampling.items() if k != "max_new_tokens" and v is not None}
        session = {"type": "realtime", "max_output_tokens": sampling.get("max_new_tokens") or "inf",
                   "audio": {"input": {"format": audio_format(encoding, rate), "turn_detection": None},
                             "output": {"format": audio_format(encoding, rate)}},
                   "glmvoice": extension}
        await self._send({"type": "session.update", "session": session})

    async def _send(self, event: dict) -> None:
        try:
            await self.socket.send(json.dumps(event))
        except websockets.ConnectionClosed as exc:
            raise CallFailed("CLOSED", str(exc)) from None

    async def _receive(self) -> dict:
        try:
            event = json.loads(await self.socket.recv())
        except websockets.ConnectionClosed as exc:
            raise CallFailed("CLOSED", str(exc)) from None
        if event.get("type") == "error":
            error = event["error"]
            raise CallFailed(error.get("code") or error.get("type", "error"), error.get("message", ""))
        return event

    async def audio(self, frame: bytes) -> None:
        await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()})

    async def end_of_turn(self) -> None:
        await self._send({"type": "input_audio_buffer.commit"})
        await self._send({"type": "response.create"})

    async def done_writing(self) -> None:
        """A WebSocket has no half-close: the caller has already waited for its last reply."""
        await self.socket.close()

    async def read(self):
        try:
            event = await self._receive()
        except CallFailed:
            if self.socket.close_code == 1000:  # we closed it after the last reply
                return None
            raise
        kind = event["type"]
        if kind == "session.updated":
            return "started", event["session"].get("glmvoice", {}).get("session_id", "")
        if kind == "response.output_audio.delta":
            return "audio", base64.b64decode(event["delta"])
        if kind in TEXT_DELTAS:
            return "text", event["delta"]
        if kind == "response.done":
            response = event["response"]
            latency = response.get("glmvoice", {}).get("latency", {})
            return "ended", {"reason": STATUS.get(response.get("status"), response.get("status", "")),
                             "text": "", "server": {k: round(v, 2) for k, v in latency.items()}}
        return kind, None

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
