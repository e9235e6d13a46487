"""The realtime session's settings: `session.update` (GA shape, beta fields too) in, the session object out,
and the VoiceChat `SessionConfig` they map to.

Every field of the GA session is handled here: applied, accepted where its value changes nothing we
serve (an empty `tools` list, `tracing: null`), or refused with a `ProtocolError` naming the field.
Unknown fields are refused too, so a client never gets a silent default.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from glmvoice.client import config_request
from services.gateway.realtime.server_events import ProtocolError

VOICE = "glm-4-voice"  # the one voice the speech decoder has (its speaker embedding is fixed)
# GA format type -> (codec, rate). audio/pcm is 24 kHz in the protocol; other rates are our extension.
FORMATS = {"audio/pcm": ("LINEAR16", 24000), "audio/pcmu": ("MULAW", 8000), "audio/pcma": ("ALAW", 8000)}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
# Sampling and session extras a client may set under `session.glmvoice` (OpenAI clients never send it).
EXTENSION_FIELDS = ("session_id", "seed", "temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty")


@dataclass(frozen=True)
class AudioFormat:
    type: str = "audio/pcm"
    rate: int = 24000

    @property
    def codec(self) -> str:
        return FORMATS[self.type][0]

    def to_json(self) -> dict:
        return {"type": self.type, "rate": self.rate} if self.type == "audio/pcm" else {"type": self.type}


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD; None on the session means the client commits and asks for responses itself."""

    threshold: float = 0.5
    silence_duration_ms: int = 500
    prefix_padding_ms: int = 300  # the orchestrator's pre-roll (a server setting): reported, not settable

    def to_json(self) -> dict:
        return {"type": "server_vad", "threshold": self.threshold, "silence_duration_ms": self.silence_duration_ms,
                "prefix_padding_ms": self.prefix_padding_ms, "create_response": True, "interrupt_response": True,
                "idle_timeout_ms": None}


@dataclass(frozen=True)
class SessionSettings:
    model: str = VOICE
    instructions: str = ""
    input_format: AudioFormat = AudioFormat()
    output_format: AudioFormat = AudioFormat()
    turn_detection: TurnDetection | None = TurnDetection()
    max_output_tokens: int | None = None  # None: "inf" (the orchestrator's budget, capped by the context)
    output_modalities: tuple[str, ...] = ("audio",)
    extension: dict = field(default_factory=dict)  # EXTENSION_FIELDS that were set

    def converse_config(self, session_id: str):
        """-> the VoiceChat ConverseRequest(config) of this session (resuming `session_id`)."""
        ext = self.extension
        vad = self.turn_detection
        return config_request(
            self.input_format.codec, self.input_format.rate, self.output_format.codec, self.output_format.rate,
            server_vad=vad is not None, vad_silence_ms=vad.silence_duration_ms if vad else 0,
            vad_threshold=vad.threshold if vad else 0.0, session_id=session_id, style=self.instructions,
            max_new_tokens=self.max_output_tokens, **{k: ext.get(k) for k in EXTENSION_FIELDS if k != "session_id"},
        )

    def to_json(self, session_id: str, beta: bool = False) -> dict:
        """The session object of session.created / session.updated; our extras under `glmvoice`."""
        ext = {**self.extension, "session_id": session_id}
        limit = "inf" if self.max_output_tokens is None else self.max_output_tokens
        vad = self.turn_detection.to_json() if self.turn_detection else None
        if beta:
            beta_name = {v: k for k, v in BETA_FORMATS.items()}
            return {"id": session_id, "object": "realtime.session", "model": self.model, "instructions": self.instructions,
                    "modalities": ["text"] if self.output_modalities == ("text",) else ["audio", "text"],
                    "voice": VOICE, "input_audio_format": beta_name[self.input_format.type],
                    "output_audio_format": beta_name[self.output_format.type], "turn_detection": vad,
                    "input_audio_transcription": None, "tools": [], "tool_choice": "auto",
                    "max_response_output_tokens": limit, "glmvoice": ext}
        return {
            "type": "realtime", "id": session_id, "object": "realtime.session", "model": self.model,
            "instructions": self.instructions, "output_modalities": list(self.output_modalities),
            "max_output_tokens": limit, "tools": [], "tool_choice": "auto", "tracing": None, "truncation": "disabled",
            "audio": {
                "input": {"format": self.input_format.to_json(), "turn_detection": vad, "transcription": None,
                          "noise_reduction": None},
                "output": {"format": self.output_format.to_json(), "voice": VOICE, "speed": 1.0},
            },
            "glmvoice": ext,
        }


