"""LM trainer: next-token cross-entropy on the completion part of (prompt, completion) id sequences.
Pre-training learns whole sequences: a sequence is the pair (its first id, the rest).

Seeded, resumable (a trainer state file in the work directory), with a progress bar; the loss history
is returned for plotting (training.loop.save_loss_plot).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from glmvoice.models.llm import Transformer
from training.loop import cosine_warmup, run_steps


@dataclass(frozen=True)
class LMTrainConfig:
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 100


def batch_tensors(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, completion) pairs → inputs [B, T] and targets [B, T], targets -100 outside completions."""
    length = max(len(p) + len(c) for p, c in pairs) - 1
    inputs = torch.zeros(len(pairs), length, dtype=torch.long)
    targets = torch.full((len(pairs), length), -100, dtype=torch.long)
    for row, (prompt, completion) in enumerate(pairs):
        ids = torch.tensor(prompt + completion)
        inputs[row, : len(ids) - 1] = ids[:-1]
        # Position i predicts id i + 1; only completion ids are learned.
        targets[row, len(prompt) - 1 : len(ids) - 1] = ids[len(prompt) :]
    return inputs, targets


def whole_sequences(sequences: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """Pre-training pairs: every id but the first is a target."""
    return [(seq[:1], seq[1:]) for seq in sequences if len(seq) > 1]


def lm_loss(model: Transformer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)  # [B, T, V], causal, no KV cache
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def train_lm(
    model: Transformer, pairs: list[tuple[list[int], list[int]]], config: LMTrainConfig, work_dir: Path | None = None,
    stop_at: int | None = None, desc: str = "train lm",
) -> list[float]:
    """Trains in place; returns the loss of every step (resumed runs include the earlier steps).
    `stop_at`: end early at that step, resumable from work_dir."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_warmup(config.warmup_steps, config.steps))

    def step(index, rng) -> dict[str, float]:
        inputs, targets = batch_tensors(rng.sample(pairs, min(config.batch_size, len(pairs))))
        device = model.output.weight.device
        loss = lm_loss(model, inputs.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        return {"lm": loss.item()}

    model.train()
    history = run_steps(desc, step, config.steps, config.seed,
                        {"model": model, "optimizer": optimizer, "schedule": schedule}, work_dir, config.save_every, stop_at)
    model.eval()
    return history.get("lm", [])
