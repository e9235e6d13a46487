"""Who calls when: fixed concurrency, a concurrency ramp, Poisson arrivals. Every run is bounded by a session
count and a duration and stops by itself (turns already started finish; no new session starts after the
deadline). Sessions cycle through the input formats and the speech corpus, so every format is exercised.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tqdm import tqdm

from loadtest.plan import SessionPlan, TurnPlan
from loadtest.records import TurnRecord
from loadtest.speech import FORMATS, Utterance

Dial = Callable[[SessionPlan, float], Awaitable[list[TurnRecord]]]  # runs one session -> its turns


@dataclass(frozen=True)
class Workload:
    kind: str = "fixed"  # fixed | ramp | poisson
    concurrency: int = 8  # fixed
    levels: tuple[int, ...] = (1, 2, 4, 8)  # ramp: concurrency of each step
    rate: float = 1.0  # poisson: sessions started per second
    sessions: int = 8  # sessions per run (fixed, poisson) or per step (ramp)
    duration_s: float = 120.0  # hard bound per run / step: no session starts after it
    turns: int = 3
    think_s: float = 1.0
    barge_in: float = 0.0  # fraction of turns (not the last of a session) the caller speaks over
    formats: tuple[str, ...] = tuple(FORMATS)
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    random_seed: int = 0


class Planner:
    """Hands out session plans: formats round-robin, utterances in order, barge-in drawn per turn."""

    def __init__(self, workload: Workload, corpus: tuple[Utterance, ...], target: str):
        self.workload, self.corpus, self.target = workload, corpus, target
        self.random = random.Random(workload.random_seed)
        self.sessions = itertools.count()
        self.utterances = itertools.cycle(corpus)

    def next(self, level: float) -> SessionPlan:
        w = self.workload
        index = next(self.sessions)
        turns = [TurnPlan(next(self.utterances), barge_in=i + 1 < w.turns and self.random.random() < w.barge_in)
                 for i in range(w.turns)]
        sampling = {"max_new_tokens": w.max_new_tokens, "temperature": w.temperature, "seed": w.seed}
        return SessionPlan(index=index, target=self.target, level=level, fmt=w.formats[index % len(w.formats)],
                           turns=turns, think_s=w.think_s, sampling={k: v for k, v in sampling.items() if v is not None})


async def _fixed(dial: Dial, planner: Planner, concurrency: int, sessions: int, duration_s: float, t0: float,
                 bar: tqdm, level: float) -> list[TurnRecord]:
    deadline = time.perf_counter() + duration_s
    remaining = itertools.count()
    records: list[TurnRecord] = []

    async def worker():
        while next(remaining) < sessions and time.perf_counter() < deadline:
            turns = await dial(planner.next(level), t0)
            records.extend(turns)
            bar.update(len(turns))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def _poisson(dial: Dial, planner: Planner, w: Workload, t0: float, bar: tqdm) -> list[TurnRecord]:
    deadline = time.perf_counter() + w.duration_s
    records: list[TurnRecord] = []
    tasks = []

    async def one():
        turns = await dial(planner.next(w.rate), t0)
        records.extend(turns)
        bar.update(len(turns))

    for _ in range(w.sessions):
        if time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(planner.random.expovariate(w.rate))
    await asyncio.gather(*tasks)
    return records


async def run_workload(dial: Dial, workload: Workload, corpus: tuple[Utterance, ...], target: str,
                       progress: bool = True) -> list[TurnRecord]:
    planner = Planner(workload, corpus, target)
    steps = workload.levels if workload.kind == "ramp" else (1,)
    total = sum(max(workload.sessions, level if workload.kind == "ramp" else 0) for level in steps) * workload.turns
    t0 = time.perf_counter()
    with tqdm(total=total, desc=f"{target} {workload.kind}", unit="turn", disable=not progress, leave=False) as bar:
        if workload.kind == "poisson":
            return await _poisson(dial, planner, workload, t0, bar)
        if workload.kind == "fixed":
            return await _fixed(dial, planner, workload.concurrency, workload.sessions, workload.duration_s, t0,
                                bar, workload.concurrency)
        if workload.kind != "ramp":
            raise ValueError(f"workload must be fixed, ramp or poisson, got {workload.kind!r}")
        records = []
        for level in workload.levels:
            bar.set_postfix(concurrency=level)
            # At least one session per caller, or the step never reaches its concurrency.
            sessions = max(workload.sessions, level)
            records += await _fixed(dial, planner, level, sessions, workload.duration_s, t0, bar, level)
        return records
