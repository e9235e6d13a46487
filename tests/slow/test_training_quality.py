"""Training quality (slow: minutes on two cores): `python -m training.tiny` end to end, its figures printed.

Run with `make test-slow` or `pytest -m slow tests/slow -s`. The gate thresholds (training/eval_gate.yaml,
tiny) are floors that catch a broken trainer; the figures themselves are printed for the report.
"""

import json

import pytest

from glmvoice.provenance import read_metrics, read_provenance
from training import asr, tiny

pytestmark = pytest.mark.slow


def test_tiny_checkpoints_train_evaluate_and_cache(tmp_path, capsys):
    out = tmp_path / "tiny"
    report = tiny.build(out, "tiny", evaluate=True, asr=asr.available())
    with capsys.disabled():
        print(json.dumps({k: v for k, v in report["metrics"].items()}, indent=2, default=str))
    for network, directory in report["checkpoints"].items():
        metrics = read_metrics(directory)
        assert metrics["gate"], (network, metrics["failed"])
        assert read_provenance(directory).network == network
    llm = report["metrics"]["llm"]
    assert llm["held_out_loss"] < 3.0
    first = {n: read_provenance(d).created_at for n, d in report["checkpoints"].items()}
    again = tiny.build(out, "tiny", evaluate=False, asr=False)
    assert {n: read_provenance(d).created_at for n, d in again["checkpoints"].items()} == first  # cached
