"""What a checkpoint directory says about itself: `provenance.json` (how it was made) and `metrics.json`
(what evaluation measured, with the eval gate's verdict).

provenance.json fields (the promoter reads exactly these): network, preset, code_version, data_recipe_hash,
parent_checkpoint, seed, steps, created_at. metrics.json: {"network", "metrics": {name: value}, "gate":
bool, "failed": [reasons], "thresholds": {...}, "evaluated_at"}; a checkpoint without it was never evaluated.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PROVENANCE_NAME = "provenance.json"
METRICS_NAME = "metrics.json"
NETWORKS = ("speech_tokenizer", "llm", "speech_decoder")
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Provenance:
    network: str  # one of NETWORKS
    preset: str
    code_version: str
    data_recipe_hash: str
    parent_checkpoint: str | None  # a directory or id it was trained from; None: from scratch
    seed: int
    steps: int
    created_at: str  # ISO 8601, UTC

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"network {self.network!r} not in {NETWORKS}")

    def same_recipe(self, other: Provenance) -> bool:
        """Equal in everything that determines the weights (not in when or by which code it was made)."""
        skip = {"created_at", "code_version"}
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name not in skip)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (weights identity: pinned downloads, the tokenizer codes came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """`git describe` of the working tree when it is a git checkout, else the installed package version."""
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return metadata.version("glmvoice")
    except metadata.PackageNotFoundError:
        return "unknown"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_provenance(network: str, preset: str, data_recipe_hash: str, parent_checkpoint: str | None, seed: int,
                   steps: int) -> Provenance:
    return Provenance(network, preset, code_version(), data_recipe_hash,
                      None if parent_checkpoint is None else str(parent_checkpoint), seed, steps, now())


def write_provenance(directory: str | Path, provenance: Provenance) -> Path:
    path = Path(directory) / PROVENANCE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(provenance), indent=2) + "\n")
    return path


def read_provenance(directory: str | Path) -> Provenance:
    path = Path(directory) / PROVENANCE_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (not a checkpoint made by training/)")
    raw = json.loads(path.read_text())
    names = [f.name for f in fields(Provenance)]
    missing = [n for n in names if n not in raw]
    if missing:
        raise ValueError(f"{path}: missing fields {missing}")
    return Provenance(**{n: raw[n] for n in names})


def write_metrics(directory: str | Path, network: str, metrics: dict, gate: bool, failed: list[str],
                  thresholds: dict) -> Path:
    path = Path(directory) / METRICS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"network": network, "metrics": metrics, "gate": bool(gate), "failed": list(failed),
           "thresholds": thresholds, "evaluated_at": now()}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_metrics(directory: str | Path) -> dict:
    path = Path(directory) / METRICS_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (checkpoint not evaluated)")
    doc = json.loads(path.read_text())
    if not isinstance(doc.get("metrics"), dict) or not isinstance(doc.get("gate"), bool):
        raise ValueError(f"{path}: expected 'metrics' (object) and 'gate' (bool)")
    return doc


def valid_run_id(run_id: str) -> str:
    """A checkpoint / run id, checked before it becomes part of a path or a Kubernetes name (never `..`, `/`)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", run_id):
        raise ValueError(f"run id {run_id!r}: use 1-41 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return run_id

