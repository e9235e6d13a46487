"""The gateway's side of gRPC VoiceChat: one channel, API keys forwarded, statuses mapped to HTTP."""

from __future__ import annotations

import grpc
from fastapi import HTTPException, Request
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub

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
    def __init__(self, addr: str):
        self.addr = addr
        self.channel = grpc.aio.insecure_channel(addr)
        self.stub = VoiceChatStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def ready(self) -> bool:
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service="glmvoice.v1.VoiceChat"), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.channel.close()


def upstream(request: Request) -> Upstream:
    return request.app.state.upstream
