"""Serving services (shared by Triton adapters and the in-process backend): batches, failures, expiry."""

import time

import numpy as np
import pytest

from glmvoice.runtime.decoder_service import DecodeItem, DecoderService
from glmvoice.runtime.decoder_stream import DecoderStreams
from glmvoice.runtime.idle import UnknownStreamError
from glmvoice.runtime.tokenizer_service import TokenizeItem, TokenizerService

SPEECH = (np.sin(np.arange(24000) / 7) * 0.3).astype(np.float32)


def test_a_bad_request_fails_alone(tiny_speech_tokenizer):
    service = TokenizerService(tiny_speech_tokenizer)
    results = service.run([
        TokenizeItem("a", SPEECH, 16000, True, True),
        TokenizeItem("b", np.full(100, np.nan, np.float32), 16000, True, True),
        TokenizeItem("c", SPEECH[:8000], 16000, True, True),
    ])
    assert results[0] == tiny_speech_tokenizer.tokenize(SPEECH, 16000)
    assert isinstance(results[1], ValueError) and "NaN" in str(results[1])
    assert results[2] == tiny_speech_tokenizer.tokenize(SPEECH[:8000], 16000)


def test_idle_tokenizer_streams_expire(tiny_speech_tokenizer):
    service = TokenizerService(tiny_speech_tokenizer, idle_timeout_s=0.05)
    assert service.run([TokenizeItem("s", SPEECH[:4000], 16000, True, False)]) == [[]]
    assert service.open_streams == 1
    time.sleep(0.1)
    [result] = service.run([TokenizeItem("s", SPEECH[4000:8000], 16000, False, False)])
    assert isinstance(result, UnknownStreamError) and service.open_streams == 0


def test_idle_decoder_streams_expire_and_ended_ones_close(tiny_speech_decoder):
    service = DecoderService(DecoderStreams(tiny_speech_decoder), idle_timeout_s=0.05)
    [first] = service.run([DecodeItem("r", list(range(5)), start=True, end=False)])
    assert first == [] and service.open_streams == 1
    time.sleep(0.1)
    [late] = service.run([DecodeItem("r", list(range(5)), start=False, end=False)])
    assert isinstance(late, UnknownStreamError)
    [whole] = service.run([DecodeItem("x", list(range(12)), start=True, end=True)])
    assert sum(len(chunk) for chunk in whole) > 0 and service.open_streams == 0


@pytest.mark.parametrize("codes", [[-1], [10**7]])
def test_bad_codes_close_the_reply(tiny_speech_decoder, codes):
    service = DecoderService(DecoderStreams(tiny_speech_decoder))
    [result] = service.run([DecodeItem("r", codes, start=True, end=False)])
    assert isinstance(result, ValueError) and service.open_streams == 0


def test_a_cancel_that_overtakes_its_stream_start_keeps_the_stream_closed(tiny_speech_decoder):
    from glmvoice.runtime.decoder_service import DecodeItem, DecoderService
    from glmvoice.runtime.decoder_stream import DecoderStreams

    service = DecoderService(DecoderStreams(tiny_speech_decoder))
    (cancelled,) = service.run([DecodeItem("7", [], start=True, end=True, cancel=True)])
    assert cancelled == [] and service.open_streams == 0
    (late_start,) = service.run([DecodeItem("7", [1, 2, 3], start=True, end=False)])
    assert isinstance(late_start, ValueError) and service.open_streams == 0
    service.run([DecodeItem("8", [1, 2, 3], start=True, end=False)])
    assert service.open_streams == 1
    service.run([DecodeItem("8", [], start=True, end=True, cancel=True)])
    assert service.open_streams == 0


def test_a_cancel_batched_after_its_streams_block_drops_the_block_and_others_decode(tiny_speech_decoder):
    service = DecoderService(DecoderStreams(tiny_speech_decoder))
    service.run([DecodeItem("a", [1, 2, 3], start=True, end=False), DecodeItem("b", [4, 5], start=True, end=False)])
    codes = list(range(12))
    dropped, other, cancel = service.run([
        DecodeItem("a", codes, start=False, end=False),
        DecodeItem("b", codes, start=False, end=True),
        DecodeItem("a", [], start=True, end=True, cancel=True),
    ])
    assert isinstance(dropped, UnknownStreamError) and cancel == []
    assert sum(len(chunk) for chunk in other) > 0
    assert service.open_streams == 0
