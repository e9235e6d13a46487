"""One assistant response's lifecycle events, from the orchestrator's text deltas, audio and TurnEnded.

GA order: response.created, response.output_item.added, conversation.item.added, response.content_part.added,
deltas (output_audio + output_audio_transcript, or output_text for text-only responses), the `.done`s,
response.content_part.done, response.output_item.done, conversation.item.done, response.done (with usage).
Our interleaved text is the transcript of the audio. Extras (latency, the session id) sit under `glmvoice`.
"""

from __future__ import annotations

import base64

from glmvoice.v1 import voice_chat_pb2 as pb
from services.gateway.realtime.server_events import Events, new_id

STATUS = {  # TurnEndReason -> (response status, status_details.reason)
    pb.TURN_END_REASON_COMPLETED: ("completed", None),
    pb.TURN_END_REASON_LENGTH: ("incomplete", "max_output_tokens"),
    pb.TURN_END_REASON_CANCELLED: ("cancelled", "client_cancelled"),
}


def assistant_item(item_id: str, modality: str, text: str, status: str) -> dict:
    part = {"type": "output_audio", "transcript": text} if modality == "audio" else {"type": "output_text", "text": text}
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": status,
            "content": [part]}


class ResponseStream:
    """Events of one response; `start()` once, then `text()` / `audio()` per upstream delta, then `end()`."""

    def __init__(self, events: Events, modality: str, metadata: dict | None, session_id: str, output_format):
        self.events, self.modality, self.metadata = events, modality, metadata
        self.id, self.item_id = new_id("resp"), new_id("item")
        self.session_id, self.conversation_id = session_id, session_id  # one conversation per session
        self.output_format = output_format
        self.deltas: list[str] = []
        self.audio_bytes = 0
        self.previous_item_id: str | None = None
        self.cancel_reason: str | None = None  # "turn_detected" when server VAD heard the user barge in

    def audio_ms(self) -> int:
        """Milliseconds of audio generated so far (sent, unless the response is text-only)."""
        width = 2 if self.output_format.codec == "LINEAR16" else 1
        return self.audio_bytes // width * 1000 // self.output_format.rate

    def item(self, text: str, status: str) -> dict:
        return assistant_item(self.item_id, self.modality, text, status)

    def _where(self) -> dict:
        return {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    def _response(self, status: str, output: list, **extra) -> dict:
        return {"id": self.id, "object": "realtime.response", "status": status, "output": output,
                "conversation_id": self.conversation_id, "output_modalities": [self.modality],
                "metadata": self.metadata, **extra}

    def _part(self, text: str) -> dict:
        return {"type": "audio", "transcript": text} if self.modality == "audio" else {"type": "text", "text": text}

    def start(self, previous_item_id: str | None) -> list[dict | None]:
        self.previous_item_id = previous_item_id
        item = self.events.item(assistant_item(self.item_id, self.modality, "", "in_progress"))
        item["content"] = []
        ev = self.events
        return [
            ev.make("response.created", response=self._response("in_progress", [])),
            ev.make("response.output_item.added", response_id=self.id, output_index=0, item=item),
            ev.make("conversation.item.added", previous_item_id=previous_item_id, item=item),
            ev.make("response.content_part.added", **self._where(), part=self._part("")),
        ]

    def text(self, delta: str) -> dict | None:
        self.deltas.append(delta)
        kind = "response.output_audio_transcript.delta" if self.modality == "audio" else "response.output_text.delta"
        return self.events.make(kind, **self._where(), delta=delta)

    def audio(self, data: bytes) -> dict | None:
        self.audio_bytes += len(data)
        if self.modality != "audio":  # text-only response: the audio is generated (GLM-4-Voice speaks) but not sent
            return None
        return self.events.make("response.output_audio.delta", **self._where(), delta=base64.b64encode(data).decode())

    def end(self, turn: pb.TurnEnded) -> tuple[list[dict | None], dict]:
        """-> (the closing events, the final assistant item as the conversation keeps it)."""
        ev, where, sent = self.events, self._where(), "".join(self.deltas)
        status, reason = STATUS.get(turn.reason, ("completed", None))
        if status == "cancelled" and self.cancel_reason:
            reason = self.cancel_reason
        item = self.item(turn.text, "completed" if status == "completed" else "incomplete")
        if self.modality == "audio":
            closing = [ev.make("response.output_audio.done", **where),
                       ev.make("response.output_audio_transcript.done", **where, transcript=sent)]
        else:
            closing = [ev.make("response.output_text.done", **where, text=sent)]
        usage = turn.usage
        inputs = usage.input_text_tokens + usage.input_audio_tokens
        outputs = usage.output_text_tokens + usage.output_audio_tokens
        latency = {f.name: getattr(turn.latency, f.name) for f in pb.TurnLatency.DESCRIPTOR.fields}
        response = self._response(
            status, [ev.item(item)],
            status_details={"type": status, "reason": reason} if status != "completed" else None,
            usage={"total_tokens": inputs + outputs, "input_tokens": inputs, "output_tokens": outputs,
                   "input_token_details": {"text_tokens": usage.input_text_tokens, "audio_tokens": usage.input_audio_tokens,
                                           "cached_tokens": 0},
                   "output_token_details": {"text_tokens": usage.output_text_tokens, "audio_tokens": usage.output_audio_tokens}},
            glmvoice={"session_id": self.session_id, "audio_seconds": turn.audio_seconds, "latency": latency},
        )
        closing += [
            ev.make("response.content_part.done", **where, part=self._part(sent)),
            ev.make("response.output_item.done", response_id=self.id, output_index=0, item=ev.item(item)),
            ev.make("conversation.item.done", previous_item_id=self.previous_item_id, item=ev.item(item)),
            ev.make("response.done", response=response),
        ]
        return closing, item
