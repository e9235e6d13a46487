"""Prefix reuse when the new prompt does NOT extend the cached one: the engine must compare ids, not trust
the key. Through the engine's public API only (submit / stats), against the single-request loop."""

import threading

import torch

from glmvoice.runtime.generate import generate
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine
from glmvoice.runtime.llm_scheduler import PrefixStore
from tests.unit.test_llm_engine import GREEDY, Collector, model, prompts, run_engine  # noqa: F401 - fixture

CONFIG = EngineConfig(max_slots=3, max_seq_len=256, prefill_chunk=8)


def diverging(prompt: list[int], at: int, vocab: int) -> list[int]:
    """The prompt's first `at` ids, then different ones (a text turn where a spoken turn was prefilled)."""
    tail = torch.randint(0, vocab, (12,), generator=torch.Generator().manual_seed(99)).tolist()
    tail[0] = (prompt[at] + 1) % vocab  # differs at position `at` for sure
    return prompt[:at] + tail


def test_a_prompt_diverging_mid_cache_reuses_only_the_common_prefix(model):
    vocab = model.config.vocab_size
    spoken = prompts(1, vocab)[0] * 8  # 40 ids: the spoken turn prefilled while the user talks
    typed = diverging(spoken, 17, vocab)  # the user typed instead: same history, then different ids
    engine = LLMEngine(model, CONFIG).start()
    try:
        [prefilled] = run_engine(engine, [GenerationRequest(spoken, GREEDY, 0, prefix_key="s")])
        assert prefilled.reason == ("prefilled", None)
        before = engine.stats()
        [answer] = run_engine(engine, [GenerationRequest(typed, GREEDY, 10, prefix_key="s")])
        after = engine.stats()
    finally:
        engine.stop()
    assert after["prefix_reused_tokens"] - before["prefix_reused_tokens"] == 17
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(typed) - 17
    assert answer.ids == generate(model, typed, 10, params=GREEDY).ids


def test_a_prompt_diverging_at_the_first_id_reuses_nothing(model):
    vocab = model.config.vocab_size
    spoken = prompts(1, vocab)[0] * 4
    other = diverging(spoken, 0, vocab)
    engine = LLMEngine(model, CONFIG).start()
    try:
        run_engine(engine, [GenerationRequest(spoken, GREEDY, 0, prefix_key="s")])
        before = engine.stats()
        [answer] = run_engine(engine, [GenerationRequest(other, GREEDY, 8, prefix_key="s")])
        after = engine.stats()
    finally:
        engine.stop()
    assert after["prefix_reused_tokens"] == before["prefix_reused_tokens"]
    assert answer.ids == generate(model, other, 8, params=GREEDY).ids


def test_two_streams_on_one_session_each_get_their_own_answer(model):
    """Two requests under one key at once (two Converse streams resuming one session): one may take the
    cached KV, the other prefills; both answers equal the single-request loop's, whichever got the cache."""
    vocab = model.config.vocab_size
    history = prompts(1, vocab)[0] * 6
    extend = history + [3, 4, 5]
    diverge = diverging(history, 11, vocab)
    engine = LLMEngine(model, CONFIG).start()
    try:
        run_engine(engine, [GenerationRequest(history, GREEDY, 0, prefix_key="s")])
        results = [Collector(), Collector()]
        gate = threading.Barrier(2)

        def submit(prompt, collector):
            gate.wait()
            engine.submit(GenerationRequest(prompt, GREEDY, 12, prefix_key="s"), collector.on_token, collector.on_finish)

        threads = [threading.Thread(target=submit, args=a) for a in ((extend, results[0]), (diverge, results[1]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            assert r.done.wait(60)
        # The session's next turn after both: whatever was stored last must still be checked against its ids.
        follow = diverging(extend, 5, vocab)
        [third] = run_engine(engine, [GenerationRequest(follow, GREEDY, 6, prefix_key="s")])
    finally:
        engine.stop()
    assert results[0].ids == generate(model, extend, 12, params=GREEDY).ids
    assert results[1].ids == generate(model, diverge, 12, params=GREEDY).ids
    assert third.ids == generate(model, follow, 6, params=GREEDY).ids


def test_prefix_store_keeps_to_its_token_budget_and_evicts_the_oldest(model):
    """Prefill-only requests store their whole prompt; the store holds at most prefix_cache_tokens (a prompt of
    exactly that many is kept, one more is not) and evicts the least recently stored key first."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    engine = LLMEngine(model, EngineConfig(max_slots=2, max_seq_len=128, prefill_chunk=16, prefix_cache_tokens=60)).start()

    def prefill(key: str, prompt: list[int]) -> dict:
        [done] = run_engine(engine, [GenerationRequest(prompt, GREEDY, 0, prefix_key=key)])
        assert done.reason == ("prefilled", None)
        stats = engine.stats()
        return {"entries": stats["prefix_entries"], "tokens": stats["prefix_tokens"]}

    try:
        assert prefill("a", ids[:30]) == {"entries": 1, "tokens": 30}
        assert prefill("b", ids[30:60]) == {"entries": 2, "tokens": 60}  # exactly full: nothing evicted
        assert prefill("c", ids[60:90]) == {"entries": 2, "tokens": 60}  # "a" (the oldest) made room
        before = engine.stats()["prefix_reused_tokens"]
        prefill("a", ids[:31])  # evicted: nothing to reuse
        assert engine.stats()["prefix_reused_tokens"] == before
        assert prefill("d", ids[100:160]) == {"entries": 1, "tokens": 60}  # as large as the store: kept alone
        assert prefill("e", ids[:61]) == {"entries": 1, "tokens": 60}  # larger than the store: not kept
        before = engine.stats()["prefix_reused_tokens"]
        prefill("d", ids[100:161])
        assert engine.stats()["prefix_reused_tokens"] - before == 60
    finally:
        engine.stop()


def test_the_same_prompt_again_reuses_all_but_its_last_id(model):
    """A retried turn: the prompt equals the cached ids. One id is still fed, so the first reply token has logits."""
    vocab = model.config.vocab_size
    prompt = prompts(1, vocab)[0] * 5
    engine = LLMEngine(model, CONFIG).start()
    try:
        run_engine(engine, [GenerationRequest(prompt, GREEDY, 0, prefix_key="s")])
        before = engine.stats()
        [answer] = run_engine(engine, [GenerationRequest(prompt, GREEDY, 8, prefix_key="s")])
        after = engine.stats()
    finally:
        engine.stop()
    assert after["prefix_reused_tokens"] - before["prefix_reused_tokens"] == len(prompt) - 1
    assert answer.ids == generate(model, prompt, 8, params=GREEDY).ids


def test_storing_a_key_again_replaces_its_entry():
    """Two streams on one session both finish and store under the same key: the second replaces the first,
    and the token count holds only the entry kept (counting both would evict it from a store it fits)."""
    store = PrefixStore(capacity_tokens=10)
    store.put("s", [1] * 6, "kv-1")
    store.put("s", [2] * 6, "kv-2")
    assert store.tokens == 6
    assert dict(store.entries) == {"s": ([2] * 6, "kv-2")}
