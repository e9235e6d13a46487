"""The in-process backend: TokenizerService, LLMEngine and DecoderService in this process.

The same runtime the Triton models wrap, driven through the same requests (TokenizeItem, GenerationRequest,
DecodeItem), so a turn's output equals the Triton backend's for the same settings; the difference in
latency is what the distributed path costs. Each network runs on its own worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from glmvoice.runtime.decoder_service import DecodeItem, DecoderService
from glmvoice.runtime.llm_contract import EngineFullError, status_of
from glmvoice.runtime.llm_engine import GenerationRequest, LLMEngine
from glmvoice.runtime.serving import engine_config, llm_quantization, pbtxt_parameters
from glmvoice.runtime.tokenizer_service import TokenizeItem, TokenizerService
from services.orchestrator.backends import STATUS_ERRORS, LMRequest
from services.orchestrator.errors import InvalidInput, OrchestratorError
from services.triton.repository import templates_dir


def _raise_item_error(result):
    if isinstance(result, Exception):
        raise InvalidInput(str(result)) if isinstance(result, ValueError) else OrchestratorError(str(result))
    return result


class InProcessTokenizerSession:
    def __init__(self, backend: InProcessBackend):
        self.backend = backend
        self.stream_id = uuid.uuid4().hex
        self.started = self.ended = False

    async def push(self, audio: np.ndarray, end: bool = False) -> list[int]:
        item = TokenizeItem(self.stream_id, np.asarray(audio, np.float32), self.backend.input_rate, not self.started, end)
        [result] = await self.backend.run(self.backend.tokenizer_pool, self.backend.tokenizer.run, [item])
        self.started, self.ended = True, end or isinstance(result, Exception)
        return list(_raise_item_error(result))

    async def abort(self) -> None:
        if self.started and not self.ended:
            await self.push(np.zeros(0, np.float32), end=True)


class InProcessLMStream:
    def __init__(self, backend: InProcessBackend, request: LMRequest):
        self.backend = backend
        self.finish_reason: str | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.generation = GenerationRequest(
            prompt_ids=list(request.prompt_ids), sampling=request.sampling, max_new_tokens=request.max_new_tokens,
            stop_ids=frozenset(backend.text_tokenizer.stop_ids), prefix_key=request.prefix_key,
            request_id=uuid.uuid4().hex,
        )
        # The engine calls back on its own thread (with its lock held): hand over to the event loop only.
        on_token = lambda token: loop.call_soon_threadsafe(self.queue.put_nowait, ("token", token))
        on_finish = lambda reason, error: loop.call_soon_threadsafe(self.queue.put_nowait, ("finish", (reason, error)))
        try:
            backend.engine.submit(self.generation, on_token, on_finish)
        except (ValueError, EngineFullError) as exc:  # the same status as the Triton adapter sends
            raise STATUS_ERRORS[status_of(exc)](f"llm: {exc}") from exc

    async def __aiter__(self):
        while True:
            kind, value = await self.queue.get()
            if kind == "token":
                yield value
                continue
            reason, error = value
            if error is not None:
                raise OrchestratorError(f"llm: {error}")
            self.finish_reason = reason
            return

    async def cancel(self) -> None:
        self.backend.engine.cancel(self.generation.request_id)
        self.finish_reason = self.finish_reason or "cancelled"


class InProcessDecoderSession:
    """Like the Triton stream: `send` only queues; one worker runs the stream's requests in order,
    putting codes that queued up meanwhile into one request."""

    def __init__(self, backend: InProcessBackend, seed: int, output_rate: int):
        self.backend = backend
        self.stream_id = uuid.uuid4().hex
        self.seed, self.output_rate = seed, output_rate
        self.requests: asyncio.Queue = asyncio.Queue()
        self.audio: asyncio.Queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._work())

    async def send(self, codes: list[int], end: bool = False) -> None:
        self.requests.put_nowait((list(codes), end))

    async def _work(self) -> None:
        start = True
        while True:
            codes, end = await self.requests.get()
            while not end and not self.requests.empty():
                more, end = self.requests.get_nowait()
                codes += more
            item = DecodeItem(self.stream_id, codes, start, end, self.seed, self.output_rate)
            start = False
            [result] = await self.backend.run(self.backend.decoder_pool, self.backend.decoder.run, [item])
            if isinstance(result, Exception):
                self.audio.put_nowait(result)
                return
            for chunk in result:
                self.audio.put_nowait(chunk.astype(np.float32))
            if end:
                self.audio.put_nowait(None)
                return

    async def __aiter__(self):
        while True:
            chunk = await self.audio.get()
            if chunk is None:
                return
            yield _raise_item_error(chunk)

    async def cancel(self) -> None:
        self.worker.cancel()
        await self.backend.run(self.backend.decoder_pool, self.backend.decoder.close, self.stream_id)


class InProcessBackend:
    def __init__(self, tokenizer_dir: Path, llm_dir: Path, decoder_dir: Path, device: str = "cpu"):
        self.dirs = (tokenizer_dir, llm_dir, decoder_dir)
        self.device = device
        self.tokenizer_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        self.decoder_pool = ThreadPoolExecutor(1, thread_name_prefix="decoder")

    async def run(self, pool, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._load)

    def _load(self) -> None:
        from glmvoice.models.llm_checkpoint import load_llm
        from glmvoice.models.speech_decoder import load_speech_decoder
        from glmvoice.runtime.decoder_stream import DecoderStreams
        from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

        tokenizer_dir, llm_dir, decoder_dir = self.dirs
        speech_tokenizer = load_speech_tokenizer(tokenizer_dir, self.device)
        self.tokenizer = TokenizerService(speech_tokenizer)
        self.input_rate = speech_tokenizer.config.sampling_rate
        # The engine takes the same parameters as the Triton `llm` model, read from its config.pbtxt.
        parameters = pbtxt_parameters(templates_dir() / "llm" / "config.pbtxt")
        model, self.text_tokenizer = load_llm(llm_dir, device=self.device, quantize=llm_quantization(parameters))
        config = engine_config(parameters)
        config = dataclasses.replace(config, max_seq_len=min(config.max_seq_len, model.config.block_size))
        self.max_seq_len = config.max_seq_len
        self.engine = LLMEngine(model, config).start()
        self.decoder = DecoderService(DecoderStreams(load_speech_decoder(decoder_dir, self.device)))
        self.decoder_block = self.decoder.streams.block_size

    async def ready(self) -> bool:
        return self.engine.alive

    # `headers` carry trace context to remote models; in process there is no next hop.
    def open_tokenizer(self, headers: dict[str, str] | None = None) -> InProcessTokenizerSession:
        return InProcessTokenizerSession(self)

    def generate(self, request: LMRequest, headers: dict[str, str] | None = None) -> InProcessLMStream:
        return InProcessLMStream(self, request)

    def open_decoder(self, seed: int, output_rate: int, headers: dict[str, str] | None = None) -> InProcessDecoderSession:
        return InProcessDecoderSession(self, seed, output_rate)

    async def close(self) -> None:
        self.engine.stop()
        self.tokenizer_pool.shutdown(wait=True)
        self.decoder_pool.shutdown(wait=True)
