"""HTTP front door: `POST /v1/chat` (one turn), `WebSocket /v1/realtime` (a live conversation),
`/healthz`, `/readyz`, `/metrics`, and the OpenAPI docs at /docs.

Every turn is a gRPC VoiceChat.Converse stream to the orchestrator; the caller's API key travels with it
and the orchestrator checks it, so HTTP and gRPC share one key file and one notion of session owner.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import grpc
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, Field

from glmvoice.audio import SUPPORTED_RATES, decode, encode, read_wav, resample, wav_bytes
from glmvoice.client import config_request
from glmvoice.v1 import voice_chat_pb2 as pb
from services.gateway.realtime import realtime_session
from services.gateway.settings import GatewaySettings
from services.gateway.upstream import Upstream, http_error, key_metadata
from services.orchestrator.auth import ApiKeys
from services.orchestrator.errors import Unauthenticated

CHUNK_MS = 100  # WAV uploads go upstream in 100 ms chunks (the orchestrator takes at most 1 s per chunk)
END_REASONS = {v: k.removeprefix("TURN_END_REASON_").lower() for k, v in pb.TurnEndReason.items()}


class ChatRequest(BaseModel):
    """A JSON turn: base64 WAV audio or text (one of them)."""

    audio: str | None = Field(None, description="base64 of a WAV file (mono or stereo PCM, any supported rate)")
    text: str | None = Field(None, description="a typed user turn instead of audio")
    session_id: str = Field("", description="continue this session (its id comes back in every reply)")
    style: str = Field("", description="style instruction, e.g. 'speak slowly and cheerfully'")
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int | None = None
    output_sample_rate: int = Field(22050, description="8000, 16000, 22050, 24000 or 48000")
    response_format: Literal["json", "wav", "sse"] | None = Field(None, description="default: from Accept, else json")


def _latency(turn: pb.TurnEnded) -> dict:
    return {field.name: getattr(turn.latency, field.name) for field in pb.TurnLatency.DESCRIPTOR.fields}


def _turn_event(turn: pb.TurnEnded) -> dict:
    return {"reason": END_REASONS[turn.reason], "text": turn.text, "audio_seconds": turn.audio_seconds, "latency": _latency(turn)}


def _audio_requests(samples: np.ndarray, rate: int):
    if rate not in SUPPORTED_RATES:
        samples, rate = resample(samples, rate, 16000), 16000
    step = rate * CHUNK_MS // 1000
    return rate, [pb.ConverseRequest(audio=pb.AudioChunk(data=encode(samples[i : i + step], "LINEAR16")))
                  for i in range(0, len(samples), step)] + [pb.ConverseRequest(end_of_turn=pb.EndOfTurn())]


def _turn_requests(body: ChatRequest) -> list[pb.ConverseRequest]:
    if (body.audio is None) == (body.text is None):
        raise HTTPException(400, detail="send exactly one of `audio` (base64 WAV) and `text`")
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "max_new_tokens": body.max_new_tokens, "seed": body.seed}
    if body.text is not None:
        config = config_request("LINEAR16", 16000, "LINEAR16", body.output_sample_rate, session_id=body.session_id,
                                style=body.style, **sampling)
        return [config, pb.ConverseRequest(text=pb.TextTurn(text=body.text))]
    try:
        samples, rate = read_wav(base64.b64decode(body.audio, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, detail=f"`audio` must be a base64 WAV file: {exc}") from exc
    rate, audio = _audio_requests(samples, rate)
    config = config_request("LINEAR16", rate, "LINEAR16", body.output_sample_rate, session_id=body.session_id,
                            style=body.style, **sampling)
    return [config] + audio


def _response_format(body: ChatRequest, accept: str) -> str:
    if body.response_format:
        return body.response_format
    if "text/event-stream" in accept:
        return "sse"
    if "audio/wav" in accept or "audio/x-wav" in accept:
        return "wav"
    return "json"


async def _whole_reply(responses, fmt: str, rate: int) -> Response:
    """The whole turn as one WAV or JSON body (the non-streaming formats)."""
    session, text, audio, turn = "", [], [], None
    try:
        async for response in responses:
            kind = response.WhichOneof("event")
            session = response.session_started.session_id if kind == "session_started" else session
            text += [response.text_delta.text] if kind == "text_delta" else []
            audio += [response.audio.data] if kind == "audio" else []
            turn = response.turn_ended if kind == "turn_ended" else turn
    except grpc.aio.AioRpcError as exc:
        raise http_error(exc) from exc
    wav = wav_bytes(decode(b"".join(audio), "LINEAR16"), rate)
    if fmt == "wav":
        return Response(wav, media_type="audio/wav", headers={"X-Session-Id": session})
    return JSONResponse({
        "session_id": session, "text": "".join(text), "sample_rate": rate,
        "audio": base64.b64encode(wav).decode(), "turn": _turn_event(turn) if turn else None,
    })


async def _sse(responses):
    def event(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        async for response in responses:
            kind = response.WhichOneof("event")
            if kind == "session_started":
                yield event("session_started", {"session_id": response.session_started.session_id})
            elif kind == "text_delta":
                yield event("text_delta", {"text": response.text_delta.text})
            elif kind == "audio":  # PCM16 little-endian at output_sample_rate
                yield event("audio", {"pcm16": base64.b64encode(response.audio.data).decode()})
            elif kind == "turn_ended":
                yield event("turn_ended", _turn_event(response.turn_ended))
    except grpc.aio.AioRpcError as exc:
        yield event("error", {"status": http_error(exc).status_code, "message": exc.details()})


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) passes `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, detail=f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class GatewayState:
    """What the handlers share, kept on app.state.gateway: settings, keys, tracer and the metrics."""

    settings: GatewaySettings
    keys: ApiKeys
    tracer: object
    registry: CollectorRegistry
    requests_total: Counter
    websockets: Gauge

    @classmethod
    def create(cls, settings: GatewaySettings, tracer=None) -> GatewayState:
        # Without a keys file (local stacks) the orchestrator is the only check; with it, callers are refused here first.
        registry = CollectorRegistry()
        return cls(
            settings, ApiKeys.from_file(settings.api_keys_file), tracer, registry,
            Counter("glmvoice_gateway_requests", "HTTP turns by route and status", ["route", "status"], registry=registry),
            Gauge("glmvoice_gateway_active_websockets", "Open /v1/realtime connections", registry=registry),
        )


async def chat(
    request: Request,
    session_id: str = Query("", description="WAV bodies: continue this session"),
    output_sample_rate: int = Query(22050, description="WAV bodies: reply audio rate"),
    max_new_tokens: int | None = Query(None, description="WAV bodies: reply budget in LM ids"),
    temperature: float | None = Query(None, description="WAV bodies: sampling temperature (0: greedy)"),
    style: str = Query("", description="WAV bodies: style instruction"),
    response_format: Literal["json", "wav", "sse"] | None = Query(None),
):
    # POST /v1/chat: one turn (no docstring: FastAPI would publish it as the OpenAPI description).
    gw: GatewayState = request.app.state.gateway
    # Authenticate, then read at most max_body_bytes: nothing is buffered or decoded for a stranger.
    try:
        gw.keys.identity({k.lower(): v for k, v in request.headers.items()})
    except Unauthenticated as exc:
        gw.requests_total.labels(route="chat", status="401").inc()
        raise HTTPException(401, detail=str(exc)) from exc
    body_bytes = await _bounded_body(request, gw.settings.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    try:
        if content_type in ("audio/wav", "audio/x-wav", "audio/wave"):
            body = ChatRequest(
                audio=base64.b64encode(body_bytes).decode(), session_id=session_id, style=style,
                output_sample_rate=output_sample_rate, response_format=response_format,
                max_new_tokens=max_new_tokens, temperature=temperature,
            )
        elif content_type == "application/json":
            body = ChatRequest.model_validate_json(body_bytes)
        else:
            raise HTTPException(415, detail="send audio/wav or application/json")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise HTTPException(400, detail=str(exc)) from exc
    fmt = _response_format(body, request.headers.get("accept", ""))
    try:
        responses = await request.app.state.upstream.turn(request.headers, _turn_requests(body),
                                                          gw.settings.request_timeout_s, gw.tracer)
    except HTTPException as exc:
        gw.requests_total.labels(route="chat", status=str(exc.status_code)).inc()
        raise
    gw.requests_total.labels(route="chat", status="200").inc()
    if fmt == "sse":
        return StreamingResponse(_sse(responses), media_type="text/event-stream")
    return await _whole_reply(responses, fmt, body.output_sample_rate)


async def realtime(websocket: WebSocket):
    """WebSocket /v1/realtime: a live conversation (services/gateway/realtime.py)."""
    gw: GatewayState = websocket.app.state.gateway
    gw.websockets.inc()
    try:
        await realtime_session(websocket, websocket.app.state.upstream, key_metadata)
    finally:
        gw.websockets.dec()


async def healthz():
    return {"status": "ok"}


async def readyz(request: Request):
    if await request.app.state.upstream.ready():
        return {"status": "ready"}
    raise HTTPException(503, detail=f"orchestrator at {request.app.state.gateway.settings.orchestrator_addr} is not serving")


async def metrics(request: Request):
    return Response(generate_latest(request.app.state.gateway.registry), media_type=CONTENT_TYPE_LATEST)


@asynccontextmanager
async def _lifespan(app: FastAPI):
    settings = app.state.gateway.settings
    app.state.upstream = Upstream(settings.orchestrator_addr, settings.tls if settings.orchestrator_tls else None)
    yield
    await app.state.upstream.close()


def create_app(settings: GatewaySettings, tracer=None) -> FastAPI:
    """The gateway's routes over the handlers above; the orchestrator connection opens with the app."""
    app = FastAPI(
        title="glmvoice gateway", version="1", lifespan=_lifespan,
        description="GLM-4-Voice spoken conversation over HTTP and WebSocket. Authenticate with "
        "`Authorization: Bearer <key>` or `X-API-Key` (the keys of the gRPC API).",
    )
    app.state.gateway = GatewayState.create(settings, tracer)
    app.add_api_route(
        "/v1/chat", chat, methods=["POST"],
        summary="One turn: WAV or JSON in; JSON, WAV or server-sent events out",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": ChatRequest.model_json_schema()},
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
        }}},
        responses={200: {"content": {"application/json": {}, "audio/wav": {}, "text/event-stream": {}}}},
    )
    app.add_api_websocket_route("/v1/realtime", realtime)
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="the process is alive")
    app.add_api_route("/readyz", readyz, methods=["GET"], summary="the orchestrator is SERVING")
    app.add_api_route("/metrics", metrics, methods=["GET"], summary="Prometheus metrics", include_in_schema=False)
    return app
