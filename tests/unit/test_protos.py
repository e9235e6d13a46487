"""The generated contract agrees with the runtime it fronts."""

from glmvoice import audio
from glmvoice.v1 import common_pb2


def test_every_wire_encoding_has_a_codec():
    wire = {name.removeprefix("AUDIO_ENCODING_") for name in common_pb2.AudioEncoding.keys()} - {"UNSPECIFIED"}
    assert wire == set(audio.ENCODERS) == set(audio.DECODERS)


def test_sampling_params_distinguish_unset_from_zero():
    # temperature 0 means greedy, so "not set" must stay distinguishable from 0.
    params = common_pb2.SamplingParams(temperature=0.0)
    assert params.HasField("temperature") and not params.HasField("top_p")
