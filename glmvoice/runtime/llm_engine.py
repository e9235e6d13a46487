"""In-flight (continuous) batching for the LM.

Requests join the running batch at the next step: each new request is prefilled (in chunks, so a long
prompt does not stall the others' decoding), then decodes together with every other live request in one
batched forward. Each request owns a row ("slot") of a static KV cache, so KV memory is bounded by
`slots x max_seq_len`; a request that cannot get a slot waits in a bounded queue, and past that is refused
with `EngineFullError`. Cancelling a request frees its slot at once.

Prefix reuse: a request may name a `prefix_key` (the session id). When it finishes, the KV of every token
it fed is kept in a bounded LRU store; the next request with that key copies the longest common prefix of
its prompt with the stored ids into its slot and prefills only the rest. A multi-turn session's next turn
then prefills just the new user input instead of the whole history. A request with max_new_tokens=0 only
prefills (finish reason "prefilled") and keeps its KV: a caller can prefill the user's speech while the
user is still speaking, so the final request at end of turn prefills only the last few tokens.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from glmvoice.runtime.sampling import make_generator, sample
from glmvoice.sampling import SamplingParams


class EngineFullError(RuntimeError):
    """No slot and no room in the queue: the caller should retry later (RESOURCE_EXHAUSTED)."""


class RequestError(ValueError):
    """A request the engine can never serve as given (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class EngineConfig:
    max_slots: int = 8  # sequences decoded together; KV memory = slots x max_seq_len x kv bytes/token
    max_seq_len: int = 2048  # prompt + reply tokens per sequence
    max_queue: int = 64  # requests waiting for a slot before new ones are refused
    prefill_chunk: int = 256  # prompt tokens per prefill call between decode steps
    prefix_cache_tokens: int = 16384  # KV tokens kept across turns for prefix reuse (0 disables)


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 2000
    stop_ids: frozenset[int] = frozenset()
    prefix_key: str | None = None
    request_id: str = ""


# on_token(id) for each generated id; on_finish(reason, error) once: reason in FINISH_REASONS.
TokenCallback = Callable[[int], None]
FinishCallback = Callable[[str, Exception | None], None]
FINISH_REASONS = ("stop", "length", "prefilled", "cancelled", "error")


@dataclass
class _Sequence:
    request: GenerationRequest
    on_token: TokenCallback
    on_finish: FinishCallback
    generator: torch.Generator
    slot: int = -1
    ids: list[int] = field(default_factory=list)  # prompt then generated ids
    fed: int = 0  # tokens whose KV is in the slot
    generated: int = 0
    cancelled: bool = False

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.request.prompt_ids)


