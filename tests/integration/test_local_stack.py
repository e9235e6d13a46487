"""`make up` / `make down` (services.local_stack) as a user runs them: after `down`, no process of the stack
is left, Triton's python backend stubs included, even with a reply abandoned mid-stream and one in flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pytest

from glmvoice.client import config_request
from glmvoice.v1 import voice_chat_pb2 as pb
from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatStub
from services.local_stack import alive, stack_processes

pytestmark = pytest.mark.integration


@pytest.fixture
def checkpoints(tmp_path, tiny_speech_tokenizer_dir, tiny_llm_dir, tiny_speech_decoder_dir):
    root = tmp_path / "checkpoints"
    root.mkdir()
    for name, source in (("glm-4-voice-tokenizer", tiny_speech_tokenizer_dir), ("glm-4-voice-9b", tiny_llm_dir),
                         ("glm-4-voice-decoder", tiny_speech_decoder_dir)):
        (root / name).symlink_to(source)
    return root


def local_stack(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.local_stack", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def long_reply(address: str) -> grpc.Future:
    """A text turn asking for a long reply; the caller reads as much of it as it wants."""
    config = config_request("LINEAR16", 16000, "LINEAR16", 16000, max_new_tokens=2000, temperature=0.0, seed=7)
    channel = grpc.insecure_channel(address)
    call = VoiceChatStub(channel).Converse(iter([config, pb.ConverseRequest(text=pb.TextTurn(text="hello"))]),
                                           timeout=120)
    return channel, call


def test_down_leaves_no_process_with_turns_abandoned_and_in_flight(tmp_path, checkpoints):
    env = {**os.environ, "GLMVOICE_STACK_FILE": str(tmp_path / "stack.json"), "OMP_NUM_THREADS": "1"}
    started = local_stack("up", "--checkpoints", str(checkpoints), "--workdir", str(tmp_path / "stack"), env=env)
    assert started.returncode == 0, started.stderr + started.stdout
    state = json.loads((tmp_path / "stack.json").read_text())
    try:
        processes = stack_processes(state)
        stubs = [pid for pid in processes["triton"] if pid != state["pids"]["triton"]]
        assert stubs, f"no python backend stub found in Triton's process group: {processes}"
        # One reply abandoned after its first message (the client drops the stream), one left in flight.
        abandoned_channel, abandoned = long_reply(state["orchestrator"])
        next(abandoned)
        abandoned.cancel()
        abandoned_channel.close()
        channel, in_flight = long_reply(state["orchestrator"])
        next(in_flight)
    finally:
        began = time.monotonic()
        stopped = local_stack("down", env=env)
    took = time.monotonic() - began
    channel.close()
    assert stopped.returncode == 0, stopped.stderr
    everything = [pid for pids in processes.values() for pid in pids]
    left = [pid for pid in everything if alive(pid)]
    assert not left, f"`down` left {left} of {processes}; down said {stopped.stdout}"
    print(f"\ndown stopped {len(everything)} processes ({len(stubs)} python stubs) in {took:.1f} s: {stopped.stdout}")
