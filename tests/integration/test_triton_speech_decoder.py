"""The `speech_decoder` model on a real Triton server: reply streams over gRPC, batched across replies."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from glmvoice.models.speech_decoder import load_speech_decoder
from glmvoice.runtime.decoder_service import DecodeItem, DecoderService
from glmvoice.runtime.decoder_stream import DecoderStreams

pytestmark = pytest.mark.integration


class ReplyStream:
    """One gRPC stream for one reply (one CORRID): send code chunks, collect audio per request."""

    def __init__(self, url: str, corrid: int):
        self.corrid = corrid
        self.client = grpcclient.InferenceServerClient(url)
        self.events: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.events.put((result, error)))

    def send(self, codes, start=False, end=False, seed=None, rate=None):
        inputs = [grpcclient.InferInput("CODES", [1, len(codes)], "INT64")]
        inputs[0].set_data_from_numpy(np.asarray(codes, np.int64)[None])
        for name, value, dtype in (("SEED", seed, np.uint64), ("OUTPUT_RATE", rate, np.int32)):
            if value is not None:
                tensor = grpcclient.InferInput(name, [1, 1], grpcclient.np_to_triton_dtype(np.dtype(dtype)))
                tensor.set_data_from_numpy(np.array([[value]], dtype))
                inputs.append(tensor)
        self.client.async_stream_infer(
            "speech_decoder", inputs, sequence_id=self.corrid, sequence_start=start, sequence_end=end,
            enable_empty_final_response=True,
        )
        return self.collect()

    def collect(self):
        """Audio chunks of the request just sent, until its FINAL flag; raises its error."""
        chunks, rate = [], None
        while True:
            result, error = self.events.get(timeout=60)
            if error is not None:
                raise RuntimeError(str(error))
            audio = result.as_numpy("AUDIO")
            if audio is not None:
                chunks.append(audio.reshape(-1))
                rate = int(result.as_numpy("SAMPLE_RATE").reshape(-1)[0])
            if result.get_response().parameters["triton_final_response"].bool_param:
                return chunks, rate

    def close(self):
        self.client.stop_stream()
        self.client.close()


def reply_codes(seed: int, length: int, codebook: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, codebook, size=length).tolist()


def pieces(codes, sizes):
    out, i = [], 0
    for size in sizes:
        out.append(codes[i : i + size])
        i += size
    return out + [codes[i:]]


@pytest.fixture(scope="module")
def decoder(tiny_speech_decoder_dir):
    return load_speech_decoder(tiny_speech_decoder_dir)


def in_process(decoder, stream_id, chunks, seed, rate=None):
    service = DecoderService(DecoderStreams(decoder))
    out = []
    for i, chunk in enumerate(chunks):
        [result] = service.run([DecodeItem(stream_id, chunk, start=i == 0, end=i == len(chunks) - 1, seed=seed, output_rate=rate)])
        out.append(result)
    return out


def test_concurrent_replies_equal_the_in_process_runtime(triton_server, decoder):
    sizes = [3, 9, 4, 12, 1, 8]
    replies = {corrid: pieces(reply_codes(corrid, 50, decoder.codebook_size), sizes) for corrid in (501, 502, 503)}
    served = {}

    def run(corrid):
        stream = ReplyStream(triton_server.grpc_url, corrid)
        try:
            chunks = replies[corrid]
            served[corrid] = [stream.send(c, start=i == 0, end=i == len(chunks) - 1, seed=corrid)[0] for i, c in enumerate(chunks)]
        finally:
            stream.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in replies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for corrid, chunks in replies.items():
        expected = in_process(decoder, "ref", chunks, seed=corrid)
        got = served[corrid]
        # First audio exactly when the first 10 codes are in (3 + 9 = 12 >= 10), none before.
        assert [len(r) for r in got[:2]] == [0, 1]
        assert [len(r) for r in got] == [len(r) for r in expected]
        np.testing.assert_allclose(np.concatenate(sum(got, [])), np.concatenate(sum(expected, [])), atol=1e-4)


def test_output_rate_for_telephony(triton_server, decoder):
    codes = reply_codes(7, 30, decoder.codebook_size)
    stream = ReplyStream(triton_server.grpc_url, 601)
    try:
        first, rate = stream.send(codes[:20], start=True, seed=1, rate=8000)
        rest, _ = stream.send(codes[20:], end=True)
    finally:
        stream.close()
    assert rate == 8000
    audio = np.concatenate(first + rest)
    native = np.concatenate(sum(in_process(decoder, "ref", [codes[:20], codes[20:]], seed=1), []))
    assert abs(len(audio) - len(native) * 8000 / decoder.sample_rate) <= 2


@pytest.mark.parametrize(
    "codes, kwargs, message",
    [
        ([10**6], {"start": True, "end": True}, "speech codes must lie in"),
        ([1, 2, 3], {"start": True, "end": True, "rate": 11025}, "output rate 11025"),
        ([1, 2, 3], {"start": False}, "START flag"),
    ],
)
def test_bad_input_gets_an_error_and_a_final_flag(triton_server, decoder, codes, kwargs, message):
    stream = ReplyStream(triton_server.grpc_url, 700)
    try:
        with pytest.raises(RuntimeError, match=message):
            stream.send(codes, **kwargs)
        chunks, _ = stream.send(reply_codes(1, 12, decoder.codebook_size), start=True, end=True)
        assert sum(len(c) for c in chunks) > 0
    finally:
        stream.close()
