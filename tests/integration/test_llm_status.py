"""A full LM engine is RESOURCE_EXHAUSTED through both orchestrator backends, as the proto and docs say.

The Triton `llm` model here has one KV slot and no queue, so a second request while one is decoding is
refused; the in-process backend runs the same engine settings. Both reach the orchestrator as `Exhausted`.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest

from glmvoice.models.llm_checkpoint import load_llm
from glmvoice.runtime.llm_engine import LLMEngine
from glmvoice.runtime.serving import engine_config
from glmvoice.sampling import SamplingParams
from services.orchestrator.backends import LMRequest
from services.orchestrator.backends.inprocess import InProcessBackend
from services.orchestrator.backends.triton import TritonBackend
from services.orchestrator.errors import OrchestratorError
from services.triton.launcher import TritonServer, TritonSettings
from services.triton.repository import build_repository
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ONE_SLOT = {"max_slots": "1", "max_queue": "0"}
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def one_slot_llm(tmp_path_factory, tiny_llm_dir):
    repository = build_repository(tmp_path_factory.mktemp("one_slot_repo"), {"llm": tiny_llm_dir}, device="cpu")
    config = repository / "llm" / "config.pbtxt"
    text = config.read_text()
    for key, value in ONE_SLOT.items():
        text = re.sub(rf'(key: "{key}" value: {{ string_value: )"\d+"', rf'\1"{value}"', text)
    config.write_text(text)
    settings = TritonSettings(model_repository=repository, models=("llm",), grpc_port=free_port(),
                              http_port=free_port(), metrics_port=free_port())
    server = TritonServer(settings, log_path=tmp_path_factory.mktemp("triton_one_slot") / "log").start(ready_timeout_s=180)
    yield server
    server.stop()


async def status_of_second_request(backend) -> tuple[grpc.StatusCode, str]:
    """Starts a long reply, waits for its first id, then asks for a second one -> the second one's status."""
    first = backend.generate(LMRequest([5, 6, 7, 8], GREEDY, 900, "first"))
    tokens = first.__aiter__()
    await asyncio.wait_for(tokens.__anext__(), 60)
    try:
        second = backend.generate(LMRequest([5, 6, 7], GREEDY, 4, "second"))
        async for _ in second:
            pass
    except OrchestratorError as exc:
        return exc.code, str(exc)
    finally:
        await first.cancel()
    raise AssertionError("the second request was served by a one-slot engine")


def test_a_full_engine_is_resource_exhausted_in_both_backends(one_slot_llm, tiny_llm_dir):
    model, tokenizer = load_llm(tiny_llm_dir)

    async def triton() -> tuple[grpc.StatusCode, str]:
        backend = TritonBackend({"llm": one_slot_llm.grpc_url}, tokenizer, decoder_block=10)
        try:
            return await status_of_second_request(backend)
        finally:
            await backend.close()

    async def in_process() -> tuple[grpc.StatusCode, str]:
        # The in-process backend's LM path, over an engine with the Triton model's one-slot settings.
        backend = InProcessBackend(tiny_llm_dir, tiny_llm_dir, tiny_llm_dir)
        backend.text_tokenizer = tokenizer
        backend.engine = LLMEngine(model, engine_config({"max_seq_len": "1024", **ONE_SLOT})).start()
        try:
            return await status_of_second_request(backend)
        finally:
            backend.engine.stop()

    triton_code, triton_message = asyncio.run(triton())
    local_code, local_message = asyncio.run(in_process())
    assert triton_code == local_code == grpc.StatusCode.RESOURCE_EXHAUSTED, (triton_message, local_message)
    assert "LM engine full" in triton_message and "LM engine full" in local_message


def test_proto_and_docs_promise_resource_exhausted_for_a_full_model_queue():
    for path in (ROOT / "protos/glmvoice/v1/voice_chat.proto", ROOT / "docs/api.md"):
        text = " ".join(path.read_text().split())
        assert re.search(r"RESOURCE_EXHAUSTED \([^)]*model's queue", text), path
