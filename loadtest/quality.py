"""Quality under load: with greedy sampling and a fixed decoder seed, every reply at concurrency N must be the
same as the same turn run alone (batching must not change answers).

The client sees text and audio, not ids: a reply counts as the same when its text is identical and its audio
has the same length (the same number of speech codes) and differs by at most `TOLERANCE` of full scale
(batched float arithmetic may move a sample by a rounding step; a different code changes the waveform).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from glmvoice.audio import pcm16_to_float
from loadtest.plan import SessionPlan, TurnPlan

TOLERANCE = 0.02
FORMAT = "pcm16k"  # LINEAR16: the reply's samples compare exactly, without companding


def _plans(target: str, corpus, count: int, max_new_tokens: int, level: float) -> list[SessionPlan]:
    sampling = {"temperature": 0.0, "seed": 7, "max_new_tokens": max_new_tokens}
    return [SessionPlan(index=i, target=target, level=level, fmt=FORMAT, turns=[TurnPlan(corpus[i % len(corpus)])],
                        think_s=0.0, sampling=sampling, keep_audio=True, turn_timeout_s=900.0) for i in range(count)]


def same_reply(alone, together) -> tuple[bool, float]:
    a, b = pcm16_to_float(alone.audio), pcm16_to_float(together.audio)
    if alone.reply_text != together.reply_text or len(a) != len(b):
        return False, float("inf")
    diff = float(np.abs(a - b).max()) if len(a) else 0.0
    return diff <= TOLERANCE, diff


async def check(target, corpus, concurrency: int = 16, max_new_tokens: int = 80) -> dict:
    t0 = time.perf_counter()
    alone = [(await target.dial(plan, t0))[0] for plan in _plans(target.name, corpus, concurrency, max_new_tokens, 1)]
    together = await asyncio.gather(*(target.dial(p, t0) for p in _plans(target.name, corpus, concurrency, max_new_tokens, concurrency)))
    together = [turns[0] for turns in together]
    compared, same, worst, mismatches = 0, 0, 0.0, []
    for a, b in zip(alone, together):
        if not (a.ok and b.ok and a.reason and b.reason):
            mismatches.append({"utterance": a.utterance, "alone": a.status, "together": b.status})
            continue
        compared += 1
        equal, diff = same_reply(a, b)
        same += equal
        worst = max(worst, diff if np.isfinite(diff) else worst)
        if not equal:
            mismatches.append({"utterance": a.utterance, "alone_text": a.reply_text, "together_text": b.reply_text,
                               "audio_s": [a.reply_audio_s, b.reply_audio_s], "max_abs_diff": diff})
    return {"target": target.name, "concurrency": concurrency, "checked": compared, "same": same,
            "max_abs_audio_diff": round(worst, 5), "tolerance": TOLERANCE, "mismatches": mismatches}
