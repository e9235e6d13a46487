"""The `llm` model on a real Triton server, over gRPC streaming with tritonclient."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.runtime.generate import generate
from glmvoice.sampling import SamplingParams

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0.0)


class Stream:
    """One gRPC stream carrying one LLM request; collects ids until the FINAL flag."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.ids: list[int] = []
        self.errors: list[str] = []
        self.finish_reason = None
        self.final = threading.Event()
        self.first = threading.Event()
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error):
        if error is not None:
            self.errors.append(str(error))
            self.final.set()  # Triton sends an error as the request's last word
            return
        response = result.get_response()
        ids = result.as_numpy("output_ids")
        if ids is not None and ids.size:
            self.ids += ids.tolist()
            self.first.set()
        reason = result.as_numpy("finish_reason")
        if reason is not None:
            self.finish_reason = reason.reshape(-1)[0].decode()
        if response.parameters["triton_final_response"].bool_param:
            self.final.set()

    def send(self, prompt, max_new_tokens=16, temperature=0.0, dtype=np.int64, **extra):
        inputs = [tensor("input_ids", np.asarray(prompt, dtype=dtype))]
        inputs.append(tensor("max_new_tokens", np.array([max_new_tokens], np.int32)))
        inputs.append(tensor("temperature", np.array([temperature], np.float32)))
        for name, value in extra.items():
            inputs.append(tensor(name, value))
        self.client.async_stream_infer("llm", inputs, enable_empty_final_response=True)
        return self

    def close(self, cancel=False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def tensor(name, array):
    dtype = "BYTES" if array.dtype == np.object_ else grpcclient.np_to_triton_dtype(array.dtype)
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def engine_gauges(server) -> dict[str, float]:
    url = f"http://{server.settings.address}:{server.settings.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'glmvoice_llm_engine\{state="(\w+)"\} ([0-9.e+-]+)', text)}


def token_counters(server) -> dict[str, float]:
    url = f"http://{server.settings.address}:{server.settings.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'glmvoice_llm_tokens_total\{kind="(\w+)"\} ([0-9.e+-]+)', text)}


def settled_counters(server, quiet_s: float = 0.5, timeout_s: float = 15.0) -> dict[str, float]:
    """Token counters once they stop moving: earlier requests on this module's server publish their counts
    after their final responses, and a baseline read before they land would count them as this test's."""
    assert wait_for_gauge(server, "active", 0, timeout_s), "an earlier request is still running"
    deadline = time.monotonic() + timeout_s
    last = token_counters(server)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = token_counters(server)
        if now == last:
            return now
        last = now
    return last


def counted_since(server, before: dict[str, float], at_least: dict[str, int], timeout_s: float = 10.0) -> dict[str, float]:
    """Counter increases since `before`, once every kind has grown by `at_least` its figure (the adapter publishes
    a request's counts after its final response, so a read right after the response may miss them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = token_counters(server)
        delta = {kind: now[kind] - before.get(kind, 0.0) for kind in now}
        if all(delta.get(kind, 0) >= n for kind, n in at_least.items()) or time.monotonic() > deadline:
            return delta
        time.sleep(0.02)


def wait_for_gauge(server, state: str, value: float, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine_gauges(server)[state] == value:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def reference(tiny_llm_dir):
    model, tokenizer = load_llm(tiny_llm_dir)
    return model, tokenizer


def prompts(count, vocab):
    rng = np.random.default_rng(3)
    return [rng.integers(0, vocab, size=4 + 2 * i).tolist() for i in range(count)]


def test_streamed_ids_equal_the_in_process_runtime(triton_server, reference):
    model, _ = reference
    prompt = prompts(1, model.config.vocab_size)[0]
    stream = Stream(triton_server.grpc_url).send(prompt, max_new_tokens=20, stop_ids=np.array([-1], np.int64))
    try:
        assert stream.final.wait(60)
    finally:
        stream.close()
    assert not stream.errors
    assert stream.ids == generate(model, prompt, 20, params=GREEDY).ids
    assert stream.finish_reason == "length"


def test_concurrent_streams_equal_sequential_runs(triton_server, reference):
    model, _ = reference
    batch = prompts(8, model.config.vocab_size)
    streams = [Stream(triton_server.grpc_url).send(p, max_new_tokens=12, stop_ids=np.array([-1], np.int64)) for p in batch]
    try:
        for s in streams:
            assert s.final.wait(120)
    finally:
        for s in streams:
            s.close()
    for prompt, stream in zip(batch, streams):
        assert not stream.errors
        assert stream.ids == generate(model, prompt, 12, params=GREEDY).ids


def test_cancelling_a_stream_frees_its_slot(triton_server, reference):
    model, _ = reference
    baseline = engine_gauges(triton_server)
    stream = Stream(triton_server.grpc_url).send(prompts(1, model.config.vocab_size)[0], max_new_tokens=900, stop_ids=np.array([-1], np.int64))
    assert stream.first.wait(60)
    # The gauges are sampled by the adapter every few milliseconds: poll rather than race them.
    assert wait_for_gauge(triton_server, "active", baseline["active"] + 1)
    stream.close(cancel=True)
    assert wait_for_gauge(triton_server, "active", baseline["active"])
    gauges = engine_gauges(triton_server)
    assert gauges["active"] == baseline["active"] and gauges["free_slots"] == baseline["free_slots"]
    assert len(stream.ids) < 900


@pytest.mark.parametrize(
    "prompt, dtype, extra, message",
    [
        ([1, 2, 3], np.float32, {}, "input_ids"),
        ([10**8], np.int64, {}, "out of range"),
        ([], np.int64, {}, "empty prompt"),
        ([1, 2, 3], np.int64, {"top_p": np.array([1.5], np.float32)}, "top_p"),
    ],
)
def test_bad_requests_get_an_error_and_the_server_keeps_serving(triton_server, reference, prompt, dtype, extra, message):
    model, _ = reference
    bad = Stream(triton_server.grpc_url).send(prompt, dtype=dtype, **extra)
    try:
        assert bad.final.wait(30)
    finally:
        bad.close()
    assert bad.errors and re.search(message, bad.errors[0]), bad.errors
    good = Stream(triton_server.grpc_url).send(prompts(1, model.config.vocab_size)[0], max_new_tokens=3)
    try:
        assert good.final.wait(30) and not good.errors and len(good.ids) >= 1
    finally:
        good.close()


def test_prefix_key_reuses_a_sessions_prefill(triton_server, reference):
    model, _ = reference
    history = prompts(1, model.config.vocab_size)[0] * 6
    key = np.array([b"session-prefix-test"], np.object_)
    before = settled_counters(triton_server)
    prefill = Stream(triton_server.grpc_url).send(history, max_new_tokens=0, prefix_key=key)
    try:
        assert prefill.final.wait(30) and not prefill.errors
    finally:
        prefill.close()
    assert prefill.finish_reason == "prefilled" and prefill.ids == []
    prompt = history + [5, 6, 7]
    answer = Stream(triton_server.grpc_url).send(prompt, max_new_tokens=6, stop_ids=np.array([-1], np.int64), prefix_key=key)
    try:
        assert answer.final.wait(30) and not answer.errors
    finally:
        answer.close()
    assert answer.ids == generate(model, prompt, 6, params=GREEDY).ids
    # Triton's /metrics says so: over both requests the history was prefilled once (the second request prefilled
    # only the 3 new ids and took the history from the stored KV); without reuse it would be 2 * history + 3.
    delta = counted_since(triton_server, before, {"prefill": len(history) + 3, "generated": 6})
    assert (delta["prefill"], delta["prefix_reused"], delta["generated"]) == (len(history) + 3, len(history), 6)
