"""The whole system on one machine: Redis, Triton (the three models, one process), the orchestrator
and the HTTP gateway.

`python -m services.local_stack up --checkpoints DIR` starts them as background processes on free ports
of 127.0.0.1, trains the tiny checkpoints first where DIR lacks them, prints the addresses and writes them
with the pids to the checkout's build/stack/stack.json (glmvoice.client.stack_file, where `glmvoice chat`
finds them);
`... down` stops them. A second `up` reports the stack that is up.
services.demo and the integration tests use the same pieces in-process (RedisServer, start_triton).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from glmvoice.client import stack_file
from services.orchestrator.settings import CHECKPOINT_DIRS
from services.tls import TlsFiles

MODELS = {"speech_tokenizer": "tokenizer", "llm": "llm", "speech_decoder": "decoder"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process without persistence (`--save '' --appendonly no`); `addr` is host:port.

    `password`: requires AUTH. `tls` (cert_file, key_file, ca_file): serves TLS only, on `port` (the plaintext port
    is 0, as the chart runs it); `tls_auth_clients`: clients must present a certificate `ca_file` signed (mTLS)."""

    def __init__(self, directory: Path, port: int | None = None, password: str = "", tls: TlsFiles | None = None,
                 tls_auth_clients: bool = False):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.password, self.tls, self.tls_auth_clients = password, tls, tls_auth_clients
        self.process: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make setup` (Debian package redis-server)")
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            if self.tls.cert_file is None or self.tls.key_file is None or self.tls.ca_file is None:
                raise ValueError("a TLS Redis needs a certificate, its key and a CA file")
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_file),
                     "--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_file),
                     "--tls-auth-clients", "yes" if self.tls_auth_clients else "no"]
        auth = ["--requirepass", self.password] if self.password else []
        return [binary, "--bind", "127.0.0.1", *ports, *auth, "--save", "", "--appendonly", "no",
                "--dir", str(self.directory)]

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
            if self.tls is not None or self.password:
                return True  # listening; a TLS handshake or AUTH is the test's business
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def start(self, timeout_s: float = 10.0, detach: bool = False) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=detach)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.directory / 'redis.log'}")
            try:
                if self._answers():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# What each network's loader reads (glmvoice.models): a directory without one of these serves nothing, or
# random weights. A tuple is "one of" (single-file or sharded safetensors).
KEY_FILES = {
    "glm-4-voice-tokenizer": ("config.json", "preprocessor_config.json", ("model.safetensors", "model.safetensors.index.json")),
    "glm-4-voice-9b": ("config.json", "tokenizer.model", ("model.safetensors", "model.safetensors.index.json")),
    "glm-4-voice-decoder": ("config.yaml", "flow.pt", "hift.pt"),
}


def missing_checkpoint_files(directory: Path) -> dict[str, list[str]]:
    """Network directory -> the key files it lacks (an absent directory lacks them all); empty when complete."""
    missing = {}
    for name in CHECKPOINT_DIRS.values():
        lacking = []
        for wanted in KEY_FILES[name]:
            options = wanted if isinstance(wanted, tuple) else (wanted,)
            if not any((directory / name / option).is_file() for option in options):
                lacking.append(" or ".join(options))
        if lacking:
            missing[name] = lacking
    return missing


def ensure_checkpoints(directory: Path) -> list[str]:
    """Trains the tiny checkpoints (training.tiny, cached by plan) when DIR lacks a key file of any network,
    so a fresh checkout never serves random weights; returns the networks that were incomplete. Fails when
    training leaves one incomplete."""
    missing = missing_checkpoint_files(directory)
    if missing:
        lacking = "; ".join(f"{name} lacks {', '.join(files)}" for name, files in missing.items())
        print(f"{directory}: {lacking}: training the tiny checkpoints (python -m training.tiny)", file=sys.stderr, flush=True)
        # A subprocess, not an import: services never import training (DESIGN.md "Layers").
        subprocess.run([sys.executable, "-m", "training.tiny", "--out", str(directory)], check=True)
        still = missing_checkpoint_files(directory)
        if still:
            raise RuntimeError(f"{directory} is still incomplete after training: {still}")
    return list(missing)


def build_model_repository(checkpoints: Path, repository: Path) -> Path:
    from services.triton.repository import build_repository

    if repository.exists():
        shutil.rmtree(repository)
    dirs = {model: (checkpoints / CHECKPOINT_DIRS[network]).resolve() for model, network in MODELS.items()}
    return build_repository(repository, dirs, device="auto")


def start_triton(repository: Path, log_path: Path, timeout_s: float = 300.0, detach: bool = False):
    from services.triton.launcher import TritonServer, TritonSettings

    settings = TritonSettings(
        model_repository=repository, models=tuple(MODELS), grpc_port=free_port(), http_port=free_port(),
        metrics_port=free_port(),
    )
    return TritonServer(settings, log_path=log_path).start(ready_timeout_s=timeout_s, detach=detach)


def orchestrator_env(redis_addr: str, triton_addr: str, checkpoints: Path, grpc_port: int, metrics_port: int) -> dict:
    return {
        "BACKEND": "triton", "REDIS_ADDR": redis_addr, "TRITON_SPEECH_TOKENIZER_ADDR": triton_addr,
        "TRITON_LLM_ADDR": triton_addr, "TRITON_SPEECH_DECODER_ADDR": triton_addr,
        "CHECKPOINTS": str(checkpoints.resolve()), "GRPC_PORT": str(grpc_port), "METRICS_PORT": str(metrics_port),
    }


def wait_for_health(addr: str, timeout_s: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"orchestrator at {addr} not SERVING after {timeout_s:.0f} s")


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Polls `url` until it answers 200 (the gateway's /readyz: it is up and its orchestrator SERVING)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
                last = f"HTTP {reply.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s ({last})")


def alive(pid: int) -> bool:
    """The process runs (a zombie nobody reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def process_groups() -> dict[int, list[int]]:
    """Live processes by process group, from /proc (zombies, which hold no memory, are left out)."""
    groups: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            groups.setdefault(int(fields[2]), []).append(int(entry.name))
    return groups


def stack_processes(state: dict) -> dict[str, list[int]]:
    """Every live process of the stack `up` started, by the component whose process group it is in
    (Triton's group holds its python backend stubs)."""
    groups = process_groups()
    return {name: sorted(groups.get(pid, [])) for name, pid in state["pids"].items()}


def state_file() -> Path:
    return stack_file()  # the file `glmvoice chat` reads, whatever directory either runs in


def running() -> dict | None:
    """The stack `up` started, if its processes still run; a stale state file (after a reboot) is removed."""
    if not state_file().exists():
        return None
    state = json.loads(state_file().read_text())
    if all(alive(pid) for pid in state["pids"].values()):
        return state
    down()
    return None


def up(checkpoints: Path, workdir: Path) -> dict:
    built = ensure_checkpoints(checkpoints)
    workdir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(workdir / "redis").start(detach=True)
    repository = build_model_repository(checkpoints, workdir / "model_repository")
    triton = start_triton(repository, workdir / "tritonserver.log", detach=True)
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, **orchestrator_env(redis.addr, triton.grpc_url, checkpoints, port, metrics_port)}
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "services.orchestrator"], env=env, start_new_session=True,
        stdout=open(workdir / "orchestrator.log", "ab"), stderr=subprocess.STDOUT,
    )
    http_port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "services.gateway", "--orchestrator-addr", f"127.0.0.1:{port}",
         "--http-port", str(http_port), "--bind-address", "127.0.0.1"],
        start_new_session=True, stdout=open(workdir / "gateway.log", "ab"), stderr=subprocess.STDOUT,
    )
    state = {
        "pids": {"gateway": gateway.pid, "orchestrator": orchestrator.pid, "triton": triton.process.pid,
                 "redis": redis.process.pid},
        "orchestrator": f"127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        "gateway": f"http://127.0.0.1:{http_port}",
        "realtime": f"ws://127.0.0.1:{http_port}/v1/realtime", "triton": triton.grpc_url,
        "triton_metrics": f"http://127.0.0.1:{triton.settings.metrics_port}/metrics", "redis": redis.addr,
        "trained_missing_checkpoints": built,
    }
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps(state, indent=2))
    wait_for_health(state["orchestrator"], 120)
    wait_for_http(f"{state['gateway']}/readyz", 60, gateway)  # the addresses printed next all answer
    return state


def down(grace_s: float = 20.0) -> dict:
    """SIGTERM to each process, front to back (each drains its streams before what it calls stops), then
    SIGKILL to whatever is left of its process group: every process `up` starts leads a session of its own,
    and Triton's python backend stubs ignore SIGTERM, so a stub a server left behind is reached this way."""
    if not state_file().exists():
        return {"stopped": [], "killed": []}
    state = json.loads(state_file().read_text())
    stopped, killed = [], []
    for name, pid in state["pids"].items():
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(name)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = process_groups().get(pid, [])  # the group of the session `up` made: pgid == the leader's pid
        if left:
            os.killpg(pid, signal.SIGKILL)
            killed.append({name: left})
            deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
            while process_groups().get(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    state_file().unlink()
    return {"stopped": stopped, "killed": killed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.local_stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start Redis, Triton, the orchestrator and the gateway in the background")
    start.add_argument("--checkpoints", type=Path, required=True)
    start.add_argument("--workdir", type=Path, default=None, help="logs, Redis and the model repository "
                       "(default: beside the stack file, the checkout's build/stack)")
    sub.add_parser("down", help="stop what `up` started")
    args = parser.parse_args(argv)
    if args.command == "down":
        print(json.dumps(down(), indent=2))
        return 0
    state = running()
    if state is not None:
        print(f"the stack is already up (`make down` stops it); its addresses are in {state_file()}:")
    else:
        try:
            state = up(args.checkpoints, args.workdir or state_file().parent)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"make up: {exc}", file=sys.stderr)
            return 2
        print(f"the stack is up; its addresses are in {state_file()} (where `glmvoice chat` finds them):")
    for name in ("gateway", "realtime", "orchestrator", "metrics", "triton", "redis"):
        print(f"  {name:<13} {state[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
