"""The LM split over 2 tensor-parallel ranks (gloo, CPU worker processes) against one unsplit model:
logits, greedy ids through the engine (in-flight batching), cancellation, prefix reuse, and a dead rank."""

import os
import signal
import threading

import pytest
import torch

from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.models.llm_tensor_parallel import shard_config
from glmvoice.runtime.generate import generate
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine
from glmvoice.runtime.model_runner import ModelRunner
from glmvoice.runtime.tensor_parallel import RankFailure, RankSpec, TensorParallelRunner
from glmvoice.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
SLOTS, SEQ = 2, 256


@pytest.fixture(scope="module")
def model(tiny_llm_dir):
    return load_llm(tiny_llm_dir)[0]


@pytest.fixture(scope="module")
def tp_runner(tiny_llm_dir):
    runner = TensorParallelRunner(RankSpec(str(tiny_llm_dir), world=2, max_slots=SLOTS, max_seq_len=SEQ))
    yield runner
    runner.close()


class Stream:
    def __init__(self):
        self.ids, self.reason, self.done = [], None, threading.Event()

    def finish(self, reason, error):
        self.reason = (reason, error)
        self.done.set()


def submit(engine, prompt, max_new, **kwargs) -> Stream:
    stream = Stream()
    stream.request_id = engine.submit(GenerationRequest(prompt, GREEDY, max_new, **kwargs), stream.ids.append, stream.finish)
    return stream


def test_ranks_refuse_a_split_the_kv_groups_do_not_allow(model):
    with pytest.raises(ValueError, match="KV groups"):
        shard_config(model.config, 4)


def test_logits_of_two_ranks_equal_one(model, tp_runner):
    single = ModelRunner(model, SLOTS, SEQ)
    prompt = [3, 9, 27, 81, 243, 5, 7]
    assert torch.allclose(tp_runner.forward([prompt], [0], [0]), single.forward([prompt], [0], [0]), atol=1e-5, rtol=0)
    step = ([[11], [12]], [7, 0], [0, 1])
    assert torch.allclose(tp_runner.forward(*step), single.forward(*step), atol=1e-5, rtol=0)


def test_engine_on_two_ranks_batches_cancels_and_reuses_prefixes(model, tp_runner):
    engine = LLMEngine(tp_runner, EngineConfig(max_slots=SLOTS, max_seq_len=SEQ, prefill_chunk=8))
    engine.start()
    try:
        # In-flight batching: 3 requests on 2 slots, greedy ids equal the unsplit single-request path.
        prompts = [[1, 2, 3, 4, 5], [7] * 11, [9, 8, 7, 6]]
        streams = [submit(engine, p, 10) for p in prompts]
        assert all(s.done.wait(120) for s in streams)
        for prompt, stream in zip(prompts, streams):
            assert stream.reason == ("length", None) and stream.ids == generate(model, prompt, 10, params=GREEDY).ids
        # Prefix reuse: the second turn prefills only what is new, with the same ids.
        first = [4, 5, 6, 7] * 5
        turn1 = submit(engine, first, 6, prefix_key="s")
        assert turn1.done.wait(120)
        second = first + turn1.ids + [1, 2]
        before = engine.stats()
        turn2 = submit(engine, second, 6, prefix_key="s")
        assert turn2.done.wait(120)
        assert engine.stats()["prefix_reused_tokens"] - before["prefix_reused_tokens"] == len(first) + len(turn1.ids) - 1
        assert turn2.ids == generate(model, second, 6, params=GREEDY).ids
        # Cancellation frees the slot at once.
        long = submit(engine, [3, 3, 3], 200)
        while not long.ids:
            assert not long.done.wait(0.02)
        assert engine.cancel(long.request_id) and long.reason == ("cancelled", None)
        assert engine.stats()["free_slots"] == SLOTS
    finally:
        engine.stop()


def test_a_dead_rank_fails_every_request_with_a_clear_error(tiny_llm_dir):
    runner = TensorParallelRunner(RankSpec(str(tiny_llm_dir), world=2, max_slots=1, max_seq_len=SEQ, timeout_s=30))
    engine = LLMEngine(runner, EngineConfig(max_slots=1, max_seq_len=SEQ)).start()
    try:
        running = submit(engine, [5, 6, 7], 240)
        waiting = submit(engine, [8, 9], 4)  # queued behind it: no slot
        while not running.ids:
            assert not running.done.wait(0.02)
        os.kill(runner.procs[1].pid, signal.SIGKILL)
        assert running.done.wait(30) and waiting.done.wait(30), "a request hangs after a rank died"
        for stream in (running, waiting):
            reason, error = stream.reason
            assert reason == "error" and isinstance(error, RankFailure) and "rank 1" in str(error)
        late = submit(engine, [1, 2], 2)
        assert late.done.wait(30) and late.reason[0] == "error" and "rank 1" in str(late.reason[1])
    finally:
        engine.stop()
        runner.close()
    assert not any(p.is_alive() for p in runner.procs)


@pytest.mark.parametrize("bits", ["8", "4"])
def test_two_ranks_of_a_quantized_checkpoint_equal_one(tiny_llm_dir, tmp_path, bits):
    """Ranks cut the stored quantized tensors (a row's per-channel scale stays whole), so they compute
    exactly the unsplit quantized model."""
    from glmvoice.cli import main as cli_main

    assert cli_main(["quantize", "--checkpoint", str(tiny_llm_dir), "--bits", bits, "--out", str(tmp_path / "q")]) == 0
    single = ModelRunner(load_llm(tmp_path / "q")[0], 1, 64)
    runner = TensorParallelRunner(RankSpec(str(tmp_path / "q"), world=2, max_slots=1, max_seq_len=64))
    try:
        prompt = [3, 9, 27, 81, 243, 5, 7]
        assert torch.allclose(runner.forward([prompt], [0], [0]), single.forward([prompt], [0], [0]), atol=1e-5, rtol=0)
    finally:
        runner.close()
