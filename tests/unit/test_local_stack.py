"""`make up`'s bookkeeping: a second `up` reports the running stack; a stack that is gone is forgotten."""

from __future__ import annotations

import json
import os

from services import local_stack

ADDRESSES = {"gateway": "http://127.0.0.1:1", "realtime": "ws://127.0.0.1:1/v1/realtime", "orchestrator": "127.0.0.1:2",
             "metrics": "http://127.0.0.1:3/metrics", "triton": "127.0.0.1:4", "redis": "127.0.0.1:5"}


def test_second_up_says_already_up_and_prints_the_addresses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    state = local_stack.state_file()
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({**ADDRESSES, "pids": {"gateway": os.getpid()}}))
    assert local_stack.main(["up", "--checkpoints", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "already up" in out and "ws://127.0.0.1:1/v1/realtime" in out and "127.0.0.1:2" in out
    assert state.exists()


def test_a_dead_stack_is_forgotten(tmp_path, monkeypatch):
    """After a reboot the state file names processes that are gone: `up` starts afresh instead of refusing."""
    monkeypatch.chdir(tmp_path)
    state = local_stack.state_file()
    state.parent.mkdir(parents=True)
    dead = 2 ** 22 + 12345  # above the largest pid Linux hands out: no such process
    state.write_text(json.dumps({**ADDRESSES, "pids": {"gateway": dead}}))
    assert local_stack.running() is None and not state.exists()


def test_down_kills_what_ignores_sigterm_in_a_group(tmp_path, monkeypatch):
    """A child that ignores SIGTERM (as Triton's python stubs do) outlives its leader: `down` SIGKILLs it."""
    import subprocess
    import time

    monkeypatch.setenv("GLMVOICE_STACK_FILE", str(tmp_path / "stack.json"))
    leader = subprocess.Popen(["sh", "-c", "sh -c 'trap \"\" TERM; sleep 60' & exec sleep 60"], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(local_stack.process_groups().get(leader.pid, [])) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)  # the leader, the shell ignoring SIGTERM and its sleep (which inherits that)
    children = [pid for pid in local_stack.process_groups()[leader.pid] if pid != leader.pid]
    local_stack.state_file().write_text(json.dumps({"pids": {"triton": leader.pid}}))
    result = local_stack.down(grace_s=2)
    leader.wait(5)
    assert result["killed"] == [{"triton": children}] and len(children) == 2
    assert not any(local_stack.alive(pid) for pid in children)