# ---- session.update --------------------------------------------------------------------------------
Apply = Callable[[dict, Any, str], None]  # (settings fields being built, value, param path)


def parse_audio_format(value: Any, param: str) -> AudioFormat:
    if isinstance(value, str) and value in BETA_FORMATS:  # beta: "pcm16", "g711_ulaw", "g711_alaw"
        value = {"type": BETA_FORMATS[value]}
    if not isinstance(value, dict) or value.get("type") not in FORMATS:
        raise ProtocolError(f"{param} must be one of {sorted(FORMATS)} (as {{'type': ...}})", param=f"{param}.type")
    unknown = set(value) - {"type", "rate"}
    if unknown:
        raise ProtocolError(f"{param}.{sorted(unknown)[0]} is not a field of an audio format", param=f"{param}.{sorted(unknown)[0]}")
    codec, rate = FORMATS[value["type"]]
    rate = value.get("rate") or rate
    if value["type"] != "audio/pcm" and rate != FORMATS[value["type"]][1]:
        raise ProtocolError(f"{value['type']} is 8000 Hz", param=f"{param}.rate")
    if not isinstance(rate, int):
        raise ProtocolError(f"{param}.rate must be an integer", param=f"{param}.rate")
    return AudioFormat(value["type"], rate)


def _turn_detection(value: Any, param: str) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        kind = value.get("type") if isinstance(value, dict) else value
        raise ProtocolError(f"{param}.type {kind!r} is not supported: use 'server_vad' or null", param=f"{param}.type")
    vad = TurnDetection()
    for key, item in value.items():
        where = f"{param}.{key}"
        if key == "type":
            continue
        if key == "threshold":
            if not isinstance(item, (int, float)) or not 0 < item < 1:
                raise ProtocolError(f"{where} must be within (0, 1)", param=where)
            vad = replace(vad, threshold=float(item))
        elif key == "silence_duration_ms":
            if not isinstance(item, int) or not 0 < item <= 10_000:
                raise ProtocolError(f"{where} must be an integer within 1..10000", param=where)
            vad = replace(vad, silence_duration_ms=item)
        elif (key, item) in (("create_response", True), ("interrupt_response", True), ("idle_timeout_ms", None),
                             ("prefix_padding_ms", vad.prefix_padding_ms)):
            continue  # what we do anyway
        elif key in ("create_response", "interrupt_response", "idle_timeout_ms", "prefix_padding_ms"):
            raise ProtocolError(f"{where}={item!r} is not supported: server VAD always answers, barge-in always "
                                f"interrupts, pre-roll is {vad.prefix_padding_ms} ms, and there is no idle timeout", param=where)
        else:
            raise ProtocolError(f"unknown field {where}", param=where)
    return vad


