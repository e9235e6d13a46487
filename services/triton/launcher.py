"""The one way glmvoice starts Triton: Makefile, test fixtures and the Helm chart all come through here.

The server binary and the python backend ship inside the `nvidia-pytriton` wheel. We run that binary
standalone on a classic model repository with explicit model control (PyTriton's own API would hide
the repository API that promotion needs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.tls import TlsFiles


class TritonStartError(RuntimeError):
    """The server exited or did not become ready in time."""


@dataclass(frozen=True)
class TritonSettings:
    model_repository: Path
    # Models loaded at start; explicit model control means nothing else is loaded until asked.
    models: tuple[str, ...] = ()
    address: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    # Where the python backend is assembled; any writable directory.
    backend_directory: Path = field(default_factory=lambda: Path(os.environ.get("TMPDIR", "/tmp")) / "glmvoice-triton-backends")
    log_verbose: int = 0
    exit_timeout_s: int = 5
    # TLS on the gRPC port (services/tls.py's files): served with tls.cert_file; with tls_client_auth, clients
    # must present a certificate tls.ca_file signed (mTLS). The HTTP port stays plaintext: tritonserver has no
    # TLS for it; it carries the kubelet's probes and this launcher's readiness check only.
    tls: TlsFiles = TlsFiles()
    tls_client_auth: bool = False

    def check(self) -> TritonSettings:
        """Fails at start, naming the missing TLS file (the same rules as the orchestrator's port)."""
        self.tls.check().server_credentials(self.tls_client_auth)
        return self

    def command(self, binary: Path) -> list[str]:
        cmd = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_directory}",
            "--model-control-mode=explicit",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.tls.cert_file is not None:
            cmd += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls.cert_file}",
                    f"--grpc-server-key={self.tls.key_file}"]
            if self.tls.ca_file is not None:
                cmd.append(f"--grpc-root-cert={self.tls.ca_file}")
            if self.tls_client_auth:
                cmd.append("--grpc-use-ssl-mutual=true")
        cmd += [f"--load-model={name}" for name in self.models]
        return cmd


def _wheel_root() -> Path:
    try:
        import pytriton  # the wheel that carries the server binary
    except ImportError as exc:
        raise TritonStartError("the Triton server is not installed: pip install 'glmvoice[triton]'") from exc

    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonStartError(f"no tritonserver binary under {root}: is nvidia-pytriton installed?")
    return root


def prepare_backends(directory: Path) -> Path:
    """Assembles `<directory>/python/` from the wheel: backend library, utils, and the stub for our Python."""
    root = _wheel_root()
    python_dir = directory / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, source in sources.items():
        if not source.exists():
            raise TritonStartError(f"the nvidia-pytriton wheel has no {source.relative_to(root)} for Python {version}")
        target = python_dir / name
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)
    return directory


def server_environment() -> dict[str, str]:
    """The environment the python backend stub needs: our libpython first, our interpreter on PATH."""
    env = dict(os.environ)
    # LIBDIR has been seen to come back None when several threads first ask at once; sys.base_prefix/lib
    # is where CPython installs libpython otherwise.
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    libs = [str(_wheel_root().parent.parent / "nvidia_pytriton.libs"), libdir]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    # Debian's own libpython 3.11 would otherwise be found first and the stub fails on RLock internals.
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class TritonServer:
    """A running tritonserver process; a context manager that stops it on exit."""

    def __init__(self, settings: TritonSettings, log_path: Path | None = None):
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.settings.address}:{self.settings.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.address}:{self.settings.http_port}"

    def start(self, ready_timeout_s: float = 120.0, detach: bool = False) -> TritonServer:
        """`detach`: a session (and process group) of its own, so whoever stops it can reach the python
        backend stubs too, which ignore SIGTERM and outlive a server that exits without unloading them."""
        self.settings.check()
        prepare_backends(self.settings.backend_directory)
        binary = _wheel_root() / "bin" / "tritonserver"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.settings.command(binary), env=server_environment(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Over HTTP (plaintext with TLS on too: only the gRPC port serves TLS)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with code {self.process.returncode}{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TritonStartError(f"tritonserver not ready after {timeout_s:.0f} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "; log tail:\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.settings.exit_timeout_s + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
