"""LM trainer: next-token cross-entropy on the completion part of (prompt, completion) id sequences.

Seeded, resumable (a trainer state file in the work directory), with a progress bar and the loss
history returned for plotting.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from glmvoice.models.llm import Transformer


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


def lm_loss(model: Transformer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)  # [B, T, V], causal, no KV cache
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def train_lm(
    model: Transformer, pairs: list[tuple[list[int], list[int]]], config: LMTrainConfig, work_dir: Path | None = None
) -> list[float]:
    """Trains in place; returns the loss of every step (resumed runs include the earlier steps)."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / config.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)),
    )
    state_file = work_dir / "trainer_state.pt" if work_dir else None
    losses: list[float] = []
    start = 0
    if state_file and state_file.exists():
        state = torch.load(state_file, weights_only=False)  # our own file, written below
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        losses, start = state["losses"], state["step"]
    model.train()
    for step in tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train lm", leave=False):
        inputs, targets = batch_tensors(rng.sample(pairs, min(config.batch_size, len(pairs))))
        loss = lm_loss(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if state_file and ((step + 1) % config.save_every == 0 or step + 1 == config.steps):
            state_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "rng": rng.getstate(), "losses": losses, "step": step + 1},
                state_file,
            )
    model.eval()
    return losses
