"""Next-token sampling, batched over rows with per-row parameters.

Order per row (as HF transformers): repetition penalty (prompt + output ids), presence penalty (output
ids), temperature, top-k, top-p, then a draw from the row's own torch.Generator. Temperature 0 is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The official GLM-4-Voice demo's settings, as SamplingParams keyword arguments.
OFFICIAL_SAMPLING = {"temperature": 0.2, "top_p": 0.8}


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p
    top_k: int = 0  # 0 = no limit
    repetition_penalty: float = 1.0  # HF/CTRL style: divide positive logits, multiply negative ones
    presence_penalty: float = 0.0  # OpenAI style: subtract from every token already generated
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def make_generator(self, device: str | torch.device = "cpu") -> torch.Generator:
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
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
