"""Next-token sampling, batched over rows with per-row parameters.

Order per row (as HF transformers): repetition penalty (prompt + output ids), presence penalty (output
ids), temperature, top-k, top-p, then a draw from the row's own torch.Generator. Temperature 0 is greedy.
"""

from __future__ import annotations

import torch

from glmvoice.sampling import SamplingParams


def make_generator(params: SamplingParams, device: str | torch.device = "cpu") -> torch.Generator:
    """The row's own random stream: seeded when the request gives a seed, else from the OS."""
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def apply_penalties(
    logits: torch.Tensor, params: SamplingParams, seen: list[int], generated: list[int]
) -> torch.Tensor:
    """logits: [V] (float) -> penalised copy."""
    logits = logits.clone()
    if params.repetition_penalty != 1.0 and seen:
        ids = torch.tensor(sorted(set(seen)), device=logits.device)
        picked = logits[ids]
        logits[ids] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.presence_penalty != 0.0 and generated:
        ids = torch.tensor(sorted(set(generated)), device=logits.device)
        logits[ids] -= params.presence_penalty
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits: [V] -> logits with excluded tokens at -inf (at least the most likely token survives)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p  # the first token always has mass_before 0
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    seen: list[list[int]] | None = None,
    generated: list[list[int]] | None = None,
) -> torch.Tensor:
    """logits: [B, V]; one SamplingParams, generator, seen-ids list (prompt + output) and generated-ids
    list per row -> next ids [B] (int64)."""
    rows = logits.shape[0]
    if len(params) != rows or len(generators) != rows:
        raise ValueError("one SamplingParams and one generator per row")
    seen = seen or [[] for _ in range(rows)]
    generated = generated or [[] for _ in range(rows)]
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    # Plain greedy rows (the common serving case) take one batched argmax instead of a row loop.
    plain = [r for r, p in enumerate(params) if p.temperature == 0 and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0]
    if plain:
        index = torch.tensor(plain, device=logits.device)
        out[index] = logits[index].argmax(-1)
    for row in sorted(set(range(rows)) - set(plain)):
        p = params[row]
        row_logits = apply_penalties(logits[row].float(), p, seen[row], generated[row])
        if p.temperature == 0:
            out[row] = row_logits.argmax()
            continue
        row_logits = filter_top_k_top_p(row_logits / p.temperature, p.top_k, p.top_p)
        probs = row_logits.softmax(-1)
        out[row] = torch.multinomial(probs, 1, generator=generators[row]).squeeze(0)
    return out
