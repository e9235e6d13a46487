"""The `speech_tokenizer` model on a real Triton server: whole clips (batched) and live streams."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from glmvoice.audio import read_wav, resample
from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

pytestmark = pytest.mark.integration


def infer(url, audio, corrid, start=True, end=True, rate=None, client=None):
    """One request; a given client is reused (and left open), else one is made for the call."""
    own = client is None
    client = client or grpcclient.InferenceServerClient(url)
    inputs = [grpcclient.InferInput("AUDIO", [1, len(audio)], "FP32")]
    inputs[0].set_data_from_numpy(np.asarray(audio, np.float32)[None])
    if rate is not None:
        inputs.append(grpcclient.InferInput("SAMPLE_RATE", [1, 1], "INT32"))
        inputs[1].set_data_from_numpy(np.array([[rate]], np.int32))
    try:
        result = client.infer("speech_tokenizer", inputs, sequence_id=corrid, sequence_start=start, sequence_end=end)
        return result.as_numpy("CODES").reshape(-1).tolist()
    finally:
        if own:
            client.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_speech_tokenizer_dir):
    return load_speech_tokenizer(tiny_speech_tokenizer_dir)


def test_concurrent_whole_clips_equal_the_in_process_runtime(triton_server, tokenizer, librivox_clips):
    waves = [read_wav(path) for path, _ in librivox_clips]
    with ThreadPoolExecutor(len(waves)) as pool:
        served = list(pool.map(lambda i: infer(triton_server.grpc_url, waves[i][0], 1000 + i, rate=waves[i][1]), range(len(waves))))
    expected = tokenizer.tokenize_batch([w for w, _ in waves], waves[0][1])
    assert served == expected
    assert all(len(codes) > 10 for codes in served)


def test_whole_clip_at_another_rate_is_resampled(triton_server, tokenizer, librivox_clips):
    samples, rate = read_wav(librivox_clips[1][0])
    at_8k = resample(samples, rate, 8000)
    assert infer(triton_server.grpc_url, at_8k, 77, rate=8000) == tokenizer.tokenize(at_8k, 8000)


def test_a_stream_sent_in_chunks_equals_the_in_process_stream(triton_server, tokenizer, librivox_clips):
    samples, rate = read_wav(librivox_clips[0][0])
    chunks = np.split(samples, sorted(np.random.default_rng(0).integers(1, len(samples), size=12).tolist()))
    served = []
    for i, chunk in enumerate(chunks):
        served += infer(triton_server.grpc_url, chunk, 4242, start=i == 0, end=i == len(chunks) - 1)
    stream = tokenizer.open_stream("reference")
    expected = [code for chunk in chunks for code in stream.push(chunk)] + stream.finalize()
    assert served == expected
    assert served == tokenizer.tokenize(samples, rate, mel_floor="causal")


@pytest.mark.parametrize(
    "corrid, audio, kwargs, message",
    [
        (9001, np.full(1600, np.nan, np.float32), {}, "NaN"),
        (9002, np.zeros(0, np.float32), {}, "empty"),
        (9003, np.zeros(1600, np.float32), {"start": True, "end": False, "rate": 8000}, "16000 Hz"),
        (9004, np.zeros(1600, np.float32), {"start": False, "end": False}, "START flag"),
    ],
)
def test_bad_input_gets_invalid_argument_and_the_server_keeps_serving(triton_server, tokenizer, corrid, audio, kwargs, message):
    with pytest.raises(InferenceServerException, match=message) as error:
        infer(triton_server.grpc_url, audio, corrid, **kwargs)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    ok = np.sin(np.arange(16000) / 8).astype(np.float32) * 0.3
    assert infer(triton_server.grpc_url, ok, 9100) == tokenizer.tokenize(ok, 16000)
