"""One short, real inference per model, sent to one explicit version of one replica.

A canary passes when the request finishes without error and its output has the shape the checkpoint's
own config says it must have (ids inside the vocabulary, codes inside the codebook, finite audio).
Sizes are read from the checkpoint being promoted, never assumed.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from glmvoice.runtime import llm_contract
from glmvoice.sampling import SamplingParams
from services.promoter.replicas import Replica


class CanaryError(RuntimeError):
    """The new version answered wrongly or not at all."""


def _tensor(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), grpcclient.np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def _corrid(url: str, version: int) -> int:
    # Sequence-batched models key state by correlation id: pick one far above what clients use (the
    # client sends it as a signed 64-bit number, so bit 62 is the highest usable).
    return (1 << 62) | zlib.crc32(f"canary:{url}:{version}".encode())


def _stream(replica: Replica, model: str, version: int, inputs, timeout_s: float, output: str,
            **kwargs) -> list[np.ndarray]:
    """A decoupled request over a gRPC stream; returns every non-empty `output` until the FINAL flag."""
    url = replica.url
    client = replica.client()
    chunks: list[np.ndarray] = []
    errors: list[str] = []
    final = threading.Event()

    def on_response(result, error):
        if error is not None:
            errors.append(str(error))
            final.set()
            return
        array = result.as_numpy(output)
        if array is not None and array.size:
            chunks.append(array.reshape(-1))
        if result.get_response().parameters["triton_final_response"].bool_param:
            final.set()

    finished = False
    try:
        client.start_stream(callback=on_response)
        client.async_stream_infer(model, inputs, model_version=str(version), enable_empty_final_response=True, **kwargs)
        finished = final.wait(timeout_s)
        seen = list(errors)  # closing the stream below reports its own cancellation: not the model's error
    finally:
        client.stop_stream(cancel_requests=not finished)
        client.close()
    if not finished:
        raise CanaryError(f"{model} v{version} at {url}: no final response in {timeout_s:.0f} s")
    if seen:
        raise CanaryError(f"{model} v{version} at {url}: {seen[0]}")
    return chunks


def llm_canary(replica: Replica, version: int, checkpoint: Path, timeout_s: float) -> dict:
    from glmvoice.models.llm_checkpoint import load_config
    from glmvoice.models.text_tokenizer import TextTokenizer

    vocab = load_config(checkpoint).vocab_size
    prompt = TextTokenizer.from_directory(checkpoint).encode_prompt("hello")
    arrays = llm_contract.request_inputs(prompt, 4, SamplingParams(temperature=0.0))  # greedy, 4 ids
    inputs = [_tensor(name, array) for name, array in arrays.items()]
    url = replica.url
    chunks = _stream(replica, llm_contract.MODEL_NAME, version, inputs, timeout_s, llm_contract.OUTPUT_IDS)
    ids = [int(i) for chunk in chunks for i in chunk]
    if not ids or not all(0 <= i < vocab for i in ids):
        raise CanaryError(f"llm v{version} at {url}: greedy reply {ids} is empty or outside the vocabulary ({vocab})")
    return {"reply_ids": ids}


def speech_tokenizer_canary(replica: Replica, version: int, checkpoint: Path, timeout_s: float) -> dict:
    from glmvoice.models.speech_tokenizer import read_speech_tokenizer_config

    codebook = read_speech_tokenizer_config(checkpoint).quantize_vocab_size
    rate = 16000
    clip = (0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)
    url = replica.url
    client = replica.client()
    try:
        inputs = [_tensor("AUDIO", clip[None]), _tensor("SAMPLE_RATE", np.array([[rate]], np.int32))]
        result = client.infer("speech_tokenizer", inputs, model_version=str(version), sequence_id=_corrid(url, version),
                              sequence_start=True, sequence_end=True, client_timeout=timeout_s)
    except Exception as exc:  # tritonclient raises its own exception types; all mean the canary failed
        raise CanaryError(f"speech_tokenizer v{version} at {url}: {exc}") from exc
    finally:
        client.close()
    codes = result.as_numpy("CODES").reshape(-1).tolist()
    if not codes or not all(0 <= c < codebook for c in codes):
        raise CanaryError(f"speech_tokenizer v{version} at {url}: codes {codes[:8]} empty or outside the codebook "
                          f"({codebook})")
    return {"codes": len(codes)}


def speech_decoder_canary(replica: Replica, version: int, checkpoint: Path, timeout_s: float) -> dict:
    from glmvoice.models.speech_decoder import read_decoder_config

    codebook = read_decoder_config(checkpoint).flow.vocab_size
    block = (np.arange(10, dtype=np.int64) * 7919) % codebook  # one 0.8 s block of varied codes
    url = replica.url
    chunks = _stream(replica, "speech_decoder", version, [_tensor("CODES", block[None])], timeout_s, "AUDIO",
                     sequence_id=_corrid(url, version), sequence_start=True, sequence_end=True)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise CanaryError(f"speech_decoder v{version} at {url}: {audio.size} samples, "
                          f"finite: {bool(np.isfinite(audio).all())}")
    return {"samples": int(audio.size)}


CANARIES = {"llm": llm_canary, "speech_tokenizer": speech_tokenizer_canary, "speech_decoder": speech_decoder_canary}


def run_canary(replica: Replica | str, model: str, version: int, checkpoint: Path, timeout_s: float = 60.0) -> dict:
    """`replica`: a Replica (its TLS settings), or a plaintext host:port."""
    if model not in CANARIES:
        raise ValueError(f"no canary for model {model!r}; expected one of {sorted(CANARIES)}")
    if isinstance(replica, str):
        replica = Replica(replica, replica)
    return CANARIES[model](replica, version, Path(checkpoint), timeout_s)
