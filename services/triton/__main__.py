"""`python -m services.triton`: the container entry point of every Triton deployment.

Replaces itself with tritonserver (exec), so the server receives the pod's signals directly.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.triton.launcher import TritonSettings, _wheel_root, prepare_backends, server_environment


def parse_settings(argv: list[str] | None = None) -> TritonSettings:
    parser = argparse.ArgumentParser(prog="python -m services.triton", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--models", default="", help="comma-separated models to load at start")
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--backend-directory", type=Path, default=Path("/tmp/glmvoice-triton-backends"))
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.model_repository.is_dir():
        parser.error(f"--model-repository {args.model_repository} is not a directory")
    return TritonSettings(
        model_repository=args.model_repository,
        models=tuple(m for m in args.models.split(",") if m),
        address=args.address,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        backend_directory=args.backend_directory,
        log_verbose=args.log_verbose,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    prepare_backends(settings.backend_directory)
    command = settings.command(_wheel_root() / "bin" / "tritonserver")
    os.execve(command[0], command, server_environment())


if __name__ == "__main__":
    main()
