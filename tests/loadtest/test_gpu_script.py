"""The GPU script (`make bench-gpu`) end to end at tiny size on the CPU: its figures matter on a GPU node only."""

from __future__ import annotations

import json

import pytest

from loadtest.gpu import main

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_the_gpu_script_runs_at_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    assert main(["--device", "cpu", "--preset", "tiny", "--levels", "1,2", "--capacity-levels", "1,2", "--sessions", "2",
                 "--max-new-tokens", "24", "--new-tokens", "16", "--slo-ms", "60000", "--max-slots", "4", "--out", str(out)]) == 0
    report = json.loads((out / "gpu.json").read_text())
    assert report["lm"]["batch1_decode_tok_s"] > 0 and 0 < report["lm"]["share_of_roofline"]
    assert report["lm"]["bytes_read_per_token"] < report["lm"]["weight_bytes"]  # the embedding table is not read
    assert set(report["ttfa_ms_by_concurrency"]) == {"1", "2"}
    assert report["capacity"]["steps"] and (out / "load" / "report.html").exists()
