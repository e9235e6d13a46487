"""Single-request generation over the model's static KV cache: prefill, then one-token decode steps.

It runs the model through the same ModelRunner.forward and runtime.sampler as the in-flight batching
engine; this loop is the simple reference path used by the CLI, evaluation and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from glmvoice.models.llm import Transformer
from glmvoice.runtime.model_runner import ModelRunner
from glmvoice.runtime.sampler import make_generator, sample
from glmvoice.sampling import SamplingParams


@dataclass
class GenerationResult:
    ids: list[int]  # generated ids, without the stop id
    finish_reason: str  # "stop" (a stop id was produced) or "length" (max_new_tokens reached)
    stop_id: int | None = None


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
    runner = ModelRunner(model, 1, total)
    generator = make_generator(params, runner.device)
    stops = frozenset(int(i) for i in stop_ids)

    logits = runner.forward([list(prompt_ids)], [0])  # [1, V]
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
            logits = runner.forward([[next_id]], [len(prompt_ids) + step])
    return GenerationResult(generated, "length")
