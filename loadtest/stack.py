"""A local system to load: Redis, Triton (the three models) and one orchestrator process per backend
(triton = the product, inprocess, baseline = the official-style runtime), plus the gateway when asked.

Built from services.local_stack's pieces (the same ones `make up` uses); everything runs on free ports of
127.0.0.1 and stops when the context ends. Orchestrators run with one torch thread, as each Triton model
instance does (cpu_threads 1 in model_repo/*/config.pbtxt), so the backends compare on equal terms. Per-key
quotas are lifted (the generator's callers share one key); against a deployment, pass a key sized for the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from services.local_stack import (
    RedisServer,
    build_model_repository,
    ensure_checkpoints,
    free_port,
    orchestrator_env,
    start_triton,
    wait_for_health,
)

BACKENDS = ("triton", "inprocess", "baseline")
TARGET_NAMES = {"triton": "ours", "inprocess": "ours-inprocess", "baseline": "baseline"}


class LocalStack:
    def __init__(self, checkpoints: Path, workdir: Path, backends=("triton", "baseline"), gateway: bool = False,
                 max_streams: int = 128):
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
        self.checkpoints, self.workdir = Path(checkpoints), Path(workdir)
        self.backends, self.gateway, self.max_streams = tuple(backends), gateway, max_streams
        self.addrs: dict[str, str] = {}  # target name -> address
        self.exits = ExitStack()

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.exits.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.exits.close()

    def _spawn(self, name: str, command: list[str], env: dict) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)

        def stop():
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()

        self.exits.callback(stop)
        return process

    def _start(self) -> None:
        ensure_checkpoints(self.checkpoints)
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis = RedisServer(self.workdir / "redis").start()
        self.exits.callback(redis.stop)
        triton_url = ""
        if "triton" in self.backends:
            repository = build_model_repository(self.checkpoints, self.workdir / "model_repository")
            triton = start_triton(repository, self.workdir / "tritonserver.log")
            self.exits.callback(triton.stop)
            triton_url = triton.grpc_url
        started = []
        for backend in self.backends:
            port = free_port()
            env = orchestrator_env(redis.addr, triton_url, self.checkpoints, port, 0)
            env.update(BACKEND=backend, MAX_STREAMS=str(self.max_streams), OMP_NUM_THREADS="1", LOG_LEVEL="WARNING",
                       # One load generator is many callers under one (anonymous) key: per-key quotas lifted.
                       QUOTA_STREAMS=str(self.max_streams), QUOTA_SESSIONS_PER_MINUTE="1000000",
                       QUOTA_AUDIO_S_PER_MINUTE="1000000000")
            self._spawn(f"orchestrator-{backend}", [sys.executable, "-m", "services.orchestrator"], env)
            started.append((backend, f"127.0.0.1:{port}"))
        for backend, addr in started:
            wait_for_health(addr, 300)
            self.addrs[TARGET_NAMES[backend]] = addr
        if self.gateway:
            front = self.addrs.get("ours") or next(iter(self.addrs.values()))
            http_port = free_port()
            self._spawn("gateway", [sys.executable, "-m", "services.gateway", "--orchestrator-addr", front,
                                    "--http-port", str(http_port), "--bind-address", "127.0.0.1"], {})
            self._wait_http(http_port)
            self.addrs["ours-ws"] = f"ws://127.0.0.1:{http_port}/v1/realtime"

    def _wait_http(self, port: int, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gateway on port {port} not ready after {timeout_s:.0f} s; see {self.workdir}/gateway.log")
