"""`make soak` (loadtest.soak) shortened: the stack `make up` starts, under steady load for 30 s, RSS of every
process sampled; the report's figures come from real samples of the stack's processes, no stream is left live,
and `make down` leaves no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.local_stack import alive
from tests.integration.test_local_stack import checkpoints  # noqa: F401 - the stack's checkpoint fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # stack start, 30 s of load, drain and down: ~2-3 min
DURATION_S, INTERVAL_S, WARMUP_S = 30, 2, 10


def test_a_short_soak_reports_real_samples_and_leaves_nothing(tmp_path, checkpoints):
    env = {**os.environ, "GLMVOICE_STACK_FILE": str(tmp_path / "stack.json"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "soak"
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.soak", "--checkpoints", str(checkpoints), "--workdir", str(tmp_path / "stack"),
         "--duration-s", str(DURATION_S), "--interval-s", str(INTERVAL_S), "--warmup-s", str(WARMUP_S),
         "--concurrency", "2", "--out", str(out),
         # 30 s is mostly warm-up (a decoder stub grew 53 MiB in one such run, by 21 MiB after its first minute
         # in a 3-minute one): this run checks the report and the clean-up; the verdict's arithmetic is unit-tested.
         "--max-growth-mib", "256"],
        env=env, capture_output=True, text=True, timeout=900)
    print(run.stdout[-4000:])
    report = json.loads((out / "soak.json").read_text())
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:], report["failures"])
    assert not report["failures"] and "soak: PASS" in run.stdout

    # Every component of the stack was sampled, Triton's python stubs (one per model) included.
    components = {row["component"] for row in report["processes"]}
    assert components == {"gateway", "orchestrator", "triton", "redis"}
    stubs = [row for row in report["processes"] if row["name"].startswith("triton_python_backend_stub")]
    assert {row["name"].split("(")[1].rstrip(")") for row in stubs} >= {"llm", "speech_decoder", "speech_tokenizer"}
    pids = {str(row["pid"]) for row in report["processes"]}
    assert set(map(str, report["stack"]["pids"].values())) <= pids

    # The figures are the samples': start = first sample after warm-up, peak = the largest, end = the last.
    samples = report["samples"]
    assert len(samples) >= DURATION_S // INTERVAL_S
    mib = 1024 * 1024
    for row in report["processes"]:
        series = [(s["t"], s["rss"][str(row["pid"])]) for s in samples if str(row["pid"]) in s["rss"]]
        assert len(series) == row["samples"] >= DURATION_S // INTERVAL_S, row  # sampled throughout, not once
        warm = [(t, v) for t, v in series if t >= WARMUP_S]
        assert row["start_mib"] == round(warm[0][1] / mib, 1) and row["start_t"] == warm[0][0]
        assert row["peak_mib"] == round(max(v for _, v in series) / mib, 1)
        assert row["end_mib"] == round(series[-1][1] / mib, 1)
        assert row["growth_mib"] == round((series[-1][1] - warm[0][1]) / mib, 1)
        assert row["start_mib"] > 1 and row["peak_mib"] >= max(row["start_mib"], row["end_mib"])
    # The RSS of a process moves under load: the samples are read, not one value repeated.
    triton_stub_values = {s["rss"][str(stubs[0]["pid"])] for s in samples if str(stubs[0]["pid"]) in s["rss"]}
    assert len(triton_stub_values) > 1

    # The load was real and ended; every stream gauge was read and reads 0; `down` left nothing.
    assert report["load"]["exit_code"] == 0 and report["load"]["answered"] >= 4
    assert set(report["streams_after"]) == {"speech_tokenizer_open_streams", "speech_decoder_open_streams",
                                            "llm_active", "llm_queued", "orchestrator_active_streams"}
    assert all(value == 0 for value in report["streams_after"].values()), report["streams_after"]
    assert report["down"]["exit_code"] == 0 and report["left_after_down"] == []
    assert not any(alive(row["pid"]) for row in report["processes"])
    assert not (tmp_path / "stack.json").exists()
