"""The pieces of one turn: the user's utterance as it is tokenized and prefilled, and the reply's bookkeeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from services.orchestrator.backends import TokenizerSession


def ms(seconds: float) -> float:
    return seconds * 1000.0


class UserTurn:
    """The user's current utterance: 16 kHz audio -> tokenizer blocks -> codes, prefilling as they come.

    One worker task handles the blocks in order, so the requests a turn makes do not depend on timing.
    `prefill(codes)` prefills the LM with the codes so far; `may_prefill()` says whether the LM's KV under the
    session is free for it (not while a reply runs)."""

    def __init__(self, tokenizer: TokenizerSession, block_samples: int,
                 prefill: Callable[[list[int]], Awaitable[None]], may_prefill: Callable[[], bool]):
        self.tokenizer = tokenizer
        self.block = block_samples
        self.prefill, self.may_prefill = prefill, may_prefill
        self.pending = np.zeros(0, np.float32)
        self.codes: list[int] = []
        self.queue: asyncio.Queue = asyncio.Queue()
        self.prefilled = 0  # codes covered by the last prefill
        self.samples = 0
        self.worker = asyncio.create_task(self._work())

    def feed(self, audio: np.ndarray) -> None:
        self.samples += len(audio)
        self.pending = np.concatenate([self.pending, audio])
        while len(self.pending) >= self.block:
            self.queue.put_nowait((self.pending[: self.block], False))
            self.pending = self.pending[self.block :]

    async def finish(self) -> tuple[list[int], float]:
        """End of speech: tokenizes the rest -> (all codes, tokenize ms after end of speech)."""
        ended = time.perf_counter()
        self.queue.put_nowait((self.pending, True))
        self.pending = np.zeros(0, np.float32)
        await self.worker
        return self.codes, ms(time.perf_counter() - ended)

    async def abort(self) -> None:
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)
        await self.tokenizer.abort()

    async def _work(self) -> None:
        while True:
            audio, end = await self.queue.get()
            self.codes += await self.tokenizer.push(audio, end=end)
            if end:
                return
            if len(self.codes) > self.prefilled and self.may_prefill():
                self.prefilled = len(self.codes)
                await self.prefill(self.codes)


@dataclass
class Reply:
    """Bookkeeping of one assistant reply: what was generated, and what of it the client was sent."""

    ids: list[int] = field(default_factory=list)  # generated ids (stop id excluded), in order
    codes_sent: int = 0  # speech codes handed to the decoder
    code_times: list[float] = field(default_factory=list)
    chunks_sent: int = 0
    samples_sent: int = 0
    final_chunk_sent: bool = False
    first_token: float | None = None
    first_speech: float | None = None
    first_audio: float | None = None
    speech_decode_ms: float = 0.0


@dataclass
class LastReply:
    """The stream's last reply as the history keeps it, for Truncate: where it starts in the history,
    its kept ids, and the speech tokens and audio seconds those ids make."""

    start: int
    ids: list[int]
    speech_tokens: int
    audio_seconds: float
