"""The Triton backend: tritonclient gRPC (asyncio) to the three models, one channel per deployment.

- speech_tokenizer: sequence batching; one CORRID per user turn, START on the first block, END on the last.
- llm: decoupled; one gRPC stream per request; cancelling the call is Triton cancellation (the model's
  watcher frees the KV slot). max_new_tokens 0 prefills only and keeps the KV under prefix_key.
- speech_decoder: decoupled + sequence batching; one gRPC stream and one CORRID per reply.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferenceServerException, InferInput
from tritonclient.utils import np_to_triton_dtype

from glmvoice.models.text_tokenizer import TextTokenizer
from glmvoice.runtime import llm_contract
from services.orchestrator.backends import STATUS_ERRORS, LMRequest
from services.orchestrator.errors import BackendUnavailable, DeadlineExceeded, OrchestratorError

MODELS = ("speech_tokenizer", "llm", "speech_decoder")
# model_repo/speech_tokenizer/config.pbtxt: streams take 16 kHz audio only (the model's own rate).
TOKENIZER_STREAM_RATE = 16000
EMPTY_FINAL = {"triton_enable_empty_final_response": True}
_CODES = {
    "StatusCode.INVALID_ARGUMENT": "INVALID_ARGUMENT",
    "StatusCode.RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED",
    "StatusCode.UNAVAILABLE": "UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED",
}
_ERRORS = {**STATUS_ERRORS, "UNAVAILABLE": BackendUnavailable, "DEADLINE_EXCEEDED": DeadlineExceeded}


def backend_error(model: str, exc: Exception) -> OrchestratorError:
    """A model's error as ours. The status the model put in front of its message (llm_contract) wins: a
    decoupled stream delivers errors without a status code. Otherwise the call's own gRPC code; an error
    with neither (a broken connection) means the model is unavailable."""
    status = exc.status() if isinstance(exc, InferenceServerException) else None
    message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    tagged, message = llm_contract.error_status(message or "")
    name = tagged or _CODES.get(status) or ("UNAVAILABLE" if status is None else "INTERNAL")
    return _ERRORS.get(name, OrchestratorError)(f"{model}: {message}")


def _tensor(name: str, array: np.ndarray) -> InferInput:
    dtype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
    tensor = InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def _corrid() -> int:
    return random.getrandbits(62) + 1


class TritonTokenizerSession:
    def __init__(self, client: grpcaio.InferenceServerClient, headers: dict[str, str] | None = None):
        self.client, self.headers = client, headers
        self.corrid = _corrid()
        self.started = self.ended = False

    async def push(self, audio: np.ndarray, end: bool = False) -> list[int]:
        inputs = [_tensor("AUDIO", np.asarray(audio, np.float32).reshape(1, -1))]
        try:
            result = await self.client.infer(
                "speech_tokenizer", inputs, sequence_id=self.corrid, sequence_start=not self.started, sequence_end=end,
                headers=self.headers,
            )
        except InferenceServerException as exc:
            self.ended = True  # the model closed this stream; a new turn starts a new one
            raise backend_error("speech_tokenizer", exc) from exc
        self.started, self.ended = True, end
        return result.as_numpy("CODES").reshape(-1).tolist()

    async def abort(self) -> None:
        """Frees the stream's state on the server now instead of at its idle timeout."""
        if self.started and not self.ended:
            try:
                await self.push(np.zeros(0, np.float32), end=True)
            except OrchestratorError:
                pass


class TritonLMStream:
    def __init__(self, client: grpcaio.InferenceServerClient, request: LMRequest, headers: dict[str, str] | None = None):
        self.request = request
        self.finish_reason: str | None = None
        self._call = client.stream_infer(self._requests(), headers=headers)

    async def _requests(self):
        r = self.request
        arrays = llm_contract.request_inputs(r.prompt_ids, r.max_new_tokens, r.sampling, r.prefix_key)
        inputs = [_tensor(name, array) for name, array in arrays.items()]
        yield {"model_name": llm_contract.MODEL_NAME, "inputs": inputs, "parameters": EMPTY_FINAL}

    async def __aiter__(self):
        try:
            async for result, error in self._call:
                if error is not None:
                    raise backend_error("llm", error)
                ids = result.as_numpy(llm_contract.OUTPUT_IDS)
                for token in ([] if ids is None else ids.reshape(-1).tolist()):
                    yield int(token)
                reason = result.as_numpy(llm_contract.FINISH_REASON)
                if reason is not None:
                    self.finish_reason = reason.reshape(-1)[0].decode()
                if _final(result):
                    return
        except InferenceServerException as exc:
            raise backend_error("llm", exc) from exc

    async def cancel(self) -> None:
        self._call.cancel()
        self.finish_reason = self.finish_reason or "cancelled"


