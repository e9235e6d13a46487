"""Serving-side speech tokenization: a batch of requests, each a whole clip or a chunk of a live stream.

Whole clips (start and end in one request) are tokenized together in one batched call; stream chunks go
to their stream's state, opened at start and closed at end. A bad request fails alone: its slot in the
result holds the exception, and the other requests of the batch are served.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from glmvoice.audio import AudioFormatError, check_waveform
from glmvoice.runtime.idle import ExpiringStreams, UnknownStreamError
from glmvoice.runtime.tokenizer_stream import SpeechTokenizer, TokenizerStreams


@dataclass
class TokenizeItem:
    stream_id: str
    audio: np.ndarray  # mono float32
    sample_rate: int
    start: bool
    end: bool
    cancel: bool = False  # drop the stream now, tokenizing nothing more (the turn was abandoned)


class TokenizerService(ExpiringStreams):
    def __init__(self, tokenizer: SpeechTokenizer, idle_timeout_s: float = 60.0):
        self.tokenizer = tokenizer
        self.streams = TokenizerStreams(tokenizer)
        super().__init__(idle_timeout_s)

    def run(self, items: list[TokenizeItem]) -> list[list[int] | Exception]:
        self._drop_idle()
        results: list[list[int] | Exception] = [[] for _ in items]
        whole = defaultdict(list)  # sample rate -> indices of whole-clip items
        for index, item in enumerate(items):
            if item.cancel:
                self.close(item.stream_id)
                continue
            try:
                if item.start and item.end:
                    check_waveform(item.audio)
                    whole[item.sample_rate].append(index)
                else:
                    results[index] = self._stream_chunk(item)
            except (ValueError, AudioFormatError) as exc:
                results[index] = exc
        for rate, indices in whole.items():
            codes: Sequence[list[int] | Exception]
            try:
                codes = self.tokenizer.tokenize_batch([items[i].audio for i in indices], rate)
            except (ValueError, AudioFormatError) as exc:
                codes = [exc] * len(indices)
            for i, c in zip(indices, codes):
                results[i] = c
        return results

    def _stream_chunk(self, item: TokenizeItem) -> list[int]:
        model_rate = self.tokenizer.config.sampling_rate
        if item.sample_rate != model_rate:
            raise AudioFormatError(f"streams must send {model_rate} Hz audio, got {item.sample_rate} Hz")
        if item.start:
            self.streams.close(item.stream_id)  # a restarted stream begins afresh
            self.streams.open(item.stream_id)
        elif item.stream_id not in self.streams:
            raise UnknownStreamError(f"no open tokenizer stream {item.stream_id!r}: start it first")
        self.clock.touch(item.stream_id)
        stream = self.streams[item.stream_id]
        try:
            codes = stream.push(item.audio)
            if item.end:
                codes += stream.finalize()
        except (ValueError, AudioFormatError):
            self.close(item.stream_id)  # a stream that got garbage cannot continue exactly
            raise
        if item.end:
            self.close(item.stream_id)
        return codes

    def _free(self, stream_id: str) -> None:
        self.streams.close(stream_id)

    @property
    def open_streams(self) -> int:
        return len(self.streams)