class PrefixStore:
    """LRU of (ids, per-layer KV) by key, bounded by the total number of tokens kept."""

    def __init__(self, capacity_tokens: int):
        self.capacity = capacity_tokens
        self.entries: OrderedDict[str, tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self.tokens = 0

    def put(self, key: str, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.pop(key)
        if len(ids) > self.capacity:
            return
        self.entries[key] = (ids, kv)
        self.tokens += len(ids)
        while self.tokens > self.capacity:
            self.pop(next(iter(self.entries)))

    def pop(self, key: str):
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.tokens -= len(entry[0])
        return entry


class LLMEngine:
    """Drives one model; `submit` and `cancel` are thread-safe, the work runs on one engine thread."""

    def __init__(self, model, config: EngineConfig = EngineConfig()):
        if config.max_seq_len > model.config.block_size:
            raise ValueError(f"max_seq_len {config.max_seq_len} exceeds the model's {model.config.block_size}")
        self.model = model
        self.config = config
        model.setup_caches(config.max_slots, config.max_seq_len)
        self.device = model.output.weight.device
        self.free_slots = deque(range(config.max_slots))
        self.queue: deque[_Sequence] = deque()
        self.active: dict[int, _Sequence] = {}  # slot -> sequence
        self.by_id: dict[str, _Sequence] = {}
        self.prefix_store = PrefixStore(config.prefix_cache_tokens)
        self.counters = {"prefill_tokens": 0, "prefix_reused_tokens": 0, "generated_tokens": 0, "finished": 0}
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False

    # ---- public API ---------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_token: TokenCallback, on_finish: FinishCallback) -> str:
        self._validate(request)
        request.request_id = request.request_id or f"req-{next(self._ids)}"
        seq = _Sequence(request, on_token, on_finish, make_generator(request.sampling), ids=list(request.prompt_ids))
        with self._lock:
            if request.request_id in self.by_id:
                raise RequestError(f"request id {request.request_id!r} is already running")
            # Queued requests take free slots first; only those beyond them wait for a slot to free up.
            if len(self.queue) >= len(self.free_slots) + self.config.max_queue:
                raise EngineFullError(
                    f"LM engine full: {len(self.active)} running, {len(self.queue)} queued (max_queue {self.config.max_queue})"
                )
            self.queue.append(seq)
            self.by_id[request.request_id] = seq
            self._lock.notify()
        return request.request_id

    def cancel(self, request_id: str) -> bool:
        """Stops a request and frees its KV slot now; its on_finish gets "cancelled". False if unknown."""
        with self._lock:
            seq = self.by_id.get(request_id)
            if seq is None:
                return False
            seq.cancelled = True
            if seq in self.queue:
                self.queue.remove(seq)
            self._finish(seq, "cancelled")
            return True

    def stats(self) -> dict:
        with self._lock:
            return {
                "active": len(self.active),
                "queued": len(self.queue),
                "free_slots": len(self.free_slots),
                "max_slots": self.config.max_slots,
                "kv_tokens_in_use": sum(s.fed for s in self.active.values()),
                "kv_tokens_capacity": self.config.max_slots * self.config.max_seq_len,
                "prefix_entries": len(self.prefix_store.entries),
                "prefix_tokens": self.prefix_store.tokens,
                **self.counters,
            }

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
        with self._lock:
            self._running = False
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for seq in list(self.by_id.values()):
                self._finish(seq, "cancelled")
            self.queue.clear()

    # ---- engine thread ------------------------------------------------------------------------
    def _validate(self, request: GenerationRequest) -> None:
        vocab = self.model.config.vocab_size
        if not request.prompt_ids:
            raise RequestError("empty prompt")
        bad = [i for i in request.prompt_ids if not 0 <= i < vocab]
        if bad:
            raise RequestError(f"prompt ids out of range [0, {vocab}): {bad[:5]}")
        if request.max_new_tokens < 0:
            raise RequestError(f"max_new_tokens must be >= 0 (0: prefill only), got {request.max_new_tokens}")
        if request.max_new_tokens == 0 and not request.prefix_key:
            raise RequestError("a prefill-only request (max_new_tokens 0) needs a prefix_key to keep its KV under")
        if len(request.prompt_ids) >= self.config.max_seq_len:
            raise RequestError(f"prompt of {len(request.prompt_ids)} tokens exceeds max_seq_len {self.config.max_seq_len}")

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not self.queue and not self.active:
                    self._lock.wait()
                if not self._running:
                    return
                self._admit()
            try:
                self.step()
            except Exception as exc:  # a model failure ends every live request with an error, not silence
                with self._lock:
                    for seq in list(self.active.values()):
                        self._finish(seq, "error", exc)

    def _admit(self) -> None:
        while self.queue and self.free_slots:
            seq = self.queue.popleft()
            seq.slot = self.free_slots.popleft()
            self.active[seq.slot] = seq
            self._reuse_prefix(seq)

    def _reuse_prefix(self, seq: _Sequence) -> None:
        key = seq.request.prefix_key
        entry = self.prefix_store.pop(key) if key else None
        if entry is None:
            return
        stored_ids, kv = entry
        prompt = seq.request.prompt_ids
        # Keep at least one prompt token to feed, so the first reply token has fresh logits.
        limit = min(len(stored_ids), len(prompt) - 1)
        common = next((i for i in range(limit) if stored_ids[i] != prompt[i]), limit)
        if common == 0:
            return
        for cache, (k, v) in zip(self.model.kv_caches, kv):
            cache.k_cache[seq.slot, :, :common] = k[:, :common]
            cache.v_cache[seq.slot, :, :common] = v[:, :common]
        seq.fed = common
        self.counters["prefix_reused_tokens"] += common

    def step(self) -> None:
        """One round: a prefill chunk for each prefilling request, then one batched decode step."""
        with self._lock:
            prefilling = [s for s in self.active.values() if s.prefilling]
            decoding = [s for s in self.active.values() if not s.prefilling]
        for seq in prefilling:
            start = seq.fed
            chunk = seq.request.prompt_ids[start : start + self.config.prefill_chunk]
            logits = self._forward([seq], [chunk], [start])
            self.counters["prefill_tokens"] += len(chunk)
            with self._lock:
                if seq.cancelled:
                    continue
                seq.fed += len(chunk)
                if seq.prefilling:
                    continue
                if seq.request.max_new_tokens == 0:
                    self._finish(seq, "prefilled")
                else:
                    self._emit([seq], logits)
        if decoding:
            logits = self._forward(decoding, [[s.ids[-1]] for s in decoding], [s.fed for s in decoding])
            with self._lock:
                live = [i for i, s in enumerate(decoding) if not s.cancelled]
                for i in live:
                    decoding[i].fed += 1
                self._emit([decoding[i] for i in live], logits[live])

    @torch.inference_mode()
    def _forward(self, seqs: list[_Sequence], chunks: list[list[int]], starts: list[int]) -> torch.Tensor:
        """-> next-token logits [B, V]. Rows of equal chunk length: prefill calls come one sequence at a time, decode calls are all length 1."""
        idx = torch.tensor(chunks, device=self.device)  # [B, T]
        positions = torch.tensor(starts, device=self.device)[:, None] + torch.arange(idx.shape[1], device=self.device)
        rows = torch.tensor([s.slot for s in seqs], device=self.device)
        # Logits of the last position only: a prefill chunk of all positions would be T x vocab floats.
        hidden = self.model.hidden_states(idx, positions, rows=rows)[:, -1]  # [B, C]
        return self.model.output(hidden).float()  # [B, V]

    def _emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Samples the next id of each sequence (lock held), delivers it, and retires finished ones."""
        if not seqs:
            return
        next_ids = sample(
            logits,
            [s.request.sampling for s in seqs],
            [s.generator for s in seqs],
            [s.ids for s in seqs],
            [s.ids[len(s.request.prompt_ids) :] for s in seqs],
        ).tolist()
        for seq, token in zip(seqs, next_ids):
            seq.ids.append(token)
            seq.generated += 1
            self.counters["generated_tokens"] += 1
            seq.on_token(token)
            if token in seq.request.stop_ids:
                self._finish(seq, "stop")
            elif seq.generated >= seq.request.max_new_tokens or len(seq.ids) >= self.config.max_seq_len:
                self._finish(seq, "length")

    def _finish(self, seq: _Sequence, reason: str, error: Exception | None = None) -> None:
        """Retires a sequence (lock held): keeps its KV for prefix reuse, frees the slot, tells the caller once."""
        if self.by_id.pop(seq.request.request_id, None) is None:
            return
        if seq.slot >= 0:
            if seq.request.prefix_key and seq.fed and reason in ("stop", "length", "prefilled") and self.config.prefix_cache_tokens:
                kv = [
                    (c.k_cache[seq.slot, :, : seq.fed].clone(), c.v_cache[seq.slot, :, : seq.fed].clone())
                    for c in self.model.kv_caches
                ]
                self.prefix_store.put(seq.request.prefix_key, seq.ids[: seq.fed], kv)
            del self.active[seq.slot]
            self.free_slots.append(seq.slot)
        self.counters["finished"] += 1
        seq.on_finish(reason, error)
