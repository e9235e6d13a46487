"""A model runner over N tensor-parallel ranks, each a worker process holding a shard of the LM.

`TensorParallelRunner` has ModelRunner's methods, so LLMEngine (scheduler, in-flight batching, prefix
store, cancellation) runs on it unchanged. The engine's process is the driver, not a rank: every step it
sends the same command to all ranks over pipes; the ranks run their shard in lockstep, meeting in
torch.distributed collectives (gloo on CPU, NCCL on CUDA, one GPU per rank), and rank 0 answers with the
gathered logits. A saved prefix is each rank's KV shard, held by the driver (so the store's evictions free it).

A rank that dies (or fails) is noticed while the driver waits for an answer: the step raises `RankFailure`
naming the rank, which the engine turns into an error for every live request; the runner then stays broken
(each later step raises at once) and its other ranks are stopped, instead of waiting in a collective forever.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

POLL_S = 0.05


class RankFailure(RuntimeError):
    """A tensor-parallel rank died or failed: the model cannot run until the runner is rebuilt."""


@dataclass(frozen=True)
class RankSpec:
    checkpoint: str
    world: int
    max_slots: int
    max_seq_len: int
    device: str = "cpu"  # "cpu" (gloo) or "cuda" (NCCL; rank r uses GPU r)
    quantize: str = ""  # as the llm model's `quantization` parameter
    threads: int = 1  # torch threads per rank on CPU
    timeout_s: float = 120.0  # collectives give up after this (a backstop; the driver notices dead ranks first)
    python: str | None = None  # interpreter for the ranks (None: this one's sys.executable)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(spec: RankSpec, rank: int, port: int, conn) -> None:
    """One rank: load its shard, then serve the driver's commands until "stop"."""
    import torch.distributed as dist

    from glmvoice.models import llm_tensor_parallel as tp
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.models.quantize import QuantScheme
    from glmvoice.runtime.model_runner import ModelRunner

    try:
        torch.set_num_threads(spec.threads)
        cuda = spec.device == "cuda"
        device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=spec.world, timeout=timedelta(seconds=spec.timeout_s))
        scheme = QuantScheme.parse(spec.quantize) if spec.quantize else None
        model, _ = load_llm(spec.checkpoint, device=device, quantize=scheme, shard=(rank, spec.world))
        runner = ModelRunner(tp.parallelize(model, rank, spec.world), spec.max_slots, spec.max_seq_len)
        conn.send(("ok", runner.vocab_size * spec.world))
        while True:
            op, args = conn.recv()
            if op == "stop":
                break
            if op == "forward":
                logits = runner.forward(*args)
                conn.send(("ok", logits.cpu() if rank == 0 else None))
            elif op == "save":
                conn.send(("ok", [(k.cpu(), v.cpu()) for k, v in runner.save_prefix(*args)]))
            elif op == "load":
                slot, kv, length = args
                runner.load_prefix(slot, [(k.to(device), v.to(device)) for k, v in kv], length)
                conn.send(("ok", None))
    except Exception as exc:  # the driver reports it for this rank; then this process ends
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class TensorParallelRunner:
    """ModelRunner's interface over `spec.world` rank processes."""

    def __init__(self, spec: RankSpec):
        if spec.device == "cuda" and torch.cuda.device_count() < spec.world:
            raise ValueError(f"{spec.world} ranks need {spec.world} GPUs; {torch.cuda.device_count()} visible")
        self.spec = spec
        self.broken: str | None = None
        context = mp.get_context("spawn")
        if spec.python:
            context.set_executable(spec.python)
        port = _free_port()
        self.conns, self.procs = [], []
        for rank in range(spec.world):
            parent, child = context.Pipe()
            proc = context.Process(target=_rank_main, args=(spec, rank, port, child), name=f"llm-rank-{rank}", daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.vocab_size = self._collect()[0]

    # ---- ModelRunner's interface ----------------------------------------------------------------
    def forward(self, chunks: list[list[int]], starts: list[int], slots: list[int] | None = None) -> torch.Tensor:
        return self._call("forward", (chunks, starts, slots))[0]

    def save_prefix(self, slot: int, length: int) -> list:
        return self._call("save", (slot, length))  # one KV shard per rank

    def load_prefix(self, slot: int, kv: list, length: int) -> None:
        self._check()
        for conn, shard in zip(self.conns, kv):
            self._send(conn, ("load", (slot, shard, length)))
        self._collect()

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop", None))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()

    # ---- driver side ------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.broken:
            raise RankFailure(self.broken)

    def _send(self, conn, message) -> None:
        try:
            conn.send(message)
        except OSError as exc:
            self._fail(f"a tensor-parallel rank's pipe is closed ({exc})")

    def _call(self, op: str, args) -> list:
        self._check()
        for conn in self.conns:
            self._send(conn, (op, args))
        return self._collect()

    def _collect(self) -> list:
        """Every rank's answer, watching that all ranks stay alive while waiting."""
        answers: list = [None] * len(self.conns)
        waiting = set(range(len(self.conns)))
        while waiting:
            for rank in sorted(waiting):
                conn, proc = self.conns[rank], self.procs[rank]
                if conn.poll(POLL_S if rank == min(waiting) else 0):
                    try:
                        status, value = conn.recv()
                    except (EOFError, OSError):
                        status, value = "error", f"exited with code {proc.exitcode}"
                    if status != "ok":
                        # A rank's collective fails when a peer dies: name the dead peer, the cause, first.
                        dead = [r for r, p in enumerate(self.procs) if r != rank and not p.is_alive()]
                        cause = "".join(f"tensor-parallel rank {r} died (exit code {self.procs[r].exitcode}); " for r in dead)
                        self._fail(f"{cause}tensor-parallel rank {rank} failed: {str(value)[:300]}")
                    answers[rank] = value
                    waiting.discard(rank)
                elif not proc.is_alive():
                    self._fail(f"tensor-parallel rank {rank} died (exit code {proc.exitcode})")
        return answers

    def _fail(self, message: str) -> None:
        self.broken = message
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        raise RankFailure(message)

    def __del__(self):
        for proc in getattr(self, "procs", []):
            if proc.is_alive():
                proc.kill()

