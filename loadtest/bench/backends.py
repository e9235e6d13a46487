"""The two ways the orchestrator reaches the networks, built the way the orchestrator builds them: the
in-process backend and the Triton backend (with a Triton server of the three models started here). The
benchmarks that compare the paths (llm_engine, triton_cost) drive both through the same Backend calls."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from glmvoice.models.text_tokenizer import TextTokenizer
from services.local_stack import build_model_repository, start_triton
from services.orchestrator.backends.inprocess import InProcessBackend
from services.orchestrator.backends.triton import TritonBackend
from services.orchestrator.settings import CHECKPOINT_DIRS, Settings

DEFAULT_CHECKPOINTS = Path("build/checkpoints/tiny")


def checkpoint_dirs(checkpoints: Path) -> tuple[Path, Path, Path]:
    return tuple(Path(checkpoints) / CHECKPOINT_DIRS[n] for n in ("tokenizer", "llm", "decoder"))


@asynccontextmanager
async def in_process(checkpoints: Path):
    backend = InProcessBackend(*checkpoint_dirs(checkpoints))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


@asynccontextmanager
async def through_triton(checkpoints: Path, workdir: Path):
    """A Triton server of the three models (one process, python backend) and the orchestrator's client of it."""
    repository = build_model_repository(Path(checkpoints), workdir / "model_repository")
    server = start_triton(repository, workdir / "tritonserver.log")
    llm_dir = checkpoint_dirs(checkpoints)[1]
    addrs = {model: server.grpc_url for model in ("speech_tokenizer", "llm", "speech_decoder")}
    backend = TritonBackend(addrs, TextTokenizer.from_directory(llm_dir), Settings().decoder_block_codes)
    try:
        await backend.start()
        yield backend
    finally:
        await backend.close()
        server.stop()
