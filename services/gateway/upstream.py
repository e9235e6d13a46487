"""The gateway's side of gRPC VoiceChat: one channel, API keys forwarded, statuses mapped to HTTP."""

from __future__ import annotations

import asyncio

import grpc
from fastapi import HTTPException, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glmvoice.telemetry import inject_trace
from glmvoice.v1 import voice_chat_pb2 as pb
from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub
from services.tls import TlsFiles, secure_channel

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_error(exc: grpc.aio.AioRpcError) -> HTTPException:
    return HTTPException(HTTP_STATUS.get(exc.code(), 500), detail=exc.details() or exc.code().name)


def key_metadata(headers, query=None) -> list[tuple[str, str]]:
    """The caller's API key, passed on as gRPC metadata: the orchestrator checks it (one key file for both).
    Browsers cannot set headers on a WebSocket, so `?api_key=` is accepted there."""
    if headers.get("authorization"):
        return [("authorization", headers["authorization"])]
    if headers.get("x-api-key"):
        return [("x-api-key", headers["x-api-key"])]
    if query is not None and query.get("api_key"):
        return [("x-api-key", query["api_key"])]
    return []


class Upstream:
    def __init__(self, addr: str, tls: TlsFiles | None = None):
        self.addr = addr
        self.channel = secure_channel(addr, tls)
        self.stub = VoiceChatStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def ready(self) -> bool:
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service="glmvoice.v1.VoiceChat"), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def turn(self, headers, turn: list[pb.ConverseRequest], timeout_s: float, tracer=None):
        """-> an async iterator over the orchestrator's responses, its first one already read (so
        authentication and validation errors become HTTP statuses before any body is sent)."""
        # With tracing on, the turn's spans in the orchestrator join this request's trace.
        span = tracer.start_span("gateway.chat") if tracer is not None else None
        metadata = inject_trace(key_metadata(headers), span)
        call = self.stub.Converse(metadata=metadata, timeout=timeout_s)

        async def write(messages):
            try:
                for message in messages:
                    await call.write(message)
                await call.done_writing()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                pass  # the call failed: reading it reports the status

        # The config alone first: a refused call (authentication, admission) then fails on its first read,
        # with no writes racing the server's abort.
        try:
            await call.write(turn[0])
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            if span is not None:
                span.end()
            raise http_error(exc) from exc
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            first = await call.read()
        writer = asyncio.create_task(write(turn[1:]))
        if first is grpc.aio.EOF:
            raise HTTPException(502, detail="the orchestrator closed the stream without a reply")

        async def responses():
            try:
                yield first
                while (response := await call.read()) is not grpc.aio.EOF:
                    yield response
                await writer
            finally:
                if span is not None:
                    span.end()

        return responses()

    async def close(self) -> None:
        await self.channel.close()


def upstream(request: Request) -> Upstream:
    return request.app.state.upstream