def parse_max_tokens(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolError(f"{param} must be a positive integer or 'inf'", param=param)
    return value


def parse_modalities(value: Any, param: str) -> tuple[str, ...]:
    if value in (["audio"], ["audio", "text"], ["text", "audio"]):  # beta listed both for speech
        return ("audio",)
    if value == ["text"]:
        return ("text",)
    raise ProtocolError(f"{param} must be ['audio'] or ['text']", param=param)


def _only(allowed: tuple, why: str) -> Apply:
    """A field we accept only with values that change nothing we serve."""
    def check(fields: dict, value: Any, param: str) -> None:
        if value not in allowed:
            raise ProtocolError(f"{param}={value!r} is not supported: {why}", param=param)
    return check


def _set(name: str, convert: Callable[[Any, str], Any]) -> Apply:
    def apply(fields: dict, value: Any, param: str) -> None:
        fields[name] = convert(value, param)
    return apply


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{param} must be a string", param=param)
    return value


def _extension(fields: dict, value: Any, param: str) -> None:
    if not isinstance(value, dict):
        raise ProtocolError(f"{param} must be an object", param=param)
    for key in value:
        if key not in EXTENSION_FIELDS:
            raise ProtocolError(f"unknown field {param}.{key}; known: {', '.join(EXTENSION_FIELDS)}", param=f"{param}.{key}")
    fields["extension"] = {**fields["extension"], **{k: v for k, v in value.items() if v is not None}}


def _nested(handlers: dict[str, Apply]) -> Apply:
    def apply(fields: dict, value: Any, param: str) -> None:
        if not isinstance(value, dict):
            raise ProtocolError(f"{param} must be an object", param=param)
        for key, item in value.items():
            if key not in handlers:
                raise ProtocolError(f"unknown field {param}.{key}", param=f"{param}.{key}")
            handlers[key](fields, item, f"{param}.{key}")
    return apply


def _voice(fields: dict, value: Any, param: str) -> None:
    if value != VOICE:
        raise ProtocolError(f"{param}: the only voice is {VOICE!r} (the speech decoder has one speaker)", param=param)


def _temperature(fields: dict, value: Any, param: str) -> None:  # beta's session.temperature
    fields["extension"] = {**fields["extension"], "temperature": value}


NO_TOOLS = "GLM-4-Voice has no tool calling"
AUDIO_INPUT = {
    "format": _set("input_format", parse_audio_format),
    "turn_detection": _set("turn_detection", _turn_detection),
    "transcription": _only((None,), "there is no separate input transcription model"),
    "noise_reduction": _only((None,), "there is no noise reduction stage"),
}
AUDIO_OUTPUT = {
    "format": _set("output_format", parse_audio_format),
    "voice": _voice,
    "speed": _only((1, 1.0), "speech rate is asked for in the instructions (GLM-4-Voice style control)"),
}
SESSION_FIELDS: dict[str, Apply] = {
    "type": _only(("realtime",), "only realtime (speech-to-speech) sessions are served"),
    "model": _set("model", _text),
    "instructions": _set("instructions", _text),
    "output_modalities": _set("output_modalities", parse_modalities),
    "max_output_tokens": _set("max_output_tokens", parse_max_tokens),
    "audio": _nested({"input": _nested(AUDIO_INPUT), "output": _nested(AUDIO_OUTPUT)}),
    "tools": _only(([],), NO_TOOLS),
    "tool_choice": _only(("auto", "none"), NO_TOOLS),
    "parallel_tool_calls": _only((False, None), NO_TOOLS),
    "tracing": _only((None,), "traces go to OpenTelemetry (OTEL_EXPORTER_OTLP_ENDPOINT), not to a dashboard"),
    "truncation": _only(("disabled",), "the history is never cut; a full context is an error"),
    "include": _only(([], None), "there is no input transcription"),
    "prompt": _only((None,), "there are no stored prompts"),
    "reasoning": _only((None,), "GLM-4-Voice has no reasoning mode"),
    "glmvoice": _extension,
    # beta names
    "modalities": _set("output_modalities", parse_modalities),
    "input_audio_format": _set("input_format", parse_audio_format),
    "output_audio_format": _set("output_format", parse_audio_format),
    "turn_detection": _set("turn_detection", _turn_detection),
    "voice": _voice,
    "temperature": _temperature,
    "max_response_output_tokens": _set("max_output_tokens", parse_max_tokens),
    "input_audio_transcription": _only((None,), "there is no separate input transcription model"),
    "input_audio_noise_reduction": _only((None,), "there is no noise reduction stage"),
    "speed": _only((1, 1.0), "speech rate is asked for in the instructions (GLM-4-Voice style control)"),
}


def apply_update(settings: SessionSettings, session: Any) -> SessionSettings:
    """settings + one session.update's `session` object -> new settings; ProtocolError names a bad field.
    Nothing is applied when any field is refused."""
    if not isinstance(session, dict):
        raise ProtocolError("session must be an object", param="session")
    fields = {name: getattr(settings, name) for name in SessionSettings.__dataclass_fields__}
    fields["extension"] = copy.deepcopy(settings.extension)
    _nested(SESSION_FIELDS)(fields, session, "session")
    return SessionSettings(**fields)
