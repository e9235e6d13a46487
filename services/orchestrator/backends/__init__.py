"""The three networks behind one interface, so a turn runs the same code on either backend.

- `TritonBackend`: the product. tritonclient gRPC to the `speech_tokenizer`, `llm` and `speech_decoder`
  models (model_repo/*/config.pbtxt documents their tensors).
- `InProcessBackend`: the same runtime (TokenizerService, LLMEngine, DecoderService) in this process;
  the baseline that measures what the distributed path costs.

A backend hands out per-stream objects:
- `TokenizerSession.push(audio_16k, end)` -> the speech codes this audio completed (all of them at end).
- `backend.generate(...)` -> an `LMStream`: `async for token_id in stream`, `stream.finish_reason`, `cancel()`.
  `max_new_tokens=0` only prefills and keeps the KV under `prefix_key` (the session id).
- `DecoderSession.send(codes, end)`; `async for audio in session` yields float32 audio at the requested
  rate, one chunk per decoded block, until the reply's end; `cancel()` drops the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from glmvoice.models.text_tokenizer import TextTokenizer
from glmvoice.sampling import SamplingParams
from services.orchestrator.errors import Exhausted, InvalidInput, OrchestratorError

# glmvoice.runtime.llm_contract's status names -> our exceptions (both backends raise these).
STATUS_ERRORS = {"INVALID_ARGUMENT": InvalidInput, "RESOURCE_EXHAUSTED": Exhausted, "INTERNAL": OrchestratorError}

# When the caller's gRPC deadline passes (event-loop time), set per stream by the server; calls to the models
# run no longer than what is left of it, so a caller's deadline bounds the work it causes on Triton.
CALLER_DEADLINE: ContextVar[float | None] = ContextVar("caller_deadline", default=None)


def time_left() -> float | None:
    """Seconds left of the caller's deadline (never below a millisecond); None without one."""
    deadline = CALLER_DEADLINE.get()
    return None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0.001)


@dataclass(frozen=True)
class LMRequest:
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    prefix_key: str


class TokenizerSession(Protocol):
    async def push(self, audio: np.ndarray, end: bool = False) -> list[int]: ...

    async def abort(self) -> None: ...


class LMStream(Protocol):
    finish_reason: str | None

    def __aiter__(self) -> AsyncIterator[int]: ...

    async def cancel(self) -> None: ...


class DecoderSession(Protocol):
    async def send(self, codes: list[int], end: bool = False) -> None: ...

    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...

    async def cancel(self) -> None: ...


class Backend(Protocol):
    text_tokenizer: TextTokenizer
    input_rate: int  # the tokenizer's sample rate (16 kHz)
    max_seq_len: int  # prompt + reply ids the LM can hold
    decoder_block: int  # speech codes per decoded audio chunk (the first audio needs this many)

    async def start(self) -> None: ...

    async def ready(self) -> bool: ...

    # `headers` (W3C trace context) go with every request of the stream, so the model's spans join the turn's trace.
    def open_tokenizer(self, headers: dict[str, str] | None = None) -> TokenizerSession: ...

    def generate(self, request: LMRequest, headers: dict[str, str] | None = None) -> LMStream: ...

    def open_decoder(self, seed: int, output_rate: int, headers: dict[str, str] | None = None) -> DecoderSession: ...

    async def close(self) -> None: ...
