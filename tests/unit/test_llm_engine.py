"""The in-flight batching engine against the single-request reference loop (runtime.generate)."""

import threading

import pytest
import torch

from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.runtime.generate import generate
from glmvoice.runtime.llm_engine import EngineConfig, EngineFullError, GenerationRequest, LLMEngine, RequestError
from glmvoice.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def model(tiny_llm_dir):
    model, _ = load_llm(tiny_llm_dir)
    return model


def prompts(count: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (5 + 3 * i,), generator=generator).tolist() for i in range(count)]


class Collector:
    """Gathers one request's stream; `done` is set by on_finish."""

    def __init__(self):
        self.ids: list[int] = []
        self.reason = None
        self.done = threading.Event()

    def on_token(self, token: int) -> None:
        self.ids.append(token)

    def on_finish(self, reason, error) -> None:
        self.reason = (reason, error)
        self.done.set()


def run_engine(engine: LLMEngine, requests: list[GenerationRequest]) -> list[Collector]:
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors):
        engine.submit(request, collector.on_token, collector.on_finish)
    for collector in collectors:
        assert collector.done.wait(60), "request did not finish"
    return collectors


def test_concurrent_greedy_streams_equal_sequential_runs(model):
    batch = prompts(6, model.config.vocab_size)
    engine = LLMEngine(model, EngineConfig(max_slots=4, max_seq_len=128, prefill_chunk=4)).start()
    try:
        # 6 requests on 4 slots: two wait in the queue and join the batch mid-flight.
        results = run_engine(engine, [GenerationRequest(p, GREEDY, max_new_tokens=12) for p in batch])
    finally:
        engine.stop()
    for prompt, result in zip(batch, results):
        reference = generate(model, prompt, 12, params=GREEDY)
        assert result.reason == ("length", None)
        assert result.ids == reference.ids


def test_stop_ids_end_a_request(model):
    prompt = prompts(1, model.config.vocab_size)[0]
    reference = generate(model, prompt, 8, params=GREEDY).ids
    engine = LLMEngine(model, EngineConfig(max_slots=2, max_seq_len=64)).start()
    try:
        [result] = run_engine(engine, [GenerationRequest(prompt, GREEDY, 8, stop_ids=frozenset({reference[3]}))])
    finally:
        engine.stop()
    stop_at = reference.index(reference[3])
    assert result.reason == ("stop", None) and result.ids == reference[: stop_at + 1]


def test_cancel_frees_the_slot_at_once(model):
    engine = LLMEngine(model, EngineConfig(max_slots=2, max_seq_len=512)).start()
    try:
        collector = Collector()
        first_token = threading.Event()
        request = GenerationRequest(prompts(1, model.config.vocab_size)[0], GREEDY, max_new_tokens=400)
        request_id = engine.submit(request, lambda t: (collector.on_token(t), first_token.set()), collector.on_finish)
        assert first_token.wait(30)
        assert engine.stats()["free_slots"] == 1
        assert engine.cancel(request_id)
        assert collector.done.is_set() and collector.reason == ("cancelled", None)
        assert engine.stats()["free_slots"] == 2 and engine.stats()["active"] == 0
        assert not engine.cancel(request_id)
    finally:
        engine.stop()
    assert len(collector.ids) < 400


def test_full_engine_refuses_with_a_clear_error(model):
    # Not started: nothing leaves the queue, so the limits are exact.
    engine = LLMEngine(model, EngineConfig(max_slots=1, max_seq_len=64, max_queue=2))  # 1 slot + 2 waiting
    prompt = prompts(1, model.config.vocab_size)[0]
    for _ in range(3):
        engine.submit(GenerationRequest(prompt, GREEDY, 4), lambda t: None, lambda r, e: None)
    with pytest.raises(EngineFullError, match="max_queue 2"):
        engine.submit(GenerationRequest(prompt, GREEDY, 4), lambda t: None, lambda r, e: None)


@pytest.mark.parametrize(
    "prompt_ids, max_new, message",
    [([], 4, "empty prompt"), ([10**9], 4, "out of range"), ([1, 2], -1, "max_new_tokens"), ([1, 2], 0, "prefix_key"),
     ([1] * 64, 4, "exceeds max_seq_len")],
)
def test_bad_requests_are_refused(model, prompt_ids, max_new, message):
    engine = LLMEngine(model, EngineConfig(max_slots=1, max_seq_len=64))
    with pytest.raises(RequestError, match=message):
        engine.submit(GenerationRequest(prompt_ids, GREEDY, max_new), lambda t: None, lambda r, e: None)


def test_prefix_reuse_prefills_only_the_new_turn_and_changes_nothing(model):
    first_prompt = prompts(1, model.config.vocab_size)[0] * 4
    config = EngineConfig(max_slots=2, max_seq_len=256, prefill_chunk=16)
    engine = LLMEngine(model, config).start()
    try:
        [turn1] = run_engine(engine, [GenerationRequest(first_prompt, GREEDY, 10, prefix_key="session-1")])
        history = first_prompt + turn1.ids
        second_prompt = history + [3, 4, 5, 6]
        before = engine.stats()
        [turn2] = run_engine(engine, [GenerationRequest(second_prompt, GREEDY, 10, prefix_key="session-1")])
        after = engine.stats()
    finally:
        engine.stop()
    # The last generated id was never fed, so its KV is not cached: it is prefilled with the new input.
    reused = after["prefix_reused_tokens"] - before["prefix_reused_tokens"]
    assert reused == len(history) - 1
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(second_prompt) - reused
    assert turn2.ids == generate(model, second_prompt, 10, params=GREEDY).ids


def test_prefill_while_speaking_then_answer_prefills_only_the_tail(model):
    speech = prompts(1, model.config.vocab_size)[0] * 10  # 50 ids
    engine = LLMEngine(model, EngineConfig(max_slots=2, max_seq_len=256, prefill_chunk=8)).start()
    try:
        # The user is still speaking: prefill what has arrived, twice, as it grows.
        for partial in (speech[:20], speech[:40]):
            [done] = run_engine(engine, [GenerationRequest(partial, GREEDY, 0, prefix_key="s")])
            assert done.reason == ("prefilled", None) and done.ids == []
        before = engine.stats()
        final_prompt = speech + [7, 8]
        [answer] = run_engine(engine, [GenerationRequest(final_prompt, GREEDY, 8, prefix_key="s")])
        after = engine.stats()
    finally:
        engine.stop()
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(final_prompt) - 40
    assert answer.ids == generate(model, final_prompt, 8, params=GREEDY).ids
