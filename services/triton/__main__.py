"""`python -m services.triton`: the container entry point of every Triton deployment.

Replaces itself with tritonserver (exec), so the server receives the pod's signals directly.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.tls import CLIENT_AUTH_ENVIRONMENT, TLS_ENVIRONMENT, TlsFiles, parse_bool
from services.triton.launcher import TritonSettings, _wheel_root, prepare_backends, server_environment


def parse_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> TritonSettings:
    """Flags, and the TLS files from the environment (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE, TLS_CLIENT_AUTH)
    as the chart sets them for every gRPC server."""
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(prog="python -m services.triton", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--models", default="", help="comma-separated models to load at start")
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--backend-directory", type=Path, default=Path("/tmp/glmvoice-triton-backends"))
    parser.add_argument("--log-verbose", type=int, default=0)
    for name, env_name in TLS_ENVIRONMENT.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, default=environ.get(env_name) or None)
    parser.add_argument("--tls-client-auth", type=parse_bool, default=environ.get(CLIENT_AUTH_ENVIRONMENT) or "false")
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
        tls=TlsFiles(args.tls_cert_file, args.tls_key_file, args.tls_ca_file),  # argparse made them Paths
        tls_client_auth=args.tls_client_auth,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv).check()
    prepare_backends(settings.backend_directory)
    command = settings.command(_wheel_root() / "bin" / "tritonserver")
    os.execve(command[0], command, server_environment())


if __name__ == "__main__":
    main()
