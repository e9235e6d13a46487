"""Where the calls go: `NAME=ADDR` on the command line. ADDR `host:port` (or `grpc://host:port`) is the
orchestrator's gRPC VoiceChat; `ws://host:port/v1/realtime` is the gateway's WebSocket."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from loadtest.caller import Caller
from loadtest.grpc_driver import GrpcTransport
from loadtest.plan import SessionPlan
from loadtest.records import TurnRecord


@dataclass(frozen=True)
class Target:
    name: str
    addr: str
    api_key: str | None = None

    @classmethod
    def parse(cls, spec: str, api_key: str | None = None) -> Target:
        name, sep, addr = spec.partition("=")
        if not sep or not name or not addr:
            raise ValueError(f"a target is NAME=ADDR (e.g. ours=127.0.0.1:50051), got {spec!r}")
        return cls(name, addr, api_key)

    @property
    def websocket(self) -> bool:
        return self.addr.startswith(("ws://", "wss://"))

    @property
    def grpc_addr(self) -> str:
        return self.addr.removeprefix("grpc://")

    async def dial(self, plan: SessionPlan, t0: float) -> list[TurnRecord]:
        """One session on its own connection, as separate callers would have."""
        if self.websocket:
            from loadtest.ws_driver import WsTransport

            return await Caller(WsTransport(self.addr, self.api_key), plan, t0).run()
        async with grpc.aio.insecure_channel(self.grpc_addr) as channel:
            return await Caller(GrpcTransport(channel, self.api_key), plan, t0).run()
