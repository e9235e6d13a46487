"""Assembles the Triton model repository that servers load, from the templates in `model_repo/`.

`model_repo/<model>/` (in git) holds `config.pbtxt` and `1/model.py`. A served repository holds, per
model, that config and numbered version directories; each version has its own copy of `model.py` and a
`checkpoint.json` naming the checkpoint directory it serves. Weights stay where training or promotion put
them (the store volume in Kubernetes): a version references them and never copies gigabytes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from glmvoice.runtime.serving import CHECKPOINT_FILE

MODELS = ("speech_tokenizer", "llm", "speech_decoder")
TEMPLATES_ENV = "GLMVOICE_MODEL_REPO_TEMPLATES"
# Where a wheel install puts model_repo/ (pyproject's data-files), relative to the environment's prefix.
INSTALLED_TEMPLATES = Path("share") / "glmvoice" / "model_repo"


def templates_dir() -> Path:
    """The model_repo/ templates: $GLMVOICE_MODEL_REPO_TEMPLATES (the image sets it), else the copy a wheel
    installed under the environment's prefix, else the source checkout this module runs from."""
    candidates = [Path(p) for p in (os.environ.get(TEMPLATES_ENV),) if p]
    candidates += [Path(sys.prefix) / INSTALLED_TEMPLATES, Path(__file__).resolve().parents[2] / "model_repo"]
    for candidate in candidates:
        if (candidate / "llm" / "config.pbtxt").is_file():
            return candidate
    raise FileNotFoundError(f"no model_repo templates in {', '.join(map(str, candidates))} (set {TEMPLATES_ENV})")


def versions(repository: Path, model: str) -> list[int]:
    model_dir = repository / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def add_version(
    repository: Path, model: str, checkpoint: Path, version: int | None = None, device: str = "auto"
) -> int:
    """Writes `<repository>/<model>/<version>/` serving `checkpoint`; returns the version number.

    The version directory is written under a temporary name and renamed into place, so a server that
    scans the repository never sees a half-written version.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint directory {checkpoint} does not exist")
    model_dir = repository / model
    model_dir.mkdir(parents=True, exist_ok=True)
    templates = templates_dir()
    shutil.copy2(templates / model / "config.pbtxt", model_dir / "config.pbtxt")
    version = version or (max(versions(repository, model), default=0) + 1)
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    staging = model_dir / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copy2(templates / model / "1" / "model.py", staging / "model.py")
    (staging / CHECKPOINT_FILE).write_text(json.dumps({"path": str(checkpoint), "device": device}, indent=2))
    staging.rename(final)
    return version


def build_repository(repository: Path, checkpoints: dict[str, Path], device: str = "auto") -> Path:
    """A fresh repository with version 1 of each model in `checkpoints` ({model name: checkpoint dir})."""
    for model, checkpoint in checkpoints.items():
        shutil.rmtree(repository / model, ignore_errors=True)
        add_version(repository, model, checkpoint, version=1, device=device)
    return repository
