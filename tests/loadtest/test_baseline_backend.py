"""BACKEND=baseline (the official-style runtime the load test compares against) against the in-process runtime:
same answers, different schedule (whole-utterance tokenization, no prefill during speech, batch 1)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from glmvoice.sampling import SamplingParams
from services.orchestrator.backends import LMRequest
from services.orchestrator.backends.baseline import BaselineBackend
from services.orchestrator.backends.inprocess import InProcessBackend


@pytest.fixture(scope="module")
def dirs(tiny_speech_tokenizer_dir, tiny_llm_dir, tiny_speech_decoder_dir):
    return tiny_speech_tokenizer_dir, tiny_llm_dir, tiny_speech_decoder_dir


async def _ids(backend, prompt) -> list[int]:
    return [t async for t in backend.generate(LMRequest(prompt, SamplingParams(temperature=0.0), 12, "session"))]


def test_baseline_tokenizes_the_whole_utterance_at_the_end_and_answers_like_the_runtime(dirs):
    async def run():
        baseline, ours = BaselineBackend(*dirs), InProcessBackend(*dirs)
        await baseline.start()
        await ours.start()
        try:
            assert baseline.engine.config.max_slots == 1 and baseline.engine.config.prefix_cache_tokens == 0
            assert baseline.decoder.streams.settings.context_blocks is None  # the whole answer as prompt
            audio = (0.2 * np.sin(np.arange(16000 * 2) / 7)).astype(np.float32)
            session = baseline.open_tokenizer()
            during = [await session.push(audio[i : i + 3200]) for i in range(0, len(audio) - 3200, 3200)]
            codes = await session.push(audio[len(audio) - 3200 :], end=True)
            assert all(c == [] for c in during)  # nothing is tokenized while the user speaks
            assert codes == baseline.tokenizer.tokenizer.tokenize(audio, 16000)  # the offline, whole-clip codes
            prefill_only = baseline.generate(LMRequest([1, 2, 3], SamplingParams(), 0, "session"))
            assert [t async for t in prefill_only] == []
            prompt = list(range(5, 40))
            assert await _ids(baseline, prompt) == await _ids(ours, prompt)
        finally:
            await baseline.close()
            await ours.close()

    asyncio.run(run())
