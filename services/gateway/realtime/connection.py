"""`WebSocket /v1/realtime`: one realtime conversation, the OpenAI Realtime protocol over VoiceChat.Converse.

One loop handles everything in order: client events and upstream responses arrive on one inbox, so the
conversation state (items, the response in progress, the input buffer) has a single writer.
Client events are dispatched through `handlers` (registry); `conversation.py` holds the client-event
side, this module the socket, authentication and the upstream side.
"""

from __future__ import annotations

import asyncio
import json

import grpc
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from glmvoice.v1 import voice_chat_pb2 as pb
from services.gateway.realtime.conversation import Conversation
from services.gateway.realtime.server_events import Events, ProtocolError
from services.gateway.realtime.session_config import VOICE, SessionSettings
from services.gateway.realtime.upstream_stream import UpstreamStream
from services.gateway.upstream import HTTP_STATUS

# Browsers cannot set headers on a WebSocket: they offer subprotocols "realtime",
# "openai-insecure-api-key.<key>" and (beta) "openai-beta.realtime-v1".
KEY_SUBPROTOCOL = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
ERROR_TYPES = {grpc.StatusCode.INVALID_ARGUMENT: "invalid_request_error", grpc.StatusCode.NOT_FOUND: "invalid_request_error",
               grpc.StatusCode.UNAUTHENTICATED: "invalid_request_error", grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limit_error"}


def subprotocols(websocket: WebSocket) -> list[str]:
    header = websocket.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def auth_metadata(websocket: WebSocket, key_metadata) -> list[tuple[str, str]]:
    """The API key from `Authorization: Bearer`, `X-API-Key`, `?api_key=` or the browser subprotocol."""
    metadata = key_metadata(websocket.headers, websocket.query_params)
    if metadata:
        return metadata
    keys = [p.removeprefix(KEY_SUBPROTOCOL) for p in subprotocols(websocket) if p.startswith(KEY_SUBPROTOCOL)]
    return [("authorization", f"Bearer {keys[0]}")] if keys else []


def is_beta(websocket: WebSocket) -> bool:
    return "realtime=v1" in websocket.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in subprotocols(websocket)


class RealtimeSocket:
    def __init__(self, websocket: WebSocket, upstream, metadata):
        self.websocket, self.stub, self.metadata = websocket, upstream.stub, metadata
        self.events = Events(beta=is_beta(websocket))
        model = websocket.query_params.get("model") or VOICE
        self.settings = SessionSettings(model=model)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.generation = 0
        self.stream: UpstreamStream | None = None
        self.held: list | None = None  # upstream messages waiting for a new stream
        self.reopen_pending = False
        self.conversation = Conversation(self)
        self.closed = False

    # ---- socket ------------------------------------------------------------------------------------
    async def send(self, *events: dict | None) -> None:
        for event in events:
            if event is not None and not self.closed:
                await self.websocket.send_text(json.dumps(event, ensure_ascii=False))

    async def run(self) -> None:
        resume = self.websocket.query_params.get("glmvoice_session_id", "")
        try:
            await self.open_stream(resume)
        except grpc.aio.AioRpcError as exc:
            await self.refuse(exc)
            return
        offered = subprotocols(self.websocket)
        await self.websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        await self.send(self.events.make("session.created", session=self.session_json()),
                        self.events.make("conversation.created", conversation={"id": self.stream.session_id,
                                                                               "object": "realtime.conversation"}))
        reader = asyncio.create_task(self.read_client())
        try:
            await self.loop()
        finally:
            self.closed = True
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.stream is not None:
                await self.stream.close()

    async def refuse(self, exc: grpc.aio.AioRpcError) -> None:
        """Before the handshake: an HTTP status with an OpenAI-style error body (401 for a bad key)."""
        status = HTTP_STATUS.get(exc.code(), 500)
        body = {"error": {"type": ERROR_TYPES.get(exc.code(), "server_error"), "code": exc.code().name.lower(),
                          "message": exc.details() or exc.code().name, "param": None}}
        if "websocket.http.response" in self.websocket.scope.get("extensions", {}):
            await self.websocket.send_denial_response(JSONResponse(body, status_code=status))
        else:
            await self.websocket.close(code=1008, reason=body["error"]["message"][:120])

    async def read_client(self) -> None:
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await self.inbox.put(("client", None, message["text"]))
                else:  # the protocol is JSON text; a binary frame gets an error event, not a dropped socket
                    await self.inbox.put(("client", None, None))
        except (WebSocketDisconnect, RuntimeError):
            pass
        await self.inbox.put(("client_closed", None, None))

    async def loop(self) -> None:
        while True:
            source, generation, payload = await self.inbox.get()
            if source == "client":
                await self.on_client(payload)
            elif source == "client_closed":
                return
            elif generation != self.generation:
                continue  # a stream we replaced
            elif source == "upstream":
                await self.on_upstream(payload)
            else:  # the upstream call failed or ended: the conversation cannot go on
                if source == "upstream_error":
                    await self.send(self.upstream_error(payload))
                await self.websocket.close(code=1011 if source == "upstream_error" else 1000)
                return

    def upstream_error(self, exc: grpc.aio.AioRpcError) -> dict:
        return self.events.error(exc.details() or exc.code().name, code=exc.code().name.lower(),
                                 kind=ERROR_TYPES.get(exc.code(), "server_error"))

    async def on_client(self, raw: str | None) -> None:
        if raw is None:
            await self.send(self.events.error("binary frames are not events: send JSON text", code="invalid_json"))
            return
        try:
            event = json.loads(raw)
        except ValueError as exc:
            await self.send(self.events.error(f"the event is not JSON: {exc}", code="invalid_json"))
            return
        if not isinstance(event, dict):
            await self.send(self.events.error("the event must be a JSON object", code="invalid_json"))
            return
        client_event_id = event.get("event_id")
        handler = self.conversation.handlers.get(event.get("type"))
        try:
            if handler is None:
                raise ProtocolError(f"unknown event type {event.get('type')!r}", code="unknown_event", param="type")
            await handler(event)
        except ProtocolError as exc:
            await self.send(self.events.error(exc.message, exc.code, exc.param, client_event_id))

    async def on_upstream(self, response: pb.ConverseResponse) -> None:
        await self.conversation.on_upstream(response)
        if self.reopen_pending and self.conversation.response is None:
            await self.switch_stream()

    # ---- upstream streams ----------------------------------------------------------------------------
    def session_json(self) -> dict:
        return self.settings.to_json(self.stream.session_id if self.stream else "", beta=self.events.beta)

    async def open_stream(self, session_id: str) -> None:
        stream = UpstreamStream(self.stub, self.metadata, self.generation, self.inbox)
        await stream.open(self.settings.converse_config(session_id))
        self.stream = stream

    def send_upstream(self, message: pb.ConverseRequest) -> None:
        if self.held is not None:
            self.held.append(message)
        else:
            self.stream.send(message)

    async def reopen(self) -> None:
        """A new Converse stream with the current settings, resuming the session. A response in progress
        is cancelled first (so the history keeps what was sent); input meanwhile waits for the new stream."""
        if self.conversation.response is not None:
            self.conversation.response.cancel_reason = "client_cancelled"
            self.stream.send(pb.ConverseRequest(cancel=pb.Cancel()))
            self.reopen_pending, self.held = True, self.held or []
            return
        await self.switch_stream()

    async def switch_stream(self) -> None:
        old, held = self.stream, self.held or []
        self.reopen_pending, self.held = False, None
        self.generation += 1
        await old.close()
        session_id = self.settings.extension.get("session_id") or old.session_id
        try:
            await self.open_stream(session_id)
        except grpc.aio.AioRpcError as exc:
            self.stream = old  # closed; the loop reports the failure and ends the socket
            await self.inbox.put(("upstream_error", self.generation, exc))
            return
        self.conversation.reset_input()
        for message in held:
            self.stream.send(message)


async def realtime_session(websocket: WebSocket, upstream, key_metadata) -> None:
    await RealtimeSocket(websocket, upstream, auth_metadata(websocket, key_metadata)).run()