class TritonDecoderSession:
    def __init__(
        self, client: grpcaio.InferenceServerClient, seed: int, output_rate: int, headers: dict[str, str] | None = None,
    ):
        self.seed, self.output_rate = seed, output_rate
        self.corrid = _corrid()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sent = 0
        self.end_sent = False
        self._call = client.stream_infer(self._requests(), headers=headers)

    async def send(self, codes: list[int], end: bool = False) -> None:
        self.queue.put_nowait((list(codes), end))

    async def _requests(self):
        first = True
        while True:
            codes, end = await self.queue.get()
            # Codes that queued up while the last request was in flight go together in one request.
            while not end and not self.queue.empty():
                more, end = self.queue.get_nowait()
                codes += more
            inputs = [_tensor("CODES", np.asarray(codes, np.int64).reshape(1, -1))]
            if first:
                inputs += [
                    _tensor("SEED", np.array([[self.seed]], np.uint64)),
                    _tensor("OUTPUT_RATE", np.array([[self.output_rate]], np.int32)),
                ]
            self.sent += 1
            self.end_sent = end
            yield {
                "model_name": "speech_decoder", "inputs": inputs, "sequence_id": self.corrid,
                "sequence_start": first, "sequence_end": end, "parameters": EMPTY_FINAL,
            }
            first = False
            if end:
                return

    async def __aiter__(self):
        finals = 0
        try:
            async for result, error in self._call:
                if error is not None:
                    raise backend_error("speech_decoder", error)
                audio = result.as_numpy("AUDIO")
                if audio is not None and audio.size:
                    yield audio.reshape(-1).astype(np.float32)
                if _final(result):
                    finals += 1
                    if self.end_sent and finals == self.sent:
                        return
        except InferenceServerException as exc:
            raise backend_error("speech_decoder", exc) from exc

    async def cancel(self) -> None:
        self._call.cancel()


class TritonBackend:
    def __init__(self, addrs: dict[str, str], text_tokenizer: TextTokenizer, decoder_block: int):
        self.addrs = addrs
        self.decoder_block = decoder_block
        self.text_tokenizer = text_tokenizer
        self.input_rate = TOKENIZER_STREAM_RATE
        self.max_seq_len = 0
        self.clients = {model: grpcaio.InferenceServerClient(addr) for model, addr in addrs.items()}

    async def start(self, timeout_s: float = 120.0) -> None:
        """Waits for the three models, reads the LM's sequence limit, and warms each model with one request."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        for model in MODELS:
            while True:
                try:
                    if await self.clients[model].is_model_ready(model):
                        break
                except InferenceServerException:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise BackendUnavailable(f"Triton model {model!r} at {self.addrs[model]} is not ready")
                await asyncio.sleep(0.5)
        config = await self.clients["llm"].get_model_config("llm", as_json=True)
        params = config["config"].get("parameters", {})
        self.max_seq_len = int(params.get("max_seq_len", {}).get("string_value", "0")) or 2048

    async def ready(self) -> bool:
        try:
            return all([await self.clients[model].is_model_ready(model) for model in MODELS])
        except InferenceServerException:
            return False

    def open_tokenizer(self, headers: dict[str, str] | None = None) -> TritonTokenizerSession:
        return TritonTokenizerSession(self.clients["speech_tokenizer"], headers)

    def generate(self, request: LMRequest, headers: dict[str, str] | None = None) -> TritonLMStream:
        return TritonLMStream(self.clients["llm"], request, headers)

    def open_decoder(self, seed: int, output_rate: int, headers: dict[str, str] | None = None) -> TritonDecoderSession:
        return TritonDecoderSession(self.clients["speech_decoder"], seed, output_rate, headers)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
