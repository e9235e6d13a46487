"""The `llm` Triton model's contract, written once: tensor names and dtypes, sampling fields, errors.

Both sides import it: the adapter (model_repo/llm/1/model.py) reads requests and sends errors with it,
and the orchestrator's Triton backend builds requests and maps errors with it. It imports neither torch
nor Triton (the orchestrator never loads torch); model_repo/llm/config.pbtxt declares the same tensors,
and the adapter refuses a config that disagrees (`check_model_config`).

Errors. A decoupled stream carries a per-request error as a message only (no status code reaches the
client), and Triton has no code for "resource exhausted". So the adapter puts the gRPC status the client
should see in front of the message (`[RESOURCE_EXHAUSTED] LM engine full: ...`), sets the nearest Triton
code for non-streaming clients (ERROR_TRITON_CODES), and the orchestrator reads the status back with
`error_status`. The statuses are what protos/glmvoice/v1/voice_chat.proto promises: bad input
INVALID_ARGUMENT, a full engine (a model's queue) RESOURCE_EXHAUSTED, anything else INTERNAL.
"""

from __future__ import annotations

import re

import numpy as np

MODEL_NAME = "llm"

INPUT_IDS = "input_ids"  # int64 [n]: the prompt
MAX_NEW_TOKENS = "max_new_tokens"  # int32 [1]: 0 only prefills and keeps the KV under prefix_key
STOP_IDS = "stop_ids"  # int64 [n]: ids that end the reply (default: the checkpoint's chat stop ids)
PREFIX_KEY = "prefix_key"  # bytes [1]: session id whose KV is kept for the next turn
STREAM_CHUNK_TOKENS = "stream_chunk_tokens"  # int32 [1]: fewest ids per streamed response but the last
# SamplingParams fields sent as inputs, with their dtypes (an absent one takes the official default).
SAMPLING_INPUTS = {
    "temperature": np.float32,
    "top_p": np.float32,
    "top_k": np.int32,
    "repetition_penalty": np.float32,
    "presence_penalty": np.float32,
    "seed": np.uint64,
}
INPUTS = {
    INPUT_IDS: np.int64, MAX_NEW_TOKENS: np.int32, **SAMPLING_INPUTS,
    STOP_IDS: np.int64, PREFIX_KEY: np.object_, STREAM_CHUNK_TOKENS: np.int32,
}
REQUIRED_INPUTS = (INPUT_IDS,)

OUTPUT_IDS = "output_ids"  # int64 [n]: ids generated since the last response
FINISH_REASON = "finish_reason"  # bytes [1], on the FINAL response: stop | length | prefilled
OUTPUTS = {OUTPUT_IDS: np.int64, FINISH_REASON: np.object_}

DEFAULT_MAX_NEW_TOKENS = 2000  # the official demo's max_new_tokens
# Model parameter: how often the adapter asks Triton which requests were cancelled (milliseconds).
CANCEL_POLL_MS = "cancel_poll_ms"



class EngineFullError(RuntimeError):
    """No slot and no room in the queue: the caller should retry later (RESOURCE_EXHAUSTED)."""


class RequestError(ValueError):
    """A request the engine can never serve as given (INVALID_ARGUMENT)."""


# gRPC status name -> the Triton error code the adapter sets (TritonError has no RESOURCE_EXHAUSTED).
ERROR_TRITON_CODES = {"INVALID_ARGUMENT": "INVALID_ARG", "RESOURCE_EXHAUSTED": "UNAVAILABLE", "INTERNAL": "INTERNAL"}
_TAG = re.compile(r"\[([A-Z_]+)\] ")

_PBTXT_TYPES = {np.int64: "TYPE_INT64", np.int32: "TYPE_INT32", np.float32: "TYPE_FP32", np.uint64: "TYPE_UINT64",
                np.object_: "TYPE_STRING"}


def request_inputs(prompt_ids, max_new_tokens: int, sampling, prefix_key: str | None = None) -> dict[str, np.ndarray]:
    """One request's input arrays by name; `sampling` has SamplingParams' fields (seed None is left out)."""
    arrays: dict[str, np.ndarray] = {
        INPUT_IDS: np.asarray(prompt_ids, np.int64).reshape(-1),
        MAX_NEW_TOKENS: np.array([max_new_tokens], np.int32),
    }
    for name, dtype in SAMPLING_INPUTS.items():
        value = getattr(sampling, name)
        if value is not None:
            arrays[name] = np.array([value], dtype)
    if prefix_key:
        arrays[PREFIX_KEY] = np.array([prefix_key.encode()], np.object_)
    return arrays


def status_of(exc: Exception) -> str:
    """The gRPC status name of an engine (or adapter) exception: both backends report it alike."""
    if isinstance(exc, ValueError):  # RequestError, and bad values met while reading a request
        return "INVALID_ARGUMENT"
    if isinstance(exc, EngineFullError):
        return "RESOURCE_EXHAUSTED"
    return "INTERNAL"


def tag_error(exc: Exception) -> tuple[str, str]:
    """-> (status name, message with the status in front), as the adapter sends it."""
    status = status_of(exc)
    return status, f"[{status}] {exc}"


def error_status(message: str) -> tuple[str | None, str]:
    """-> (the gRPC status name an adapter error message carries, None if it is not one of ours; the message
    without the status tag, for the client)."""
    match = _TAG.search(message)
    if not match or match.group(1) not in ERROR_TRITON_CODES:
        return None, message
    return match.group(1), message[: match.start()] + message[match.end() :]


def check_model_config(config: dict) -> None:
    """Refuses a model config (Triton's JSON form) this contract cannot serve: not decoupled, or tensors
    whose names or types differ from the ones above."""
    if not config.get("model_transaction_policy", {}).get("decoupled", False):
        raise ValueError("the llm model streams its ids: config.pbtxt must set model_transaction_policy { decoupled: true }")
    for kind, declared, expected in (("input", config.get("input", []), INPUTS), ("output", config.get("output", []), OUTPUTS)):
        found = {t["name"]: t["data_type"] for t in declared}
        want = {name: _PBTXT_TYPES[dtype] for name, dtype in expected.items()}
        if found != want:
            raise ValueError(f"config.pbtxt {kind}s {found} differ from the llm contract {want}")
