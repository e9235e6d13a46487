"""`--find-capacity`: raise the number of concurrent calls until p95 TTFA passes the SLO or more than 1% of
turns underrun (or a call is refused or fails); the capacity is the largest level that held.

A second figure, `realtime_calls`, drops the TTFA SLO: the largest level whose replies all still play
without gaps (no underrun beyond 1% of turns, nothing refused or failed). Where the first reply block alone
costs more than the SLO (a slow CPU), capacity is 0 while the node may still stream many calls; the search
goes on past a TTFA-only failure until streaming fails too, so the report says both.

The stage whose p95 grew most from the lightest level to the first failing one is named as the one that
saturated first (the server reports each stage of every turn); when the lightest level already fails, the
costliest stage there. The failing level's server real-time factor shows whether replies were produced
slower than they play (underrun) rather than late (TTFA).
"""

from __future__ import annotations

from dataclasses import replace

from loadtest.records import STAGES, TurnRecord, summarize_group
from loadtest.workloads import Workload, run_workload

LEVELS = (1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64, 96, 128)
MAX_UNDERRUN_SHARE = 0.01


def streaming_verdict(summary: dict) -> tuple[bool, str]:
    """Every call admitted and answered, and replies play without gaps (TTFA aside)."""
    if summary["refused"] or summary["errors_by_status"]:
        return False, f"refused {summary['refused']}, errors {summary['errors_by_status']}"
    if summary["ttfa_ms"]["p95"] is None:
        return False, "no turn was answered"
    share = summary["underrun_turn_share"] or 0.0
    if share > MAX_UNDERRUN_SHARE:
        return False, f"{share:.1%} of turns underran (> {MAX_UNDERRUN_SHARE:.0%})"
    return True, f"{share:.1%} of turns underran"


def verdict(summary: dict, slo_ms: float) -> tuple[bool, str]:
    streaming, why = streaming_verdict(summary)
    if not streaming:
        return False, why
    p95 = summary["ttfa_ms"]["p95"]
    if p95 > slo_ms:
        return False, f"p95 TTFA {p95:.0f} ms > SLO {slo_ms:.0f} ms"
    return True, f"p95 TTFA {p95:.0f} ms, {why}"


def saturated_stage(first: dict | None, failed: dict) -> dict:
    """The stage whose p95 grew most between two levels' summaries (from zero when `first` is None), with the
    growth of every stage."""
    growth = {}
    for stage in STAGES:
        a = first["stages_ms"][stage]["p95"] if first is not None else 0.0
        b = failed["stages_ms"][stage]["p95"]
        if a is not None and b is not None:
            growth[stage] = round(b - a, 1)
    if not growth:
        return {"stage": None, "growth_ms": {}}
    return {"stage": max(growth, key=growth.get), "growth_ms": growth}


async def find_capacity(target, base: Workload, corpus, slo_ms: float, levels=LEVELS, sessions_per_call: int = 1,
                        progress: bool = True) -> tuple[dict, list[TurnRecord]]:
    steps, records, held, streamed, within_slo = [], [], 0, 0, True
    for level in levels:
        workload = replace(base, kind="fixed", concurrency=level, sessions=level * sessions_per_call)
        got = await run_workload(target.dial, workload, corpus, target.name, progress)
        records += got
        summary = summarize_group(got)
        passed, why = verdict(summary, slo_ms)
        streaming, _ = streaming_verdict(summary)
        steps.append({"concurrency": level, "passed": passed, "streaming": streaming, "why": why,
                      "ttfa_ms": summary["ttfa_ms"],
                      "underrun_turn_share": summary["underrun_turn_share"], "server_rtf_p50": summary["server_rtf_p50"],
                      "stages_p95_ms":
                      {s: summary["stages_ms"][s]["p95"] for s in STAGES}, "summary": summary})
        within_slo = within_slo and passed  # capacity counts only while every lighter level held the SLO
        if within_slo:
            held = level
        if not streaming:
            break
        streamed = level
    result = {"target": target.name, "slo_ms": slo_ms, "max_underrun_share": MAX_UNDERRUN_SHARE,
              "capacity": held, "realtime_calls": streamed,
              "steps": [{k: v for k, v in s.items() if k != "summary"} for s in steps]}
    failed = next((i for i, s in enumerate(steps) if not s["passed"]), None)
    if failed is not None:
        # The stage that grew most up to the first level past the SLO; failing at the lightest level, the
        # stage that costs most there is the one that cannot keep up.
        first = steps[0]["summary"] if failed > 0 else None
        result["saturated_first"] = saturated_stage(first, steps[failed]["summary"])
    return result, records
