"""Moves every replica of a model to a new version, one replica at a time, without a gap.

The new version directory is already in the shared repository. Per replica: a load brings it up while
the old version keeps serving; Triton switches requests that name no version to it once it is ready and
unloads the old version after the old version's in-flight requests finish. Then the new version must
report ready and answer the canary (sent to it by version). Any failure withdraws the new version
directory and loads again on this replica and on those already moved, which brings the old version back
(again loaded before the new one goes), and raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.promoter.canary import run_canary
from services.promoter.replicas import Replica, TritonControl


class RolloutError(RuntimeError):
    """A replica could not be moved to the new version; the old version serves everywhere again."""


@dataclass(frozen=True)
class RolloutPlan:
    model: str
    old: int | None  # None on the first promotion: nothing to go back to
    new: int
    checkpoint: Path  # what the new version serves, for the canary's sizes
    withdraw: Callable[[], None]  # removes the new version directory from the repository
    canary_timeout_s: float = 120.0
    load_timeout_s: float = 900.0


def _move(control: TritonControl, plan: RolloutPlan) -> dict:
    if not control.server_live():
        raise RolloutError(f"{control.replica.name}: server not live")
    started = time.monotonic()
    control.load()
    if not control.is_ready(plan.new):
        raise RolloutError(f"{control.replica.name}: {plan.model} v{plan.new} loaded but not ready")
    canary = run_canary(control.replica, plan.model, plan.new, plan.checkpoint, plan.canary_timeout_s)
    return {"replica": control.replica.name, "canary": canary, "seconds": round(time.monotonic() - started, 2)}


def _restore(controls: list[TritonControl], plan: RolloutPlan, log: Callable[[str], None]) -> list[str]:
    plan.withdraw()
    restored = []
    for control in controls:
        try:
            if plan.old is None:
                control.unload()
            else:
                control.load()
            restored.append(control.replica.name)
        except Exception as exc:  # keep restoring the others; report this one
            log(f"{plan.model}: {control.replica.name}: restoring v{plan.old} failed: {exc}")
    return restored


def rollout(replicas: list[Replica], plan: RolloutPlan, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    if not replicas:
        plan.withdraw()
        raise RolloutError(f"{plan.model}: no Triton replicas to promote on")
    moved: list[TritonControl] = []
    reports = []
    for replica in replicas:
        control = TritonControl(replica, plan.model, plan.load_timeout_s)
        log(f"{plan.model}: {replica.name}: v{plan.old} -> v{plan.new}")
        try:
            reports.append(_move(control, plan))
        except Exception as exc:  # load errors, canary errors and transport errors alike end the rollout
            restored = _restore([control, *reversed(moved)], plan, log)
            raise RolloutError(f"{plan.model}: {replica.name}: {exc}; v{plan.old} restored on {restored}") from exc
        moved.append(control)
        log(f"{plan.model}: {replica.name}: now v{plan.new} ({reports[-1]['seconds']} s)")
    return reports
