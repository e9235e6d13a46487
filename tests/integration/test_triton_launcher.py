"""The launcher as deployments use it: `python -m services.triton`, one network per Triton process."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.fixtures.servers import free_port

pytestmark = pytest.mark.integration


def wait_ready(http_port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"launcher exited with {process.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError("Triton did not become ready")


def test_the_container_entry_point_serves_one_network_of_the_repository(model_repository, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "services.triton", "--model-repository", str(model_repository),
        "--models", "speech_decoder", "--address", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--metrics-port", str(free_port()), "--backend-directory", str(tmp_path / "backends"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(http_port, process)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_model_ready("speech_decoder")
        # Explicit model control: this process serves its own network and loads nothing else.
        assert not client.is_model_ready("llm") and not client.is_model_ready("speech_tokenizer")
        inputs = [grpcclient.InferInput("input_ids", [3], "INT64")]
        inputs[0].set_data_from_numpy(np.array([1, 2, 3], np.int64))
        with pytest.raises(InferenceServerException, match="llm"):
            client.infer("llm", inputs)
    finally:
        process.terminate()
        process.wait(timeout=30)
    # The launcher exec'd tritonserver: the signal reached the server itself, which exited cleanly.
    assert process.returncode == 0


def test_a_missing_repository_fails_at_start_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "services.triton", "--model-repository", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "is not a directory" in result.stderr
