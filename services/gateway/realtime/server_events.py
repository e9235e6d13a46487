"""Server events of the OpenAI Realtime protocol: ids, the GA names (and the beta names a beta client
routes), and `error` events.

Names and shapes follow the official `openai` SDK's `openai.types.realtime` modules (GA) and
`openai.types.beta.realtime` (beta); tests parse every event we send with those classes.
"""

from __future__ import annotations

import uuid

# GA name -> beta name, where they differ. Events absent from beta map to None (not sent to beta clients).
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
}
# GA item content type -> beta
BETA_CONTENT = {"output_audio": "audio", "output_text": "text"}


class ProtocolError(Exception):
    """A client event we refuse: becomes an `error` event (type invalid_request_error) and is skipped."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class Events:
    """Builds server events in the client's dialect ("ga" or "beta"); every event gets an event_id."""

    def __init__(self, beta: bool = False):
        self.beta = beta

    def make(self, kind: str, **fields) -> dict | None:
        if self.beta and kind in BETA_NAMES:
            kind = BETA_NAMES[kind]
            if kind is None:
                return None
        return {"type": kind, "event_id": new_id("event"), **fields}

    def item(self, item: dict) -> dict:
        """A conversation item as this dialect names its content types."""
        if not self.beta:
            return item
        return {**item, "content": [{**part, "type": BETA_CONTENT.get(part["type"], part["type"])} for part in item["content"]]}

    def error(self, message: str, code: str = "invalid_value", param: str | None = None, client_event_id: str | None = None,
              kind: str = "invalid_request_error") -> dict:
        return self.make("error", error={"type": kind, "code": code, "message": message, "param": param,
                                         "event_id": client_event_id})
