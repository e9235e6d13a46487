"""`make up`'s bookkeeping: a second `up` reports the running stack; a stack that is gone is forgotten."""

from __future__ import annotations

import json
import os

from services import local_stack

ADDRESSES = {"gateway": "http://127.0.0.1:1", "realtime": "ws://127.0.0.1:1/v1/realtime", "orchestrator": "127.0.0.1:2",
             "metrics": "http://127.0.0.1:3/metrics", "triton": "127.0.0.1:4", "redis": "127.0.0.1:5"}


def test_second_up_says_already_up_and_prints_the_addresses(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLMVOICE_STACK_FILE", str(tmp_path / "stack" / "stack.json"))
    state = local_stack.state_file()
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({**ADDRESSES, "pids": {"gateway": os.getpid()}}))
    assert local_stack.main(["up", "--checkpoints", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "already up" in out and "ws://127.0.0.1:1/v1/realtime" in out and "127.0.0.1:2" in out
    assert state.exists()


def test_a_dead_stack_is_forgotten(tmp_path, monkeypatch):
    """After a reboot the state file names processes that are gone: `up` starts afresh instead of refusing."""
    monkeypatch.setenv("GLMVOICE_STACK_FILE", str(tmp_path / "stack" / "stack.json"))
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


def test_the_stack_file_is_the_checkouts_from_any_directory_in_it(tmp_path, monkeypatch):
    """`make up` writes build/stack/stack.json at the checkout's root; `glmvoice chat` run from any directory
    of that checkout reads the same file; GLMVOICE_STACK_FILE overrides both."""
    from pathlib import Path

    import glmvoice
    from glmvoice.client import stack_addresses, stack_file

    monkeypatch.delenv("GLMVOICE_STACK_FILE", raising=False)
    checkout = tmp_path / "checkout"
    (checkout / "glmvoice").mkdir(parents=True)
    (checkout / "glmvoice" / "client.py").write_text("")
    (checkout / "pyproject.toml").write_text("[project]\nname = 'glmvoice'\n")
    deep = checkout / "docs" / "notes"
    deep.mkdir(parents=True)
    written = checkout / "build" / "stack" / "stack.json"
    written.parent.mkdir(parents=True)
    written.write_text(json.dumps(ADDRESSES))
    for where in (checkout, deep):
        monkeypatch.chdir(where)
        assert stack_file() == written == local_stack.state_file()
        assert stack_addresses()["realtime"] == ADDRESSES["realtime"]
    # Outside any checkout: the checkout the package was imported from.
    monkeypatch.chdir(tmp_path)
    assert stack_file() == Path(glmvoice.__file__).resolve().parents[1] / "build" / "stack" / "stack.json"
    monkeypatch.setenv("GLMVOICE_STACK_FILE", str(tmp_path / "elsewhere.json"))
    assert stack_file() == tmp_path / "elsewhere.json" and stack_addresses() == {}


def complete_checkpoints(root):
    for name, files in local_stack.KEY_FILES.items():
        (root / name).mkdir(parents=True)
        for wanted in files:
            (root / name / (wanted[0] if isinstance(wanted, tuple) else wanted)).write_bytes(b"x")
    return root


def test_checkpoints_need_every_networks_key_files(tmp_path):
    """A directory that exists but lacks what a loader reads (a README alone, a decoder without flow.pt, an
    LM without its tokenizer) is incomplete; sharded safetensors (the index) count as the weights."""
    root = complete_checkpoints(tmp_path / "ckpt")
    assert local_stack.missing_checkpoint_files(root) == {}
    assert local_stack.ensure_checkpoints(root) == []  # complete: nothing is trained
    (root / "glm-4-voice-decoder" / "flow.pt").unlink()
    (root / "glm-4-voice-9b" / "tokenizer.model").unlink()
    llm = root / "glm-4-voice-9b"
    (llm / "model.safetensors").unlink()
    (llm / "model.safetensors.index.json").write_text("{}")
    tokenizer = root / "glm-4-voice-tokenizer"
    for path in tokenizer.iterdir():
        path.unlink()
    (tokenizer / "README.md").write_text("weights go here")
    assert local_stack.missing_checkpoint_files(root) == {
        "glm-4-voice-tokenizer": ["config.json", "preprocessor_config.json", "model.safetensors or model.safetensors.index.json"],
        "glm-4-voice-9b": ["tokenizer.model"],
        "glm-4-voice-decoder": ["flow.pt"],
    }
    assert list(local_stack.missing_checkpoint_files(tmp_path / "none")) == list(local_stack.KEY_FILES)
