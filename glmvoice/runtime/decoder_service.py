"""Serving-side speech decoding: a batch of requests, each carrying new speech codes of one reply stream.

A request may open its stream (start), add codes, and end it (end: flush everything left). All the
batch's streams then decode together, one batched pass per block, until none has a full block left (or,
for ended streams, anything left). A bad request fails alone: its result is the exception.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glmvoice.runtime.decoder_stream import DecoderStreams
from glmvoice.runtime.idle import ExpiringStreams, IdleClock, UnknownStreamError


@dataclass
class DecodeItem:
    stream_id: str
    codes: list[int]
    start: bool
    end: bool
    seed: int = 0
    output_rate: int | None = None  # None: the decoder's own rate
    cancel: bool = False  # drop the stream now, decoding nothing more (barge-in)


class DecoderService(ExpiringStreams):
    def __init__(self, streams: DecoderStreams, idle_timeout_s: float = 60.0):
        self.streams = streams
        self.cancelled = IdleClock(idle_timeout_s)  # ids cancelled lately
        super().__init__(idle_timeout_s)

    @property
    def sample_rate(self) -> int:
        return self.streams.decoder.sample_rate

    def run(self, items: list[DecodeItem]) -> list[list[np.ndarray] | Exception]:
        """-> per item, the audio chunks its request produced (in order), or the exception it raised."""
        self._drop_idle()
        for stream_id in self.cancelled.expired():
            self.cancelled.forget(stream_id)
        results: list[list[np.ndarray] | Exception] = [[] for _ in items]
        # Cancels first, whatever their place in the batch: a block of the same stream batched before its
        # cancel must not reopen the stream (nor be decoded at all, which is what a barge-in pays for).
        for item in items:
            if item.cancel:
                self.close(item.stream_id)
                # The cancel may overtake its stream's first request (the client sent it on a new connection):
                # remembered, so a START that arrives later does not open a stream nobody will close.
                self.cancelled.touch(item.stream_id)
        live: dict[str, int] = {}  # stream id -> item index
        for index, item in enumerate(items):
            if item.cancel:
                continue
            try:
                self._accept(item)
                live[item.stream_id] = index
            except (ValueError, KeyError) as exc:
                results[index] = exc if isinstance(exc, ValueError) else UnknownStreamError(str(exc))
        ending = [sid for sid, i in live.items() if items[i].end]
        chunks: dict[str, list[np.ndarray]] = {sid: [] for sid in live}
        while True:
            produced = self.streams.run(list(live), final=ending)
            if not produced:
                break
            for sid, audio in produced.items():
                if audio.size:
                    chunks[sid].append(audio)
        for sid, index in live.items():
            results[index] = chunks[sid]
        for sid in ending:
            self.close(sid)
        return results

    def _accept(self, item: DecodeItem) -> None:
        if item.stream_id in self.cancelled.last_used:
            raise UnknownStreamError(f"decoder stream {item.stream_id!r} was cancelled")
        if item.start:
            self.close(item.stream_id)  # a restarted stream begins afresh
            self.streams.open(item.stream_id, seed=item.seed, output_rate=item.output_rate)
        elif item.stream_id not in self.streams:
            raise UnknownStreamError(f"no open decoder stream {item.stream_id!r}: start it first")
        self.clock.touch(item.stream_id)
        try:
            self.streams.feed(item.stream_id, item.codes)
        except ValueError:
            self.close(item.stream_id)  # a reply with garbage codes cannot continue coherently
            raise

    def _free(self, stream_id: str) -> None:
        self.streams.close(stream_id)

    @property
    def open_streams(self) -> int:
        return len(self.streams)
