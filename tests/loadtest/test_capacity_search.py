"""The capacity search's decisions over known per-level summaries: where it stops, what it reports."""

import asyncio
from types import SimpleNamespace

import loadtest.capacity as capacity
from loadtest.records import STAGES
from loadtest.workloads import Workload


def summary(p95: float, underrun: float = 0.0, errors: dict | None = None) -> dict:
    return {"refused": 0, "errors_by_status": errors or {}, "ttfa_ms": {"p50": p95 / 2, "p95": p95, "p99": p95},
            "underrun_turn_share": underrun, "server_rtf_p50": 1.0,
            "stages_ms": {s: {"p95": p95 if s == "speech_decode_ms" else 10.0} for s in STAGES}}


def search(monkeypatch, per_level: dict[int, dict]):
    ran = []

    async def run_workload(dial, workload, corpus, name, progress):
        ran.append(workload.concurrency)
        return [workload.concurrency]

    monkeypatch.setattr(capacity, "run_workload", run_workload)
    monkeypatch.setattr(capacity, "summarize_group", lambda got: per_level[got[0]])
    target = SimpleNamespace(name="ours", dial=None)
    result, _ = asyncio.run(capacity.find_capacity(target, Workload(), [], 500.0, levels=sorted(per_level),
                                                   progress=False))
    return result, ran


def test_late_first_audio_goes_on_to_the_streaming_limit(monkeypatch):
    result, ran = search(monkeypatch, {1: summary(700), 2: summary(800), 4: summary(900, underrun=0.25),
                                       8: summary(1000)})
    assert (result["capacity"], result["realtime_calls"], ran) == (0, 2, [1, 2, 4])
    assert result["saturated_first"]["stage"] == "speech_decode_ms"
    assert [s["streaming"] for s in result["steps"]] == [True, True, False]


def test_capacity_is_the_last_level_within_the_slo_and_errors_stop_the_search(monkeypatch):
    # Level 8 is back under the SLO after 4 was above it: capacity is the prefix of held levels, so 2.
    result, ran = search(monkeypatch, {1: summary(200), 2: summary(300), 4: summary(600), 8: summary(400),
                                       16: summary(100, errors={"UNAVAILABLE": 1}), 32: summary(100)})
    assert (result["capacity"], result["realtime_calls"], ran) == (2, 8, [1, 2, 4, 8, 16])
    assert result["saturated_first"]["growth_ms"]["speech_decode_ms"] == 600 - 200
