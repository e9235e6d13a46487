"""The Triton backend: tritonclient gRPC (asyncio) to the three models, one channel per replica
(services/orchestrator/routing.py picks the replica: an LM turn goes where its session's KV is).

- speech_tokenizer: sequence batching; one CORRID per user turn, START on the first block, END on the last.
- llm: decoupled; one gRPC stream per request; cancelling the call is Triton cancellation (the model's
  watcher frees the KV slot). max_new_tokens 0 prefills only and keeps the KV under prefix_key.
- speech_decoder: decoupled + sequence batching; one gRPC stream and one CORRID per reply.
Tokenizer and decoder streams stay on the replica that opened them; abandoning one (barge-in, Cancel, a
client gone) ends its sequence with CANCEL so the replica frees its state at once.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcaio
from prometheus_client import CollectorRegistry
from tritonclient.grpc import InferenceServerException, InferInput
from tritonclient.utils import np_to_triton_dtype

from glmvoice.models.text_tokenizer import TextTokenizer
from glmvoice.runtime import llm_contract
from services.orchestrator.backends import STATUS_ERRORS, LMRequest, time_left
from services.orchestrator.errors import BackendUnavailable, DeadlineExceeded, OrchestratorError
from services.orchestrator.routing import RoutedStream, Router, RoutingMetrics, replica_source
from services.tls import TlsFiles, triton_client_options

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
    if isinstance(exc, grpc.RpcError):  # tritonclient's aio streams raise gRPC's own error (e.g. a replica gone)
        status, message = str(exc.code()), exc.details()
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
    """One user turn's tokenizer stream; it stays on the replica its first block went to."""

    def __init__(self, router: Router, headers: dict[str, str] | None = None):
        self.router, self.headers = router, headers
        self.corrid = _corrid()
        self.client: grpcaio.InferenceServerClient | None = None
        self.started = self.ended = False

    async def push(self, audio: np.ndarray, end: bool = False) -> list[int]:
        inputs = [_tensor("AUDIO", np.asarray(audio, np.float32).reshape(1, -1))]
        if self.client is not None:
            return await self._send(inputs, end)
        # The first block may go to the next replica if one is down; later blocks need that replica's state.
        order = self.router.order(str(self.corrid))
        for attempt, addr in enumerate(order):
            self.client = self.router.client(addr)
            try:
                return await self._send(inputs, end, start=True)
            except BackendUnavailable as exc:
                if attempt == len(order) - 1:
                    raise
                self.router.mark_down(addr, str(exc))
                self.router.rerouted()
        raise BackendUnavailable("no speech_tokenizer replica is available")

    async def _send(self, inputs: list[InferInput], end: bool, start: bool = False) -> list[int]:
        self.started = True  # from here the replica may hold state for this stream
        try:
            result = await self.client.infer(
                "speech_tokenizer", inputs, sequence_id=self.corrid, sequence_start=start, sequence_end=end,
                headers=self.headers, client_timeout=time_left(),
            )
        except InferenceServerException as exc:
            # Not marked ended: abort() still releases it (closing a stream the model already closed is a no-op).
            raise backend_error("speech_tokenizer", exc) from exc
        self.ended = end
        return result.as_numpy("CODES").reshape(-1).tolist()

    async def abort(self) -> None:
        """Frees the stream's state on its replica now instead of at its idle timeout."""
        if self.started and not self.ended:
            try:  # START: the sequence may be gone from Triton's batcher if an in-flight block was cancelled
                inputs = [_tensor("AUDIO", np.zeros((1, 0), np.float32)), _tensor("CANCEL", np.array([[True]]))]
                await self._send(inputs, end=True, start=True)
            except OrchestratorError:
                pass


class TritonLMStream:
    def __init__(self, client: grpcaio.InferenceServerClient, request: LMRequest, headers: dict[str, str] | None = None):
        self.request = request
        self.finish_reason: str | None = None
        self._call = client.stream_infer(self._requests(), headers=headers, stream_timeout=time_left())

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
        except (InferenceServerException, grpc.RpcError) as exc:
            raise backend_error("llm", exc) from exc

    async def cancel(self) -> None:
        self._call.cancel()
        self.finish_reason = self.finish_reason or "cancelled"


class TritonDecoderSession:
    def __init__(
        self, router: Router, seed: int, output_rate: int, headers: dict[str, str] | None = None,
    ):
        self.seed, self.output_rate, self.headers = seed, output_rate, headers
        self.corrid = _corrid()
        # The stream stays on this replica: its state (the reply's decoded blocks) lives there.
        self.addr, client = router.pick(str(self.corrid))
        self.client = client
        self.finished = False
        self.queue: asyncio.Queue = asyncio.Queue()
        self.sent = 0
        self.end_sent = False
        self._call = client.stream_infer(self._requests(), headers=headers, stream_timeout=time_left())

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
                        self.finished = True
                        return
        except (InferenceServerException, grpc.RpcError) as exc:
            raise backend_error("speech_decoder", exc) from exc

    async def cancel(self) -> None:
        """Stops the reply's stream and frees its state on the replica now (END + CANCEL), not at the idle timeout."""
        self._call.cancel()
        if self.sent and not self.finished:
            release_sequence(self.client, "speech_decoder", self.corrid, self.headers)


