"""Property tests at the boundaries where untrusted bytes enter (hypothesis): whatever arrives, the code either
accepts it or raises its one precise error type, never anything else, and bounded work follows. Each test
prints how many inputs it tried (pytest -s)."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmvoice import audio
from glmvoice.provenance import valid_run_id
from glmvoice.v1 import common_pb2
from glmvoice.v1 import voice_chat_pb2 as pb
from services.orchestrator.errors import InvalidInput
from services.orchestrator.server import parse_request, stream_config
from services.orchestrator.session_store import SessionRecord
from services.orchestrator.settings import Settings, SettingsError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRIED: dict[str, int] = {}


def tried(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\ninputs tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


def wav_header(rate: int, channels: int, width: int, frames: bytes) -> bytes:
    """A RIFF/WAVE file with whatever header values it is given (the wave module refuses to write odd ones)."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * width & 0xFFFFFFFF, channels * width & 0xFFFF,
                      width * 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(frames)) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


@FUZZ
@given(rate=st.integers(0, 2**32 - 1), channels=st.integers(0, 64), width=st.integers(0, 8),
       frames=st.binary(max_size=4096))
def test_wav_headers_are_read_or_refused(rate, channels, width, frames):
    tried("wav header")
    try:
        samples, got_rate = audio.read_wav(wav_header(rate, channels, width, frames))
    except audio.AudioFormatError:
        return
    assert audio.WAV_RATES[0] <= got_rate <= audio.WAV_RATES[1]  # no amplification by a tiny declared rate
    assert samples.dtype == np.float32 and len(samples) <= len(frames)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_not_a_wav(data):
    tried("wav bytes")
    try:
        audio.read_wav(data)
    except audio.AudioFormatError:
        pass


@FUZZ
@given(encoding=st.sampled_from(["LINEAR16", "MULAW", "ALAW"]), data=st.binary(max_size=4096))
def test_codecs_decode_any_bytes_within_bounds(encoding, data):
    tried("codec bytes")
    try:
        samples = audio.decode(data, encoding)
    except audio.AudioFormatError:
        return
    assert np.isfinite(samples).all() and np.abs(samples).max(initial=0) <= 1.0
    assert len(samples) <= len(data)


def mostly(valid, anything):
    """Mostly valid values, so that most examples get past the first check and probe the next ones."""
    return st.one_of(valid, valid, valid, anything)


def sampling_params():
    odd = st.floats(allow_nan=True, allow_infinity=True, width=32)
    return st.fixed_dictionaries({}, optional={
        "temperature": mostly(st.floats(0, 2), odd), "top_p": mostly(st.floats(0.01, 1), odd),
        "top_k": mostly(st.integers(0, 100), st.integers(-2**31, 2**31 - 1)),
        "repetition_penalty": mostly(st.floats(0.5, 2), odd), "presence_penalty": mostly(st.floats(-2, 2), odd),
        "seed": st.integers(0, 2**63 - 1), "max_new_tokens": mostly(st.integers(1, 4000), st.integers(-2**31, 2**31 - 1)),
    })


def audio_format():
    return st.builds(common_pb2.AudioFormat, encoding=mostly(st.integers(1, 3), st.integers(0, 6)),
                     sample_rate_hz=mostly(st.sampled_from(audio.SUPPORTED_RATES), st.integers(0, 200_000)))


@FUZZ
@given(inp=audio_format(), out=audio_format(), sampling=sampling_params(),
       vad=mostly(st.integers(0, 10_000), st.integers(-2**31, 2**31 - 1)),
       style=mostly(st.text(max_size=100), st.text(min_size=1990, max_size=2010)), session=st.text(max_size=200), detection=st.integers(0, 3))
def test_converse_configs_are_accepted_or_invalid_argument(inp, out, sampling, vad, style, session, detection):
    tried("Converse config")
    config = pb.SessionConfig(input_audio=inp, output_audio=out, vad_silence_ms=vad, style_instruction=style,
                              session_id=session, turn_detection=detection,
                              sampling=common_pb2.SamplingParams(**sampling))
    try:
        parsed = stream_config(pb.ConverseRequest(config=config), Settings())
    except InvalidInput:
        return
    assert parsed.max_new_tokens >= 1 and len(parsed.style_instruction) <= Settings().max_text_chars
    assert parsed.input_audio.sample_rate in audio.SUPPORTED_RATES and parsed.output_audio.sample_rate in audio.OUTPUT_RATES
    s = parsed.sampling
    assert 0 < s.top_p <= 1 and 0 <= s.temperature < float("inf") and 0 < s.repetition_penalty < float("inf")
    assert abs(s.presence_penalty) < float("inf")


@FUZZ
@given(st.binary(max_size=1024))
def test_raw_converse_messages_parse_or_invalid_argument(raw):
    tried("Converse bytes")
    try:
        parse_request(raw)
    except InvalidInput:
        pass


@FUZZ
@given(st.text(max_size=80))
def test_ids_that_become_paths_cannot_escape(run_id):
    tried("run id")
    try:
        checked = valid_run_id(run_id)
    except ValueError:
        return
    assert "/" not in checked and "\\" not in checked and not checked.startswith(".") and "\x00" not in checked


@FUZZ
@given(st.dictionaries(st.sampled_from(["MAX_STREAMS", "REDIS_TIMEOUT_S", "REDIS_TLS", "MAX_TURN_S", "GRPC_PORT",
                                        "QUOTA_STREAMS", "STREAM_IDLE_S", "BACKEND"]),
                       st.text(max_size=12), max_size=4))
def test_settings_from_any_environment_parse_or_say_which(environ):
    tried("settings env")
    try:
        Settings.from_args([], environ)
    except SettingsError as exc:
        assert any(name in str(exc) for name in environ)


def test_session_records_round_trip():
    record = SessionRecord("s1", "key-ab", [1, 2, 3])
    assert SessionRecord.from_json(record.to_json()) == record
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:  # a well-formed file still reads
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x00\x01" * 160)
    assert audio.read_wav(buffer.getvalue())[1] == 16000


@FUZZ
@given(field=st.sampled_from(["temperature", "top_p", "repetition_penalty", "presence_penalty"]),
       value=st.floats(allow_nan=True, allow_infinity=True))
def test_sampling_parameters_are_finite_or_refused(field, value):
    """A NaN temperature used to pass validation and reach the engine's sampler."""
    tried("sampling value")
    from glmvoice.sampling import SamplingParams

    try:
        params = SamplingParams(**{field: value})
    except ValueError:
        return
    assert np.isfinite(getattr(params, field))
