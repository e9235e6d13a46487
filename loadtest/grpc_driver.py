"""The gRPC door: glmvoice.v1.VoiceChat.Converse, one bidirectional stream per session (a caller.Transport)."""

from __future__ import annotations

import asyncio

import grpc

from glmvoice.client import config_request
from glmvoice.v1 import voice_chat_pb2 as pb
from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub
from loadtest.caller import CallFailed

REASONS = {pb.TURN_END_REASON_COMPLETED: "completed", pb.TURN_END_REASON_LENGTH: "length",
           pb.TURN_END_REASON_CANCELLED: "cancelled"}
STAGE_FIELDS = [f.name for f in pb.TurnLatency.DESCRIPTOR.fields]


class GrpcTransport:
    def __init__(self, channel: grpc.aio.Channel, api_key: str | None = None):
        self.stub = VoiceChatStub(channel)
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else None
        self.call = None

    async def _write(self, request: pb.ConverseRequest) -> None:
        try:
            await self.call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._raise_status()

    async def _raise_status(self):
        code = await self.call.code()
        raise CallFailed(code.name if code is not None else "UNKNOWN", await self.call.details() or "")

    async def open(self, encoding: str, rate: int, sampling: dict) -> None:
        self.call = self.stub.Converse(metadata=self.metadata)
        await self._write(config_request(encoding, rate, encoding, rate, **sampling))

    async def audio(self, frame: bytes) -> None:
        await self._write(pb.ConverseRequest(audio=pb.AudioChunk(data=frame)))

    async def end_of_turn(self) -> None:
        await self._write(pb.ConverseRequest(end_of_turn=pb.EndOfTurn()))

    async def done_writing(self) -> None:
        try:
            await self.call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._raise_status()

    async def read(self):
        try:
            response = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            raise CallFailed(exc.code().name, exc.details() or "") from None
        if response is grpc.aio.EOF:
            return None
        kind = response.WhichOneof("event")
        if kind == "session_started":
            return "started", response.session_started.session_id
        if kind == "audio":
            return "audio", response.audio.data
        if kind == "text_delta":
            return "text", response.text_delta.text
        if kind == "turn_ended":
            ended = response.turn_ended
            server = {name: round(getattr(ended.latency, name), 2) for name in STAGE_FIELDS}
            return "ended", {"reason": REASONS.get(ended.reason, ""), "text": ended.text, "server": server}
        return kind, None  # speech_started / speech_stopped (server VAD)

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
