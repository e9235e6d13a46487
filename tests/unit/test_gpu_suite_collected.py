"""`make test-gpu` runs `pytest -m gpu`: it must collect the CUDA suite (pytest exits 5 when it collects nothing,
which is how the GPU suite once ran zero tests). Collection only; the tests themselves skip without CUDA."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_test_gpu_collects_the_cuda_suite():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/gpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", done.stdout)
    assert collected and int(collected.group(1)) >= 5, done.stdout[-2000:]
    # Every test of tests/gpu carries the marker (none is left out of make test-gpu).
    assert "deselected" not in done.stdout.splitlines()[-1], done.stdout[-2000:]
