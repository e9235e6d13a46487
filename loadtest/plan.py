"""What a simulated caller will do in one session: its turns, format, think time and sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.speech import Utterance


@dataclass(frozen=True)
class TurnPlan:
    utterance: Utterance
    barge_in: bool = False  # speak the next turn over this reply once `barge_in_after_s` of it arrived


@dataclass
class SessionPlan:
    index: int
    target: str
    level: float
    fmt: str  # speech.FORMATS key
    turns: list[TurnPlan]
    think_s: float = 1.0  # pause between a reply's end and the caller's next turn
    barge_in_after_s: float = 0.3
    sampling: dict = field(default_factory=dict)  # temperature, top_p, seed, max_new_tokens
    keep_audio: bool = False
    turn_timeout_s: float = 120.0
