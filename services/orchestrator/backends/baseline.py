"""The official-style baseline (BACKEND=baseline): the in-process runtime, run the way the official GLM-4-Voice
code runs it, so a load test can show both side by side on the same machine.

- Batch 1: the LM engine has one slot (requests queue for it) and the decoder one worker, one stream per call.
- Whole-utterance tokenization after end of speech: audio is only buffered while the user speaks; at the end
  the whole clip is tokenized at once (the official `extract_speech_token`).
- Full prefill every turn: no prefix store, and no prefill while the user speaks (those requests do nothing).
- The decoder re-runs over the whole answer so far: every block takes all earlier codes and mel frames as
  its prompt (the official `token2wav`), so each block costs more than the last.
Block size stays the checkpoint's (10 codes), so the comparison isolates these four differences.
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np

from glmvoice.runtime.tokenizer_service import TokenizeItem
from services.orchestrator.backends import LMRequest
from services.orchestrator.backends.inprocess import InProcessBackend, InProcessLMStream, _raise_item_error
from services.triton.repository import templates_dir


class WholeUtteranceTokenizerSession:
    """Buffers the turn's audio; tokenizes it in one whole-clip request when the turn ends."""

    def __init__(self, backend: BaselineBackend):
        self.backend = backend
        self.stream_id = uuid.uuid4().hex
        self.chunks: list[np.ndarray] = []

    async def push(self, audio: np.ndarray, end: bool = False) -> list[int]:
        self.chunks.append(np.asarray(audio, np.float32))
        if not end:
            return []
        clip = np.concatenate(self.chunks)
        self.chunks = []
        if not len(clip):
            return []
        item = TokenizeItem(self.stream_id, clip, self.backend.input_rate, True, True)
        [result] = await self.backend.run(self.backend.tokenizer_pool, self.backend.tokenizer.run, [item])
        return list(_raise_item_error(result))

    async def abort(self) -> None:
        self.chunks = []


class NoPrefill:
    """The official code does not prefill while the user speaks: a prefill-only request does nothing."""

    finish_reason = "prefilled"

    async def __aiter__(self):
        return
        yield

    async def cancel(self) -> None:
        return None


class BaselineBackend(InProcessBackend):
    def _load(self) -> None:
        from glmvoice.runtime.decoder_service import DecoderService
        from glmvoice.runtime.decoder_stream import DecoderStreams, StreamSettings
        from glmvoice.runtime.llm_engine import LLMEngine
        from glmvoice.runtime.serving import engine_config, pbtxt_parameters

        super()._load()
        self.engine.stop()  # replaced by a batch-1 engine without prefix reuse
        model = self.engine.runner.model
        config = engine_config(pbtxt_parameters(templates_dir() / "llm" / "config.pbtxt"))
        config = dataclasses.replace(config, max_slots=1, max_seq_len=self.max_seq_len, prefix_cache_tokens=0,
                                     prefill_chunk=self.max_seq_len)
        self.engine = LLMEngine(model, config).start()
        official = StreamSettings(context_blocks=None, prompt_frames=None)
        self.decoder = DecoderService(DecoderStreams(self.decoder.streams.decoder, official))

    def open_tokenizer(self, headers: dict[str, str] | None = None) -> WholeUtteranceTokenizerSession:
        return WholeUtteranceTokenizerSession(self)

    def generate(self, request: LMRequest, headers: dict[str, str] | None = None):
        if request.max_new_tokens == 0:
            return NoPrefill()
        return InProcessLMStream(self, dataclasses.replace(request, prefix_key=""))
