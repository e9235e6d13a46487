"""The WebSocket door: the gateway's /v1/realtime as it is today (JSON events; see services/gateway/realtime.py).

Kept to this one module on purpose: the endpoint's protocol is being changed, and only this adapter (event
names and fields) follows it; everything the caller measures stays in caller.py.
"""

from __future__ import annotations

import base64
import json

import websockets

from loadtest.caller import CallFailed

WS_FORMATS = {"LINEAR16": "pcm16", "MULAW": "g711_ulaw", "ALAW": "g711_alaw"}
STATUS = {"completed": "completed", "incomplete": "length", "cancelled": "cancelled"}


class WsTransport:
    def __init__(self, url: str, api_key: str | None = None):
        self.url = url + (f"?api_key={api_key}" if api_key else "")
        self.socket = None

    async def open(self, encoding: str, rate: int, sampling: dict) -> None:
        try:
            self.socket = await websockets.connect(self.url, max_size=None)
        except (OSError, websockets.InvalidHandshake) as exc:
            raise CallFailed("UNAVAILABLE", f"{self.url}: {exc}") from None
        session = {"input_audio_format": WS_FORMATS[encoding], "output_audio_format": WS_FORMATS[encoding],
                   "input_sample_rate": rate, "output_sample_rate": rate, "turn_detection": None}
        names = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "max_new_tokens": "max_output_tokens"}
        session.update({names[k]: v for k, v in sampling.items() if k in names and v is not None})
        await self._send({"type": "session.update", "session": session})

    async def _send(self, event: dict) -> None:
        try:
            await self.socket.send(json.dumps(event))
        except websockets.ConnectionClosed as exc:
            raise CallFailed("CLOSED", str(exc)) from None

    async def audio(self, frame: bytes) -> None:
        await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()})

    async def end_of_turn(self) -> None:
        await self._send({"type": "input_audio_buffer.commit"})

    async def done_writing(self) -> None:
        """A WebSocket has no half-close: the caller has already waited for its last reply."""
        await self.socket.close()

    async def read(self):
        try:
            event = json.loads(await self.socket.recv())
        except websockets.ConnectionClosedOK:
            return None
        except websockets.ConnectionClosed as exc:
            raise CallFailed("CLOSED", str(exc)) from None
        kind = event.get("type")
        if kind == "session.created":
            return "started", event["session"]["id"]
        if kind == "response.audio.delta":
            return "audio", base64.b64decode(event["delta"])
        if kind == "response.text.delta":
            return "text", event["delta"]
        if kind == "response.done":
            response = event["response"]
            server = {k: round(v, 2) for k, v in response.get("latency", {}).items()}
            return "ended", {"reason": STATUS.get(response["status"], response["status"]), "text": response.get("text", ""),
                             "server": server}
        if kind == "error":
            error = event["error"]
            raise CallFailed(error.get("code") or error.get("type", "error"), error.get("message", ""))
        return kind, None

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
