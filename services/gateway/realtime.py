"""`WebSocket /v1/realtime`: JSON events in the style of realtime voice APIs, over one Converse stream.

Client events: `session.update` (first, optional: formats, turn detection, instructions, sampling,
session_id), `input_audio_buffer.append` {audio: base64}, `input_audio_buffer.commit`, `response.cancel`,
`conversation.item.create` {item: {content: [{type: "input_text", text}]}}.
Server events: `session.created`, `input_audio_buffer.speech_started` / `.speech_stopped`,
`response.text.delta`, `response.audio.delta` {delta: base64 in the output format}, `response.done`,
`error` (a bad event is reported and skipped; an upstream failure is reported and closes the socket).
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import grpc
from fastapi import WebSocket, WebSocketDisconnect

from glmvoice.client import config_request
from glmvoice.v1 import voice_chat_pb2 as pb

FORMATS = {"pcm16": "LINEAR16", "g711_ulaw": "MULAW", "g711_alaw": "ALAW"}
STATUS = {pb.TURN_END_REASON_COMPLETED: "completed", pb.TURN_END_REASON_LENGTH: "incomplete",
          pb.TURN_END_REASON_CANCELLED: "cancelled"}


class BadEvent(ValueError):
    pass


def session_config(session: dict) -> pb.ConverseRequest:
    def fmt(key: str, default: str) -> str:
        name = session.get(key, default)
        if name not in FORMATS:
            raise BadEvent(f"session.{key} must be one of {sorted(FORMATS)}, got {name!r}")
        return FORMATS[name]

    detection = session.get("turn_detection", {"type": "server_vad"})
    sampling = {"temperature": session.get("temperature"), "top_p": session.get("top_p"),
                "max_new_tokens": session.get("max_output_tokens"), "seed": session.get("seed")}
    return config_request(
        fmt("input_audio_format", "pcm16"), int(session.get("input_sample_rate", 16000)),
        fmt("output_audio_format", "pcm16"), int(session.get("output_sample_rate", 24000)),
        server_vad=detection is not None and detection.get("type") == "server_vad",
        vad_silence_ms=int((detection or {}).get("silence_duration_ms", 0)),
        session_id=session.get("session_id", ""), style=session.get("instructions", ""), **sampling,
    )


def client_event(event: dict) -> pb.ConverseRequest:
    kind = event.get("type")
    if kind == "input_audio_buffer.append":
        try:
            return pb.ConverseRequest(audio=pb.AudioChunk(data=base64.b64decode(event.get("audio", ""), validate=True)))
        except binascii.Error as exc:
            raise BadEvent(f"input_audio_buffer.append: audio is not base64: {exc}") from exc
    if kind == "input_audio_buffer.commit":
        return pb.ConverseRequest(end_of_turn=pb.EndOfTurn())
    if kind == "response.cancel":
        return pb.ConverseRequest(cancel=pb.Cancel())
    if kind == "conversation.item.create":
        content = event.get("item", {}).get("content", [])
        text = "".join(part.get("text", "") for part in content if part.get("type") == "input_text")
        return pb.ConverseRequest(text=pb.TextTurn(text=text))
    if kind == "session.update":
        raise BadEvent("session.update is only accepted as the first event")
    raise BadEvent(f"unknown event type {kind!r}")


def server_event(response: pb.ConverseResponse) -> dict:
    kind = response.WhichOneof("event")
    if kind == "session_started":
        return {"type": "session.created", "session": {"id": response.session_started.session_id,
                                                      "turns": response.session_started.turns}}
    if kind == "speech_started":
        return {"type": "input_audio_buffer.speech_started", "audio_start_ms": response.speech_started.audio_ms}
    if kind == "speech_stopped":
        return {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": response.speech_stopped.audio_ms}
    if kind == "text_delta":
        return {"type": "response.text.delta", "delta": response.text_delta.text}
    if kind == "audio":
        return {"type": "response.audio.delta", "delta": base64.b64encode(response.audio.data).decode()}
    turn = response.turn_ended
    latency = {f.name: getattr(turn.latency, f.name) for f in pb.TurnLatency.DESCRIPTOR.fields}
    return {"type": "response.done", "response": {"status": STATUS.get(turn.reason, "completed"), "text": turn.text,
                                                  "audio_seconds": turn.audio_seconds, "latency": latency}}


def error_event(kind: str, message: str, code: str = "") -> dict:
    return {"type": "error", "error": {"type": kind, "code": code, "message": message}}


async def realtime_session(websocket: WebSocket, upstream, metadata) -> None:
    await websocket.accept()
    outgoing: asyncio.Queue = asyncio.Queue()
    try:
        first = await websocket.receive_json()
        config = session_config(first.get("session", {}) if first.get("type") == "session.update" else {})
        if first.get("type") != "session.update":
            outgoing.put_nowait(client_event(first))
    except BadEvent as exc:
        await websocket.send_json(error_event("invalid_request_error", str(exc)))
        await websocket.close(code=1008)
        return
    except WebSocketDisconnect:
        return

    async def requests():
        yield config
        while (message := await outgoing.get()) is not None:
            yield message

    call = upstream.stub.Converse(requests(), metadata=metadata)

    async def forward_responses():
        try:
            async for response in call:
                await websocket.send_json(server_event(response))
        except grpc.aio.AioRpcError as exc:
            kind = "invalid_request_error" if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else "server_error"
            await websocket.send_json(error_event(kind, exc.details() or "", exc.code().name))
        await websocket.close()

    forwarder = asyncio.create_task(forward_responses())
    try:
        while not forwarder.done():
            receive = asyncio.create_task(websocket.receive_json())
            done, _ = await asyncio.wait({receive, forwarder}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            try:
                outgoing.put_nowait(client_event(receive.result()))
            except (BadEvent, ValueError) as exc:
                await websocket.send_json(error_event("invalid_request_error", str(exc)))
    except WebSocketDisconnect:
        pass
    finally:
        outgoing.put_nowait(None)
        if not forwarder.done():
            call.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
