"""In-flight (continuous) batching for the LM: a scheduler, a model runner, and the loop between them.

Requests join the running batch at the next step: each new request is prefilled (in chunks, so a long
prompt does not stall the others' decoding), then decodes together with every other live request in one
batched forward. One engine thread runs `schedule -> execute -> update`:
- schedule (llm_scheduler.Scheduler): admission into KV slots, prefix reuse, the step's prefill chunks and
  decode batch;
- execute (model_runner.ModelRunner, or any runner with the same methods, e.g. a tensor-parallel one):
  one forward per prefill chunk, one for the decode batch, each returning last-position logits;
- update (Scheduler again): sample, deliver ids, retire finished sequences, keep their KV for reuse.
"""

from __future__ import annotations

import itertools
import threading

from glmvoice.runtime.llm_contract import EngineFullError, RequestError
from glmvoice.runtime.llm_scheduler import (
    FINISH_REASONS,
    EngineConfig,
    FinishCallback,
    GenerationRequest,
    Scheduler,
    Sequence,
    StepPlan,
    TokenCallback,
)
from glmvoice.runtime.model_runner import ModelRunner
from glmvoice.runtime.sampler import make_generator

__all__ = [
    "FINISH_REASONS", "EngineConfig", "EngineFullError", "GenerationRequest", "LLMEngine", "RequestError",
]


class LLMEngine:
    """Drives one model; `submit` and `cancel` are thread-safe, the work runs on one engine thread.

    `model` is a Transformer (wrapped in a ModelRunner here) or a ready runner (e.g. tensor parallel)."""

    def __init__(self, model, config: EngineConfig = EngineConfig()):
        self.runner = model if hasattr(model, "save_prefix") else ModelRunner(model, config.max_slots, config.max_seq_len)
        self.config = config
        self.scheduler = Scheduler(self.runner, config)
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._running = False

    # ---- public API ---------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_token: TokenCallback, on_finish: FinishCallback) -> str:
        self.scheduler.validate(request)
        request.request_id = request.request_id or f"req-{next(self._ids)}"
        generator = make_generator(request.sampling)
        self.scheduler.add(Sequence(request, on_token, on_finish, generator, ids=list(request.prompt_ids)))
        return request.request_id

    def cancel(self, request_id: str) -> bool:
        """Stops a request and frees its KV slot now; its on_finish gets "cancelled". False if unknown."""
        return self.scheduler.cancel(request_id)

    def stats(self) -> dict:
        return self.scheduler.stats()

    @property
    def alive(self) -> bool:
        """The engine thread is running (a health check for in-process serving)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LLMEngine:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.scheduler.lock:
            self._running = False
            self.scheduler.lock.notify()
        if self._thread is not None:
            self._thread.join()
        self.scheduler.cancel_all()

    # ---- engine thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        lock = self.scheduler.lock
        while True:
            with lock:
                while self._running and not self.scheduler.has_work():
                    lock.wait()
                if not self._running:
                    return
            try:
                self.step()
            except Exception as exc:  # a model failure ends every live request with an error, not silence
                self.scheduler.fail_active(exc)

    def step(self) -> None:
        """One round: schedule, then a prefill chunk for each prefilling request and one batched decode step."""
        self.execute(self.scheduler.schedule())

    def execute(self, plan: StepPlan) -> None:
        # The forwards run without the lock, so submit / cancel never wait for the model; the updates
        # skip sequences cancelled meanwhile.
        for seq, chunk, start in plan.prefills:
            logits = self.runner.forward([chunk], [start], [seq.slot])
            self.scheduler.update_prefill(seq, len(chunk), logits)
        if plan.decodes:
            logits = self.runner.forward([[s.ids[-1]] for s in plan.decodes], [s.fed for s in plan.decodes], [s.slot for s in plan.decodes])
            self.scheduler.update_decode(plan.decodes, logits)
