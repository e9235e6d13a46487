"""`make up`'s bookkeeping: a second `up` reports the running stack; a stack that is gone is forgotten."""

from __future__ import annotations

import json
import os

from services import local_stack

ADDRESSES = {"gateway": "http://127.0.0.1:1", "realtime": "ws://127.0.0.1:1/v1/realtime", "orchestrator": "127.0.0.1:2",
             "metrics": "http://127.0.0.1:3/metrics", "triton": "127.0.0.1:4", "redis": "127.0.0.1:5"}


def test_second_up_says_already_up_and_prints_the_addresses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    state = local_stack.STATE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({**ADDRESSES, "pids": {"gateway": os.getpid()}}))
    assert local_stack.main(["up", "--checkpoints", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "already up" in out and "ws://127.0.0.1:1/v1/realtime" in out and "127.0.0.1:2" in out
    assert state.exists()


def test_a_dead_stack_is_forgotten(tmp_path, monkeypatch):
    """After a reboot the state file names processes that are gone: `up` starts afresh instead of refusing."""
    monkeypatch.chdir(tmp_path)
    state = local_stack.STATE
    state.parent.mkdir(parents=True)
    dead = 2 ** 22 + 12345  # above the largest pid Linux hands out: no such process
    state.write_text(json.dumps({**ADDRESSES, "pids": {"gateway": dead}}))
    assert local_stack.running() is None and not state.exists()
