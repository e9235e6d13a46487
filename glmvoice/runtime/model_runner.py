"""The LM's model runner: one forward that turns token chunks into next-token logits.

The engine (in-flight batching) and the single-request loop (runtime.generate) both run the model only
through `ModelRunner.forward`; the runner also owns the KV slots' contents, so the scheduler's prefix
store keeps and restores a slot's KV through `save_prefix` / `load_prefix` without knowing its layout.
"""

from __future__ import annotations

from typing import cast

import torch

from glmvoice.models.llm import KVCache, Transformer

# What save_prefix returns: per layer (k, v), each [H_kv, n, D]; opaque to the scheduler.
PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


class ModelRunner:
    """Drives one Transformer over a static KV cache of `max_slots` rows x `max_seq_len` positions."""

    def __init__(self, model: Transformer, max_slots: int, max_seq_len: int):
        if max_seq_len > model.config.block_size:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's {model.config.block_size}")
        model.setup_caches(max_slots, max_seq_len)
        self.model = model
        self.device = model.output.weight.device

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @torch.inference_mode()
    def forward(self, chunks: list[list[int]], starts: list[int], slots: list[int] | None = None) -> torch.Tensor:
        """Feeds chunk b at positions starts[b].. into KV slot slots[b] -> logits of each chunk's last
        position [B, V] (float32). Chunks have equal lengths (one prefill chunk, or B decode tokens).
        slots None: rows 0..B-1 at shared positions (the single-request path)."""
        idx = torch.tensor(chunks, dtype=torch.long, device=self.device)  # [B, T]
        steps = torch.arange(idx.shape[1], device=self.device)
        if slots is None:
            positions, rows = starts[0] + steps, None  # [T]
        else:
            positions = torch.tensor(starts, device=self.device)[:, None] + steps  # [B, T]
            rows = torch.tensor(slots, device=self.device)
        # The output layer runs on the last position only: all T positions would be T x vocab floats.
        hidden = self.model.hidden_states(idx, positions, rows=rows)[:, -1]  # [B, C]
        return self.model.output(hidden).float()  # [B, V]

    def _caches(self) -> list[KVCache]:
        return cast(list[KVCache], list(self.model.kv_caches or []))

    def save_prefix(self, slot: int, length: int) -> PrefixKV:
        """A copy of the KV of positions 0..length-1 of a slot."""
        return [(c.k_cache[slot, :, :length].clone(), c.v_cache[slot, :, :length].clone()) for c in self._caches()]

    def load_prefix(self, slot: int, kv: PrefixKV, length: int) -> None:
        """Writes the first `length` positions of a saved prefix into a slot."""
        for cache, (k, v) in zip(self._caches(), kv):
            cache.k_cache[slot, :, :length] = k[:, :length]
            cache.v_cache[slot, :, :length] = v[:, :length]

    def close(self) -> None:
        """Nothing to release in process; runners that drive other processes stop them here."""
