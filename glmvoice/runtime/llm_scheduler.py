"""The LM engine's scheduler: admission, the prefill plan, the prefix store, and retiring sequences.

Each request owns a row ("slot") of the runner's static KV cache, so KV memory is bounded by
`slots x max_seq_len`; a request that cannot get a slot waits in a bounded queue, and past that is refused
with `EngineFullError`. Cancelling a request frees its slot at once.

Prefix reuse: a request may name a `prefix_key` (the session id). When it finishes, the KV of every token
it fed is kept in a bounded LRU store; the next request with that key copies the longest common prefix of
its prompt with the stored ids into its slot and prefills only the rest. A request with max_new_tokens=0
only prefills (finish reason "prefilled") and keeps its KV.

The scheduler never runs the model: `schedule()` says what the next step feeds, `update_*` take the
step's logits. All state is guarded by one lock (`self.lock`), as `submit` / `cancel` come from any thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from glmvoice.runtime.llm_contract import EngineFullError, RequestError
from glmvoice.runtime.sampler import sample
from glmvoice.sampling import SamplingParams


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


@dataclass(eq=False)
class Sequence:
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


@dataclass
class StepPlan:
    """One step: a prefill chunk (ids, start position) per prefilling sequence, then one decode batch."""

    prefills: list[tuple[Sequence, list[int], int]]
    decodes: list[Sequence]


class PrefixStore:
    """LRU of (ids, saved KV) by key, bounded by the total number of tokens kept."""

    def __init__(self, capacity_tokens: int):
        self.capacity = capacity_tokens
        self.entries: OrderedDict[str, tuple[list[int], Any]] = OrderedDict()
        self.tokens = 0

    def put(self, key: str, ids: list[int], kv: Any) -> None:
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


class Scheduler:
    """`runner` is only asked to save / load a slot's KV prefix (ModelRunner.save_prefix / load_prefix)."""

    def __init__(self, runner, config: EngineConfig):
        self.runner = runner
        self.config = config
        self.free_slots = deque(range(config.max_slots))
        self.queue: deque[Sequence] = deque()
        self.active: dict[int, Sequence] = {}  # slot -> sequence
        self.by_id: dict[str, Sequence] = {}
        self.prefix_store = PrefixStore(config.prefix_cache_tokens)
        self.counters = {"prefill_tokens": 0, "prefix_reused_tokens": 0, "generated_tokens": 0, "finished": 0}
        self.lock = threading.Condition()

    # ---- admission ---------------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        vocab = self.runner.vocab_size
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

    def add(self, seq: Sequence) -> None:
        with self.lock:
            if seq.request.request_id in self.by_id:
                raise RequestError(f"request id {seq.request.request_id!r} is already running")
            # Queued requests take free slots first; only those beyond them wait for a slot to free up.
            if len(self.queue) >= len(self.free_slots) + self.config.max_queue:
                raise EngineFullError(
                    f"LM engine full: {len(self.active)} running, {len(self.queue)} queued (max_queue {self.config.max_queue})"
                )
            self.queue.append(seq)
            self.by_id[seq.request.request_id] = seq
            self.lock.notify()

    def cancel(self, request_id: str) -> bool:
        with self.lock:
            seq = self.by_id.get(request_id)
            if seq is None:
                return False
            seq.cancelled = True
            if seq in self.queue:
                self.queue.remove(seq)
            self._finish(seq, "cancelled")
            return True

    def has_work(self) -> bool:
        return bool(self.queue or self.active)

    # ---- schedule ----------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        """Admits waiting requests into free slots, then plans: the next prefill chunk of every prefilling
        sequence (a long prompt does not stall the others' decoding), and one batched decode step of the rest."""
        with self.lock:
            while self.queue and self.free_slots:
                seq = self.queue.popleft()
                seq.slot = self.free_slots.popleft()
                self.active[seq.slot] = seq
                self._reuse_prefix(seq)
            prefills = [
                (s, s.request.prompt_ids[s.fed : s.fed + self.config.prefill_chunk], s.fed)
                for s in self.active.values() if s.prefilling
            ]
            decodes = [s for s in self.active.values() if not s.prefilling]
            return StepPlan(prefills, decodes)

    def _reuse_prefix(self, seq: Sequence) -> None:
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
        self.runner.load_prefix(seq.slot, kv, common)
        seq.fed = common
        self.counters["prefix_reused_tokens"] += common

    # ---- update ------------------------------------------------------------------------------
    def update_prefill(self, seq: Sequence, fed: int, logits: torch.Tensor) -> None:
        """A prefill chunk of `fed` tokens ran; logits [1, V] of its last position."""
        with self.lock:
            self.counters["prefill_tokens"] += fed
            if seq.cancelled:
                return
            seq.fed += fed
            if seq.prefilling:
                return
            if seq.request.max_new_tokens == 0:
                self._finish(seq, "prefilled")
            else:
                self._emit([seq], logits)

    def update_decode(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """One decode step ran for seqs; logits [B, V]. Sequences cancelled meanwhile are skipped."""
        with self.lock:
            live = [i for i, s in enumerate(seqs) if not s.cancelled]
            for i in live:
                seqs[i].fed += 1
            self._emit([seqs[i] for i in live], logits[live])

    def fail_active(self, error: Exception) -> None:
        """A model failure ends every live request with an error, not silence."""
        with self.lock:
            for seq in list(self.active.values()):
                self._finish(seq, "error", error)

    def cancel_all(self) -> None:
        with self.lock:
            for seq in list(self.by_id.values()):
                self._finish(seq, "cancelled")
            self.queue.clear()

    def _emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
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

    def _finish(self, seq: Sequence, reason: str, error: Exception | None = None) -> None:
        """Retires a sequence (lock held): keeps its KV for prefix reuse, frees the slot, tells the caller once."""
        if self.by_id.pop(seq.request.request_id, None) is None:
            return
        if seq.slot >= 0:
            if seq.request.prefix_key and seq.fed and reason in ("stop", "length", "prefilled") and self.config.prefix_cache_tokens:
                self.prefix_store.put(seq.request.prefix_key, seq.ids[: seq.fed], self.runner.save_prefix(seq.slot, seq.fed))
            del self.active[seq.slot]
            self.free_slots.append(seq.slot)
        self.counters["finished"] += 1
        seq.on_finish(reason, error)

    def stats(self) -> dict:
        with self.lock:
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
