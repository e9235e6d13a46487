"""What one turn measured, computed from what the client saw: pure functions over arrival times.

- TTFA: end of the caller's speech (the moment its last 20 ms frame was captured and sent) -> the first
  reply audio byte at the client.
- Underrun: the client plays the reply at real time from its first byte. Each chunk that arrives after the
  audio before it has finished playing leaves the speaker silent for that long (a stall); the turn's underrun
  is the sum of its stalls in ms.
- Continuity: a reply is continuous when none of its stalls is longer than 100 ms (a gap between chunks
  longer than the audio already buffered, by more than 100 ms); the run's continuity is the share of
  continuous replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GAP_MS = 100.0  # a stall longer than this breaks continuity


@dataclass(frozen=True)
class Playback:
    underrun_ms: float  # total silence inside the reply while playing at real time
    max_stall_ms: float
    stalls: int  # chunks that arrived after the buffer ran dry

    @property
    def continuous(self) -> bool:
        return self.max_stall_ms <= GAP_MS


def playback(arrivals: Sequence[float], durations: Sequence[float]) -> Playback:
    """arrivals: seconds (any clock) at which each audio chunk arrived, in order; durations: seconds of audio
    each chunk holds. Playback starts with the first chunk and runs at real time."""
    if len(arrivals) != len(durations):
        raise ValueError("one duration per arrival")
    if not arrivals:
        return Playback(0.0, 0.0, 0)
    played_until = arrivals[0] + durations[0]
    total = worst = 0.0
    stalls = 0
    for arrived, duration in zip(arrivals[1:], durations[1:]):
        stall = arrived - played_until
        if stall > 0:
            total += stall
            worst = max(worst, stall)
            stalls += 1
            played_until = arrived
        played_until += duration
    return Playback(total * 1000.0, worst * 1000.0, stalls)


def percentiles(values: Sequence[float], points=(50, 95, 99)) -> dict[str, float | None]:
    """p50/p95/p99 (linear interpolation); None for no values."""
    values = [v for v in values if v is not None]
    if not values:
        return {f"p{p}": None for p in points}
    return {f"p{p}": round(float(np.percentile(values, p)), 1) for p in points}
