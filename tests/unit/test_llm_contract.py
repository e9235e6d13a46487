"""The `llm` contract: config.pbtxt declares exactly its tensors, it refuses what it cannot serve, and the
orchestrator side of it loads without torch."""

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from glmvoice.runtime import llm_contract as contract
from glmvoice.sampling import SamplingParams

CONFIG = Path(__file__).resolve().parents[2] / "model_repo" / "llm" / "config.pbtxt"


def triton_json(pbtxt: str) -> dict:
    """The config as Triton hands it to initialize(): the ModelConfig message in JSON form."""
    message = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_the_shipped_config_matches_the_contract():
    config = triton_json(CONFIG.read_text())
    contract.check_model_config(config)
    assert contract.CANCEL_POLL_MS in config["parameters"]


def test_a_config_that_is_not_decoupled_is_refused():
    pbtxt = CONFIG.read_text().replace("model_transaction_policy { decoupled: true }", "")
    with pytest.raises(ValueError, match="decoupled"):
        contract.check_model_config(triton_json(pbtxt))


def test_a_config_with_other_tensor_names_is_refused():
    pbtxt = CONFIG.read_text().replace('name: "top_k"', 'name: "topk"')
    with pytest.raises(ValueError, match="topk"):
        contract.check_model_config(triton_json(pbtxt))


def test_request_inputs_carry_every_sampling_field_with_its_dtype():
    sampling = SamplingParams(temperature=0.5, top_p=0.9, top_k=7, repetition_penalty=1.1, presence_penalty=0.2, seed=3)
    arrays = contract.request_inputs([1, 2, 3], 5, sampling, "session")
    assert set(arrays) == {contract.INPUT_IDS, contract.MAX_NEW_TOKENS, contract.PREFIX_KEY, *contract.SAMPLING_INPUTS}
    for name, array in arrays.items():
        assert array.dtype == contract.INPUTS[name], name
    assert arrays["top_k"].tolist() == [7] and arrays["seed"].tolist() == [3]
    assert "seed" not in contract.request_inputs([1], 1, SamplingParams())


@pytest.mark.parametrize(
    "exc, status",
    [(contract.RequestError("empty prompt"), "INVALID_ARGUMENT"), (ValueError("top_p"), "INVALID_ARGUMENT"),
     (contract.EngineFullError("LM engine full"), "RESOURCE_EXHAUSTED"), (RuntimeError("boom"), "INTERNAL")],
)
def test_errors_carry_their_status_in_the_message(exc, status):
    name, message = contract.tag_error(exc)
    assert name == status and contract.error_status(f"llm: {message}") == (status, f"llm: {exc}")
    assert contract.error_status("plain message") == (None, "plain message")


def test_the_contract_imports_without_torch():
    code = "import sys, glmvoice.runtime.llm_contract; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