_RELEASES: set[asyncio.Task] = set()  # release calls in flight (a task needs a reference until it ends)


def release_sequence(client: grpcaio.InferenceServerClient, model: str, corrid: int,
                     headers: dict[str, str] | None) -> None:
    """Drops a reply's decoder stream (its own stream is already cancelled) with a CANCEL on a fresh sequence
    that names the reply's CORRID, in the background: the caller does not wait, and the request is not
    cancelled if the replica is slow. A fresh sequence, because Triton still holds the reply's: a START on
    the same CORRID conflicts with it and waits behind it. Best effort: a replica that is gone has nothing
    left to free."""

    async def request():
        inputs = [_tensor("CODES", np.zeros((1, 0), np.int64)), _tensor("CANCEL", np.array([[True]])),
                  _tensor("CANCEL_CORRID", np.array([[corrid]], np.uint64))]
        yield {"model_name": model, "inputs": inputs, "sequence_id": _corrid(), "sequence_start": True,
               "sequence_end": True, "parameters": EMPTY_FINAL}

    async def until_final():
        try:
            async for result, error in client.stream_infer(request(), headers=headers):
                if error is not None or _final(result):
                    return
        except (InferenceServerException, grpc.RpcError):
            pass

    task = asyncio.create_task(until_final())
    _RELEASES.add(task)
    task.add_done_callback(_RELEASES.discard)


class TritonBackend:
    """`addrs`: per model, a replica setting (routing.replica_source): a static list or a Service's EndpointSlices.
    `tls`: dial every replica over TLS; `tls_server_name`: the name their certificate carries (EndpointSlice
    replicas are dialled by pod IP, which the certificate does not name)."""

    def __init__(self, addrs: dict[str, str], text_tokenizer: TextTokenizer, decoder_block: int,
                 registry: CollectorRegistry | None = None, kube_config=None, tls: TlsFiles | None = None,
                 tls_server_name: str = ""):
        self.addrs = addrs
        self.decoder_block = decoder_block
        self.text_tokenizer = text_tokenizer
        self.input_rate = TOKENIZER_STREAM_RATE
        self.max_seq_len = 0
        metrics = RoutingMetrics(registry)
        options = triton_client_options(tls, tls_server_name)

        def connect(addr: str) -> grpcaio.InferenceServerClient:
            return grpcaio.InferenceServerClient(addr, **options)

        self.routers = {}
        for model, value in addrs.items():
            replicas, source = replica_source(model, value, kube_config)
            self.routers[model] = Router(model, replicas, connect, metrics)
            self.routers[model].source = source

    async def _ready_replica(self, model: str) -> grpcaio.InferenceServerClient | None:
        router = self.routers[model]
        for addr in router.order(model):
            try:
                if await router.client(addr).is_model_ready(model):
                    return router.client(addr)
            except InferenceServerException:
                pass
        return None

    async def start(self, timeout_s: float = 120.0) -> None:
        """Waits for a ready replica of each model and reads the LM's sequence limit from one."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        for model in MODELS:
            while await self._ready_replica(model) is None:
                if asyncio.get_running_loop().time() > deadline:
                    raise BackendUnavailable(f"Triton model {model!r} at {self.addrs[model]} is not ready")
                await asyncio.sleep(0.5)
        config = await (await self._ready_replica("llm")).get_model_config("llm", as_json=True)
        params = config["config"].get("parameters", {})
        self.max_seq_len = int(params.get("max_seq_len", {}).get("string_value", "0")) or 2048

    async def ready(self) -> bool:
        """Ready while each model has at least one ready replica (also closes clients of long-gone replicas)."""
        for router in self.routers.values():
            await router.reap()
        return all([await self._ready_replica(model) is not None for model in MODELS])

    def open_tokenizer(self, headers: dict[str, str] | None = None) -> TritonTokenizerSession:
        return TritonTokenizerSession(self.routers["speech_tokenizer"], headers)

    def generate(self, request: LMRequest, headers: dict[str, str] | None = None) -> RoutedStream:
        # Every turn of a session (prefix_key) on the replica that holds its KV.
        return RoutedStream(self.routers["llm"], request.prefix_key,
                            lambda client: TritonLMStream(client, request, headers))

    def open_decoder(self, seed: int, output_rate: int, headers: dict[str, str] | None = None) -> TritonDecoderSession:
        return TritonDecoderSession(self.routers["speech_decoder"], seed, output_rate, headers)

    async def close(self) -> None:
        for router in self.routers.values():
            await router.close()
