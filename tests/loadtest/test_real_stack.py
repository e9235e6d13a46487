"""The load generator against the real stack (Redis, Triton with the three tiny models, the orchestrator on
the Triton backend, the baseline orchestrator, and the gateway's WebSocket in front of ours): a short bounded
run writes a valid report."""

from __future__ import annotations

import json

import pytest

from loadtest.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_speech_tokenizer_dir, tiny_llm_dir, tiny_speech_decoder_dir):
    directory = tmp_path_factory.mktemp("checkpoints")
    for name, source in (("glm-4-voice-tokenizer", tiny_speech_tokenizer_dir), ("glm-4-voice-9b", tiny_llm_dir),
                         ("glm-4-voice-decoder", tiny_speech_decoder_dir)):
        (directory / name).symlink_to(source)
    return directory


def test_a_bounded_run_against_the_stack_writes_a_valid_report(checkpoints, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["--local", "--ws", "--checkpoints", str(checkpoints), "--backends", "triton,baseline", "--concurrency", "2",
                 "--sessions", "2", "--turns", "2", "--think-s", "0.2", "--max-new-tokens", "24", "--speech", "questions",
                 "--barge-in", "0", "--duration-s", "60", "--no-progress", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in (out / "turns.jsonl").read_text().splitlines()]
    for target in ("ours", "baseline", "ours-ws"):
        mine = [r for r in records if r["target"] == target]
        assert len(mine) == 4 and all(r["status"] == "OK" and r["admitted"] for r in mine)
        assert {r["fmt"] for r in mine} == {"mulaw8k", "alaw8k"}  # sessions take the formats in turn
        assert all(r["ttfa_ms"] > 0 and r["reply_audio_s"] > 0 and r["underrun_ms"] >= 0 for r in mine)
        # The client's TTFA includes the network and the client; the server's cannot exceed it by more than jitter.
        assert all(r["server"]["first_audio_ms"] <= r["ttfa_ms"] + 20 for r in mine)
        assert all(r["server"]["prefill_ms"] > 0 for r in mine)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"ours", "baseline", "ours-ws"}
    assert summary["summary"]["ours"]["all"]["answered"] == 4
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "baseline" in html  # self-contained, both targets
    assert (out / "ttfa_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report:" in capsys.readouterr().out
