"""The step loop every trainer shares: seeded, resumable, with a progress bar and loss curves.

A trainer supplies `step(index, rng) -> {loss name: value}` that does one optimisation step. The loop owns
the random state (Python `random.Random` for data order, torch's global generator for noise and dropout),
and saves it with the modules, optimizers and schedules to `<work_dir>/trainer_state.pt` every `save_every`
steps: a run stopped after a save and started again continues bit-exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

STATE_NAME = "trainer_state.pt"


def cosine_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up, then cosine decay to zero at total_steps."""
    total = max(1, total_steps)
    return lambda s: min(1.0, (s + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))


def run_steps(
    desc: str,
    step: Callable[[int, random.Random], dict[str, float]],
    steps: int,
    seed: int,
    stateful: dict[str, object],
    work_dir: Path | None = None,
    save_every: int = 100,
    stop_at: int | None = None,
) -> dict[str, list[float]]:
    """Runs steps [resumed step, steps); `stateful` maps names to objects with state_dict/load_state_dict
    (modules, optimizers, schedulers). `stop_at` ends this call early (the schedule still spans `steps`),
    saving the state so that a later call resumes there: a time-sliced or preempted job.
    Returns every step's losses, earlier runs' included."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    state_file = Path(work_dir) / STATE_NAME if work_dir else None
    history: dict[str, list[float]] = {}
    start = 0
    if state_file and state_file.exists():
        # weights_only: the store is shared, so the state file is read without unpickling arbitrary objects.
        state = torch.load(state_file, weights_only=True)
        for name, obj in stateful.items():
            obj.load_state_dict(state["objects"][name])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        history, start = state["history"], state["step"]
    end = steps if stop_at is None else min(steps, stop_at)
    for index in tqdm(range(start, end), initial=start, total=steps, desc=desc, leave=False):
        for name, value in step(index, rng).items():
            history.setdefault(name, []).append(float(value))
        if state_file and ((index + 1) % save_every == 0 or index + 1 == end):
            state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_file.with_suffix(".tmp")
            torch.save({"objects": {n: o.state_dict() for n, o in stateful.items()}, "rng": rng.getstate(),
                        "torch_rng": torch.get_rng_state(), "history": history, "step": index + 1}, tmp)
            tmp.replace(state_file)  # a crash mid-write leaves the previous state intact
    return history


def save_loss_plot(history: dict[str, list[float]], path: str | Path, title: str) -> Path:
    """One PNG with a curve per loss (log scale when all values are positive), smoothed over ~1% of the run."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in history.items():
        window = max(1, len(values) // 100)
        smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                  for i in range(len(values))]
        ax.plot(range(1, len(values) + 1), smooth, label=name)
    if all(v > 0 for values in history.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
