"""`session.update` for /v1/realtime: GA and beta shapes, the effective session, refusals that name the field.
The session object we send is validated against the official SDK's own classes."""

from __future__ import annotations

import pytest
from openai.types.beta.realtime import SessionCreatedEvent as BetaSessionCreatedEvent
from openai.types.realtime import SessionCreatedEvent

from glmvoice.v1 import voice_chat_pb2 as pb
from services.gateway.realtime.server_events import Events, ProtocolError
from services.gateway.realtime.session_config import SessionSettings, apply_update


def test_defaults_are_the_protocol_defaults_and_validate_as_ga_and_beta_sessions():
    settings = SessionSettings()
    SessionCreatedEvent.model_validate(Events().make("session.created", session=settings.to_json("abc")))
    # The beta session's model is a closed list of OpenAI names: we echo the one in the URL, so use one of those.
    beta = SessionSettings(model="gpt-4o-realtime-preview").to_json("abc", beta=True)
    BetaSessionCreatedEvent.model_validate(Events(beta=True).make("session.created", session=beta))
    ga = settings.to_json("abc")
    assert ga["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert ga["max_output_tokens"] == "inf" and ga["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    config = settings.converse_config("abc").config
    assert (config.input_audio.sample_rate_hz, config.turn_detection, config.session_id) == (24000, pb.TURN_DETECTION_SERVER_VAD, "abc")
    assert not config.sampling.HasField("max_new_tokens")


def test_ga_update_maps_to_the_voicechat_config():
    settings = apply_update(SessionSettings(), {
        "type": "realtime", "instructions": "speak slowly", "max_output_tokens": 120,
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad", "threshold": 0.7,
                                                                                  "silence_duration_ms": 300}},
                  "output": {"format": {"type": "audio/pcma"}, "voice": "glm-4-voice"}},
        "glmvoice": {"seed": 3, "temperature": 0},
    })
    config = settings.converse_config("").config
    assert (config.input_audio.encoding, config.input_audio.sample_rate_hz) == (2, 8000)  # MULAW
    assert (config.output_audio.encoding, config.output_audio.sample_rate_hz) == (3, 8000)  # ALAW
    assert config.vad_silence_ms == 300 and config.vad_threshold == pytest.approx(0.7)
    assert config.style_instruction == "speak slowly" and config.sampling.max_new_tokens == 120
    assert config.sampling.seed == 3 and config.sampling.temperature == 0
    # null turn detection: the client commits; "inf" lifts the budget again
    settings = apply_update(settings, {"audio": {"input": {"turn_detection": None}}, "max_output_tokens": "inf"})
    config = settings.converse_config("").config
    assert config.turn_detection == pb.TURN_DETECTION_CLIENT and not config.sampling.HasField("max_new_tokens")


def test_beta_fields_are_accepted():
    settings = apply_update(SessionSettings(), {"input_audio_format": "g711_ulaw", "output_audio_format": "pcm16",
                                                "turn_detection": None, "modalities": ["text", "audio"],
                                                "temperature": 0.3, "max_response_output_tokens": 50})
    assert settings.input_format.type == "audio/pcmu" and settings.output_format.rate == 24000
    assert settings.turn_detection is None and settings.output_modalities == ("audio",)
    assert settings.extension == {"temperature": 0.3} and settings.max_output_tokens == 50


@pytest.mark.parametrize("session, param", [
    ({"type": "transcription"}, "session.type"),
    ({"speling": 1}, "session.speling"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "bits": 8}}}}, "session.audio.input.format.bits"),
    ({"audio": {"input": {"format": {"type": "audio/pcmu", "rate": 16000}}}}, "session.audio.input.format.rate"),
    ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}, "session.audio.input.turn_detection.type"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}},
     "session.audio.input.turn_detection.create_response"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
     "session.audio.input.turn_detection.threshold"),
    ({"audio": {"input": {"transcription": {"model": "whisper-1"}}}}, "session.audio.input.transcription"),
    ({"audio": {"output": {"voice": "alloy"}}}, "session.audio.output.voice"),
    ({"tools": [{"type": "function", "name": "f"}]}, "session.tools"),
    ({"max_output_tokens": 0}, "session.max_output_tokens"),
    ({"output_modalities": ["text", "audio", "video"]}, "session.output_modalities"),
    ({"glmvoice": {"beam": 4}}, "session.glmvoice.beam"),
])
def test_unsupported_or_unknown_fields_are_refused_by_name(session, param):
    before = SessionSettings()
    with pytest.raises(ProtocolError) as info:
        apply_update(before, {"instructions": "changed", **session})
    assert info.value.param == param and info.value.message


def test_events_carry_ids_and_beta_names():
    ga, beta = Events(), Events(beta=True)
    first, second = ga.make("response.output_audio.delta", delta=""), ga.make("response.output_audio.delta", delta="")
    assert first["event_id"] != second["event_id"] and first["type"] == "response.output_audio.delta"
    assert beta.make("response.output_audio.delta", delta="")["type"] == "response.audio.delta"
    assert beta.make("conversation.item.done", item={}) is None
    error = ga.error("bad", "invalid_value", "session.tools", "evt_1")
    assert error["error"] == {"type": "invalid_request_error", "code": "invalid_value", "message": "bad",
                              "param": "session.tools", "event_id": "evt_1"}
