"""One VoiceChat.Converse stream behind a realtime socket: opened with a SessionConfig, written through a
queue, read by a task that hands each response (or the call's failure) to the socket loop's inbox.

The socket opens a new stream (resuming the same session id; the history is in Redis) when
`session.update` changes what the config fixes (formats, VAD, sampling) or `input_audio_buffer.clear`
must drop audio the server VAD already holds.
"""

from __future__ import annotations

import asyncio

import grpc

from glmvoice.v1 import voice_chat_pb2 as pb


class UpstreamStream:
    def __init__(self, stub, metadata, generation: int, inbox: asyncio.Queue):
        self.stub, self.metadata, self.generation, self.inbox = stub, metadata, generation, inbox
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.call = None
        self.reader: asyncio.Task | None = None
        self.session_id = ""

    async def open(self, config: pb.ConverseRequest) -> pb.SessionStarted:
        """Sends the config and waits for SessionStarted; grpc.aio.AioRpcError when the server refuses."""
        async def requests():
            yield config
            while (message := await self.outgoing.get()) is not None:
                yield message

        self.call = self.stub.Converse(requests(), metadata=self.metadata)
        first = await self.call.read()
        if first is grpc.aio.EOF or first.WhichOneof("event") != "session_started":
            raise ConnectionError("the orchestrator did not start the session")
        self.session_id = first.session_started.session_id
        self.reader = asyncio.create_task(self._read())
        return first.session_started

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                await self.inbox.put(("upstream", self.generation, response))
            await self.inbox.put(("upstream_closed", self.generation, None))
        except grpc.aio.AioRpcError as exc:
            await self.inbox.put(("upstream_error", self.generation, exc))
        except asyncio.CancelledError:
            pass

    def send(self, message: pb.ConverseRequest) -> None:
        self.outgoing.put_nowait(message)

    async def close(self) -> None:
        """Ends the stream without answering anything open (cancel: the history is left as it is)."""
        self.outgoing.put_nowait(None)
        if self.call is not None:
            self.call.cancel()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
