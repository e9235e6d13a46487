"""Single-request generation over the model's static KV cache: prefill, then one-token decode steps.

The in-flight batching engine builds on the same pieces (Transformer.prefill / decode_one_token and
runtime.sampling); this loop is the simple reference path used by the CLI and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from glmvoice.models.llm import Transformer
from glmvoice.runtime.sampling import make_generator, sample
from glmvoice.sampling import SamplingParams


@dataclass
class GenerationResult:
    ids: list[int]  # generated ids, without the stop id
    finish_reason: str  # "stop" (a stop id was produced) or "length" (max_new_tokens reached)
    stop_id: int | None = None


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    stop_ids=(),
    params: SamplingParams = SamplingParams(temperature=0.0),
    on_token: Callable[[int], object] | None = None,
) -> GenerationResult:
    """on_token(id) is called for every produced id as soon as it is sampled, the stop id included."""
    if not prompt_ids:
        raise ValueError("empty prompt")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    total = len(prompt_ids) + max_new_tokens
    if total > model.config.block_size:
        raise ValueError(
            f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) exceeds {model.config.block_size}"
        )
    device = model.output.weight.device
    model.setup_caches(1, total)
    generator = make_generator(params, device)
    stops = frozenset(int(i) for i in stop_ids)

    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # [1, T]
    logits = model.prefill(prompt, torch.arange(len(prompt_ids), device=device))  # [1, V]
    seen, generated = list(prompt_ids), list[int]()
    for step in range(max_new_tokens):
        next_id = int(sample(logits, [params], [generator], [seen], [generated])[0])
        if on_token is not None:
            on_token(next_id)
        if next_id in stops:
            return GenerationResult(generated, "stop", next_id)
        generated.append(next_id)
        seen.append(next_id)
        if step + 1 < max_new_tokens:
            position = torch.tensor([len(prompt_ids) + step], device=device)
            logits = model.decode_one_token(torch.tensor([[next_id]], device=device), position)
    return GenerationResult(generated, "length")
