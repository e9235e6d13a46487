"""Sampling parameters of one LM request: a plain value object, free of torch, so that the orchestrator and
gateway can validate and carry them without loading the model stack (glmvoice.runtime.sampler applies them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
        for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
