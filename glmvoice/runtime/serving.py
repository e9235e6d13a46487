"""What every Triton adapter needs from its version directory: which checkpoint, on which device.

Kept here rather than in the adapters so `model_repo/*/1/model.py` stay thin and identical in shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only in the functions that run models: services.triton.repository imports this module
    import torch

CHECKPOINT_FILE = "checkpoint.json"


def read_version(version_dir: str | Path) -> dict:
    """{"path": checkpoint dir (resolved), "device": "auto" | "cpu" | "cuda"} from `<version>/checkpoint.json`."""
    version_dir = Path(version_dir)
    spec_file = version_dir / CHECKPOINT_FILE
    if not spec_file.exists():
        raise FileNotFoundError(f"{version_dir}: no {CHECKPOINT_FILE}; build versions with services.triton.repository")
    spec = json.loads(spec_file.read_text())
    path = Path(spec["path"])
    if not path.is_absolute():
        path = version_dir / path
    if not path.is_dir():
        raise FileNotFoundError(f"{version_dir}: checkpoint {path} does not exist")
    return {**spec, "path": path}


def triton_device(requested: str, instance_kind: str, device_id: str | int) -> torch.device:
    """The device of one model instance: a GPU instance gets its own card, a CPU instance the CPU."""
    import torch

    if requested == "cpu" or (requested == "auto" and (instance_kind != "GPU" or not torch.cuda.is_available())):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("checkpoint.json asks for cuda, but this Triton instance sees no GPU")
    return torch.device(f"cuda:{int(device_id)}")


def version_dir_from_args(args: dict) -> Path:
    """Triton's initialize() args → this version's directory."""
    return Path(args["model_repository"]) / str(args["model_version"])


def model_parameters(model_config: dict) -> dict[str, str]:
    """config.pbtxt `parameters` as a plain {key: string value} dict."""
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def apply_cpu_threads(device: torch.device, threads: int) -> None:
    """Each Triton instance is its own process; on a shared CPU, fewer torch threads per instance avoid
    oversubscription. 0 keeps torch's default."""
    import torch

    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)


def triton_error(pb_utils, exc: Exception):
    """A per-request TritonError with the status the client should see, as llm_contract maps it: bad
    input INVALID_ARGUMENT, a full engine RESOURCE_EXHAUSTED (retry later), anything else INTERNAL. The
    status leads the message, because a decoupled stream delivers the message only."""
    from glmvoice.runtime.llm_contract import ERROR_TRITON_CODES, tag_error

    status, message = tag_error(exc)
    return pb_utils.TritonError(message, getattr(pb_utils.TritonError, ERROR_TRITON_CODES[status]))


class RequestInputs:
    """One Triton request's inputs as flat numpy arrays or Python scalars (absent optional inputs: default)."""

    def __init__(self, pb_utils, request):
        self._pb_utils, self._request = pb_utils, request

    def array(self, name: str):
        tensor = self._pb_utils.get_input_tensor_by_name(self._request, name)
        return None if tensor is None else tensor.as_numpy().reshape(-1)

    def scalar(self, name: str, default=None):
        values = self.array(name)
        if values is None:
            return default
        value = values[0]
        return value if isinstance(value, bytes) else value.item()  # TYPE_STRING arrives as plain bytes


def pbtxt_parameters(config_pbtxt: str | Path) -> dict[str, str]:
    """A config.pbtxt's `parameters` read outside Triton, with Triton's own ModelConfig message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(Path(config_pbtxt).read_text(), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


# Set on the Triton llm pods by the chart (triton.models.llm.quantization); wins over the repository's
# config.pbtxt, which is shared by every pod and promotion.
QUANTIZATION_ENV = "GLMVOICE_LLM_QUANTIZATION"
TENSOR_PARALLEL_ENV = "GLMVOICE_LLM_TENSOR_PARALLEL"  # likewise for the `tensor_parallel` parameter


def llm_quantization(parameters: dict[str, str], environ: dict[str, str] | None = None):
    """The weight-only scheme the `llm` model loads with: the pod's GLMVOICE_LLM_QUANTIZATION if set, else
    the `quantization` parameter: "" (the checkpoint as stored), "int8", "int4" or "int4-g<N>". A
    checkpoint written by `glmvoice quantize` loads quantized either way (a different scheme is an error)."""
    from glmvoice.models.quantize import QuantScheme

    text = (environ or {}).get(QUANTIZATION_ENV) or parameters.get("quantization", "")
    return QuantScheme.parse(text) if text else None


def load_engine_model(path: Path, device: torch.device, parameters: dict[str, str], environ: dict[str, str] | None = None):
    """-> (what LLMEngine drives, TextTokenizer) for the `llm` model's parameters: the model in this process,
    or with `tensor_parallel` N > 1 a TensorParallelRunner over N rank processes (one GPU each on a GPU
    instance, gloo ranks on CPU), each holding 1/N of the weights."""
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.models.text_tokenizer import TextTokenizer

    quantize = llm_quantization(parameters, environ)
    world = int((environ or {}).get(TENSOR_PARALLEL_ENV) or parameters.get("tensor_parallel", "1"))
    if world <= 1:
        return load_llm(path, device=device, quantize=quantize)
    import shutil

    from glmvoice.runtime.tensor_parallel import RankSpec, TensorParallelRunner

    config = engine_config(parameters)
    spec = RankSpec(
        str(path), world, config.max_slots, config.max_seq_len, device=device.type,
        quantize=(environ or {}).get(QUANTIZATION_ENV) or parameters.get("quantization", ""),
        threads=int(parameters.get("cpu_threads", "1")) or 1,
        # Ranks are spawned interpreters: inside Triton this process is the backend stub, not python.
        python=shutil.which("python3") or shutil.which("python"),
    )
    return TensorParallelRunner(spec), TextTokenizer.from_directory(path)


def engine_config(parameters: dict[str, str]):
    """The LM engine's settings from the `llm` model's parameters (others, e.g. cpu_threads, are ignored),
    so Triton and the in-process backend run the engine alike."""
    from glmvoice.runtime.llm_engine import EngineConfig

    return EngineConfig(**{k: int(v) for k, v in parameters.items() if k in EngineConfig.__dataclass_fields__})
