"""The `llm` Triton model with tensor_parallel 2: one model instance driving two gloo rank processes,
seen by the orchestrator's Triton backend exactly like the unsplit model."""

from __future__ import annotations

import asyncio
import re

import pytest

from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.runtime.generate import generate
from glmvoice.sampling import SamplingParams
from services.orchestrator.backends import LMRequest
from services.orchestrator.backends.triton import TritonBackend
from services.triton.launcher import TritonServer, TritonSettings
from services.triton.repository import build_repository
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.integration
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def tp_llm(tmp_path_factory, tiny_llm_dir):
    repository = build_repository(tmp_path_factory.mktemp("tp_repo"), {"llm": tiny_llm_dir}, device="cpu")
    config = repository / "llm" / "config.pbtxt"
    config.write_text(re.sub(r'(key: "tensor_parallel" value: { string_value: )"\d+"', r'\1"2"', config.read_text()))
    settings = TritonSettings(model_repository=repository, models=("llm",), grpc_port=free_port(),
                              http_port=free_port(), metrics_port=free_port())
    server = TritonServer(settings, log_path=tmp_path_factory.mktemp("triton_tp") / "log").start(ready_timeout_s=240)
    yield server
    server.stop()


def test_two_rank_llm_streams_the_unsplit_models_greedy_ids(tp_llm, tiny_llm_dir):
    model, tokenizer = load_llm(tiny_llm_dir)
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13]]

    async def run() -> list[list[int]]:
        backend = TritonBackend({"llm": tp_llm.grpc_url}, tokenizer, decoder_block=10)
        try:
            async def one(prompt, key):
                return [t async for t in backend.generate(LMRequest(prompt, GREEDY, 12, key))]
            return await asyncio.gather(*(one(p, f"tp-{i}") for i, p in enumerate(prompts)))
        finally:
            await backend.close()

    for prompt, ids in zip(prompts, asyncio.run(run())):
        # The stream includes the stop id if one is produced; generate() leaves it out.
        reference = generate(model, prompt, 12, stop_ids=tokenizer.stop_ids, params=GREEDY)
        assert ids[: len(reference.ids)] == reference.ids
