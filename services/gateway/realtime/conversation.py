"""The conversation behind a realtime socket: client events in, VoiceChat requests out, and the items and
responses the client sees.

With server VAD, appended audio streams to the orchestrator at once (it tokenizes while the user speaks),
and its VAD commits the turn and starts the reply. With `turn_detection: null`, appended audio waits here
until `input_audio_buffer.commit` (so `clear` can drop it), and only `response.create` starts a reply.
Text items wait for `response.create` in both modes, as the protocol says.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from glmvoice.v1 import voice_chat_pb2 as pb
from services.gateway.realtime.responses import ResponseStream
from services.gateway.realtime.server_events import ProtocolError, new_id
from services.gateway.realtime.session_config import (
    NO_TOOLS,
    VOICE,
    apply_update,
    parse_audio_format,
    parse_max_tokens,
    parse_modalities,
)

if TYPE_CHECKING:
    from services.gateway.realtime.connection import RealtimeSocket

MAX_APPEND_BYTES = 15 * 1024 * 1024  # the protocol's limit per append event
CHUNK_MS = 100  # audio goes upstream in chunks of at most this (the orchestrator takes at most 1 s)


def user_item(item_id: str, content: list[dict]) -> dict:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
            "content": content}


class Conversation:
    def __init__(self, socket: RealtimeSocket):
        self.socket = socket
        self.items: dict[str, dict] = {}  # what the client sees, in order
        self.response: ResponseStream | None = None
        self.awaiting = False  # a reply was asked for (VAD stop, commit, response.create) and has not ended
        self.pending_text: list[str] = []  # ids of text items waiting for response.create
        self.pending_audio = False  # committed audio (VAD off) waiting for response.create
        self.buffer = bytearray()  # VAD off: appended audio not committed yet
        self.buffered = 0  # VAD on: bytes appended since the last commit
        self.speech_item: str | None = None  # the user item server VAD is hearing
        self.next_response: dict = {}  # modality and metadata of the response asked for
        self.truncating: tuple[str, int] | None = None
        self.audio_ms: dict[str, tuple[int, int]] = {}  # assistant item -> (upstream generation, ms of audio sent)
        self.handlers = {
            "session.update": self.session_update,
            "input_audio_buffer.append": self.append,
            "input_audio_buffer.commit": self.commit,
            "input_audio_buffer.clear": self.clear,
            "conversation.item.create": self.item_create,
            "conversation.item.truncate": self.item_truncate,
            "conversation.item.delete": self.item_delete,
            "conversation.item.retrieve": self.item_retrieve,
            "response.create": self.response_create,
            "response.cancel": self.response_cancel,
            "output_audio_buffer.clear": self.output_clear,
        }

    @property
    def events(self):
        return self.socket.events

    @property
    def vad(self) -> bool:
        return self.socket.settings.turn_detection is not None

    @property
    def last_item(self) -> str | None:
        return next(reversed(self.items), None)

    def reset_input(self) -> None:
        """A new upstream stream holds no audio and no open turn."""
        self.buffered, self.speech_item, self.pending_audio, self.awaiting = 0, None, False, False

    async def add_item(self, item: dict) -> None:
        previous = self.last_item
        self.items[item["id"]] = item
        await self.socket.send(self.events.make("conversation.item.added", previous_item_id=previous, item=self.events.item(item)),
                               self.events.make("conversation.item.done", previous_item_id=previous, item=self.events.item(item)))

    def _audio_chunks(self, data: bytes):
        fmt = self.socket.settings.input_format
        width = 2 if fmt.codec == "LINEAR16" else 1
        step = fmt.rate * CHUNK_MS // 1000 * width
        for start in range(0, len(data), step):
            yield pb.ConverseRequest(audio=pb.AudioChunk(data=data[start : start + step]))

    def _decode_audio(self, value: Any, param: str) -> bytes:
        try:
            data = base64.b64decode(value if isinstance(value, str) else "", validate=True)
        except binascii.Error as exc:
            raise ProtocolError(f"{param} is not base64: {exc}", param=param) from exc
        if len(data) > MAX_APPEND_BYTES:
            raise ProtocolError(f"{param} exceeds {MAX_APPEND_BYTES} bytes", param=param)
        if self.socket.settings.input_format.codec == "LINEAR16" and len(data) % 2:
            raise ProtocolError(f"{param}: audio/pcm is 16-bit samples, got an odd number of bytes", param=param)
        return data

    # ---- session and input audio -------------------------------------------------------------------
    async def session_update(self, event: dict) -> None:
        socket = self.socket
        before = socket.settings
        socket.settings = apply_update(before, event.get("session"))
        resume = socket.settings.extension.get("session_id") != before.extension.get("session_id")
        if resume or socket.settings.converse_config("") != before.converse_config(""):
            await socket.reopen()
        await socket.send(self.events.make("session.updated", session=socket.session_json()))

    async def append(self, event: dict) -> None:
        data = self._decode_audio(event.get("audio"), "audio")
        if not self.vad:
            self.buffer += data
            return
        self.buffered += len(data)
        for message in self._audio_chunks(data):
            self.socket.send_upstream(message)

    async def commit(self, event: dict) -> None:
        fmt = self.socket.settings.input_format
        min_bytes = fmt.rate * (2 if fmt.codec == "LINEAR16" else 1) // 10
        held = len(self.buffer) if not self.vad else self.buffered
        if held < min_bytes:
            raise ProtocolError(f"buffer too small: expected at least 100 ms of audio, the buffer has "
                                f"{held * 100 // max(min_bytes, 1)} ms", code="input_audio_buffer_commit_empty")
        if self.vad and self.speech_item is None:  # the orchestrator's turns open when its VAD hears speech
            raise ProtocolError("server VAD has heard no speech in the buffer: nothing to commit",
                                code="input_audio_buffer_commit_empty")
        item_id = self.speech_item or new_id("item")
        previous = self.last_item
        if self.vad:  # the orchestrator ends the turn and answers it (server VAD creates responses)
            self.socket.send_upstream(pb.ConverseRequest(end_of_turn=pb.EndOfTurn()))
            self.awaiting, self.speech_item, self.buffered = True, None, 0
        else:
            for message in self._audio_chunks(bytes(self.buffer)):
                self.socket.send_upstream(message)
            self.buffer.clear()
            self.pending_audio = True
        await self.socket.send(self.events.make("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id))
        await self.add_item(user_item(item_id, [{"type": "input_audio", "transcript": None}]))

    async def clear(self, event: dict) -> None:
        if self.vad and self.speech_item is not None:  # the orchestrator holds an open turn: a new stream drops it
            await self.socket.reopen()
        self.buffer.clear()
        self.buffered = 0
        await self.socket.send(self.events.make("input_audio_buffer.cleared"))

    # ---- items -------------------------------------------------------------------------------------
    async def item_create(self, event: dict) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise ProtocolError("item must be an object", param="item")
        if item.get("type", "message") != "message":
            raise ProtocolError(f"item.type {item.get('type')!r} is not supported: {NO_TOOLS}", param="item.type")
        if item.get("role") != "user":
            raise ProtocolError(f"item.role {item.get('role')!r} is not supported: the history holds what was said "
                                "(user turns and the model's own replies); send instructions in session.update",
                                param="item.role")
        if event.get("previous_item_id") not in (None, self.last_item):
            raise ProtocolError("items are only appended: previous_item_id must be the last item or null",
                                param="previous_item_id")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise ProtocolError("item.content must be a non-empty list", param="item.content")
        kinds = {part.get("type") for part in content if isinstance(part, dict)}
        if kinds == {"input_text"}:
            text = "\n".join(str(part.get("text", "")) for part in content)
            if not text.strip():
                raise ProtocolError("item.content: the text is empty", param="item.content")
            item_id = item.get("id") or new_id("item")
            if item_id in self.items:
                raise ProtocolError(f"an item {item_id!r} exists", code="item_exists", param="item.id")
            self.pending_text.append(item_id)
            await self.add_item(user_item(item_id, [{"type": "input_text", "text": text}]))
        elif kinds == {"input_audio"} and not self.vad:
            pending, self.buffer = self.buffer, bytearray()  # the item is its own audio, not the buffer's
            self.buffer += b"".join(self._decode_audio(part.get("audio"), "item.content.audio") for part in content)
            try:
                await self.commit(event)
            finally:
                self.buffer = pending
        else:
            raise ProtocolError("item.content must be all input_text parts, or all input_audio parts with "
                                "turn_detection null", param="item.content")

    def _item(self, event: dict) -> tuple[str, dict]:
        item_id = event.get("item_id")
        if item_id not in self.items:
            raise ProtocolError(f"no item {item_id!r}", code="item_not_found", param="item_id")
        return item_id, self.items[item_id]

    async def item_retrieve(self, event: dict) -> None:
        _, item = self._item(event)
        await self.socket.send(self.events.make("conversation.item.retrieved", item=self.events.item(item)))

    async def item_delete(self, event: dict) -> None:
        item_id, _ = self._item(event)
        if item_id not in self.pending_text:
            raise ProtocolError("only a text item not yet answered can be deleted: answered turns are part of the "
                                "session's history (LM ids in Redis); truncate the last reply instead", param="item_id")
        self.pending_text.remove(item_id)
        del self.items[item_id]
        await self.socket.send(self.events.make("conversation.item.deleted", item_id=item_id))

    async def item_truncate(self, event: dict) -> None:
        item_id, item = self._item(event)
        assistant = [key for key, value in self.items.items() if value["role"] == "assistant"]
        if item["role"] != "assistant" or item_id != assistant[-1]:
            raise ProtocolError("only the last assistant item can be truncated", param="item_id")
        if event.get("content_index", 0) != 0:
            raise ProtocolError("content_index must be 0 (one audio part)", param="content_index")
        end = event.get("audio_end_ms")
        if isinstance(end, bool) or not isinstance(end, int) or end < 0:
            raise ProtocolError("audio_end_ms must be a non-negative integer", param="audio_end_ms")
        if self.response is not None and self.response.item_id == item_id:
            self.response.cancel_reason = "client_cancelled"
            generation, sent = self.socket.generation, self.response.audio_ms()
        else:
            generation, sent = self.audio_ms[item_id]
        if generation != self.socket.generation:
            raise ProtocolError("the reply was made before a session.update changed the audio settings: it can no "
                                "longer be truncated", param="item_id")
        if end > sent:
            raise ProtocolError(f"audio_end_ms {end} is past the item's {sent} ms of audio", param="audio_end_ms")
        self.truncating = (item_id, end)
        self.socket.send_upstream(pb.ConverseRequest(truncate=pb.Truncate(audio_end_ms=end)))

    # ---- responses ---------------------------------------------------------------------------------
    async def response_create(self, event: dict) -> None:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise ProtocolError("response must be an object", param="response")
        if self.response is not None:
            raise ProtocolError("a response is in progress", code="conversation_already_has_active_response")
        settings = self.socket.settings
        modality, instruction, metadata = settings.output_modalities[0], "", None
        for key, value in params.items():
            param = f"response.{key}"
            if key == "instructions" and isinstance(value, str):
                instruction = value
            elif key in ("output_modalities", "modalities"):
                modality = parse_modalities(value, param)[0]
            elif key == "metadata" and (value is None or isinstance(value, dict)):
                metadata = value
            elif key == "conversation" and value in (None, "auto"):
                continue
            elif key == "max_output_tokens" and parse_max_tokens(value, param) == settings.max_output_tokens:
                continue
            elif key in ("tools", "tool_choice") and value in ([], "auto", "none"):
                continue
            elif key == "voice" and value == VOICE:
                continue
            elif key == "audio" and isinstance(value, dict) and set(value) <= {"output"} and \
                    parse_audio_format((value.get("output") or {}).get("format", settings.output_format.to_json()),
                                  f"{param}.output.format") == settings.output_format and \
                    (value.get("output") or {}).get("voice", VOICE) == VOICE:
                continue
            else:
                raise ProtocolError(f"{param}={value!r} is not supported per response (out-of-band responses, "
                                    "input overrides and per-response budgets or formats are session settings)", param=param)
        if self.pending_text:
            texts = [self.items[item_id]["content"][0]["text"] for item_id in self.pending_text]
            self.socket.send_upstream(pb.ConverseRequest(text=pb.TextTurn(text="\n".join(texts), instruction=instruction)))
        elif self.pending_audio:
            self.socket.send_upstream(pb.ConverseRequest(end_of_turn=pb.EndOfTurn(instruction=instruction)))
        else:
            raise ProtocolError("nothing to answer: commit audio or create a user text item first "
                                "(GLM-4-Voice replies to a user turn)", param="response")
        self.pending_text, self.pending_audio, self.awaiting = [], False, True
        self.next_response = {"modality": modality, "metadata": metadata}

    async def response_cancel(self, event: dict) -> None:
        wanted = event.get("response_id")
        if self.response is None and not self.awaiting:
            raise ProtocolError("no response is in progress", code="response_cancel_not_active")
        if wanted and (self.response is None or wanted != self.response.id):
            raise ProtocolError(f"response {wanted!r} is not in progress", code="response_cancel_not_active",
                                param="response_id")
        if self.response is not None:
            self.response.cancel_reason = "client_cancelled"
        self.socket.send_upstream(pb.ConverseRequest(cancel=pb.Cancel()))

    async def output_clear(self, event: dict) -> None:
        raise ProtocolError("output_audio_buffer.clear is for WebRTC and SIP; over WebSocket the client holds the "
                            "audio: stop playing it and send conversation.item.truncate", code="unsupported_event")

    # ---- upstream ----------------------------------------------------------------------------------
    async def on_upstream(self, message: pb.ConverseResponse) -> None:
        kind = message.WhichOneof("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            await handler(getattr(message, kind))

    async def _on_speech_started(self, event: pb.SpeechStarted) -> None:
        if self.response is not None:  # the orchestrator cancels the reply (barge-in)
            self.response.cancel_reason = "turn_detected"
        self.speech_item = new_id("item")
        await self.socket.send(self.events.make("input_audio_buffer.speech_started", audio_start_ms=event.audio_ms,
                                                item_id=self.speech_item))

    async def _on_speech_stopped(self, event: pb.SpeechStopped) -> None:
        item_id = self.speech_item or new_id("item")
        previous = self.last_item
        await self.socket.send(
            self.events.make("input_audio_buffer.speech_stopped", audio_end_ms=event.audio_ms, item_id=item_id),
            self.events.make("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
        )
        await self.add_item(user_item(item_id, [{"type": "input_audio", "transcript": None}]))
        self.speech_item, self.buffered, self.awaiting = None, 0, True

    async def _start_response(self) -> ResponseStream:
        if self.response is None:
            choice = self.next_response or {"modality": self.socket.settings.output_modalities[0], "metadata": None}
            self.response = ResponseStream(self.events, choice["modality"], choice["metadata"],
                                           self.socket.stream.session_id, self.socket.settings.output_format)
            self.next_response = {}
            events = self.response.start(self.last_item)
            self.items[self.response.item_id] = self.response.item("", "in_progress")
            await self.socket.send(*events)
        return self.response

    async def _on_text_delta(self, event: pb.TextDelta) -> None:
        await self.socket.send((await self._start_response()).text(event.text))

    async def _on_audio(self, event: pb.AudioOut) -> None:
        await self.socket.send((await self._start_response()).audio(event.data))

    async def _on_turn_ended(self, event: pb.TurnEnded) -> None:
        response = await self._start_response()
        closing, item = response.end(event)
        self.items[item["id"]] = item
        self.audio_ms[item["id"]] = (self.socket.generation, response.audio_ms())
        self.response, self.awaiting = None, False
        await self.socket.send(*closing)

    async def _on_truncated(self, event: pb.ReplyTruncated) -> None:
        if self.truncating is None:
            return
        item_id, end = self.truncating
        self.truncating = None
        part = self.items[item_id]["content"][0]
        part["transcript" if "transcript" in part else "text"] = event.text
        await self.socket.send(self.events.make("conversation.item.truncated", item_id=item_id, content_index=0,
                                                audio_end_ms=end))
