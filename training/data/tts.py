"""Speech from text with the synthesizers installed on the machine (espeak-ng for now).

Output is a mono float32 waveform at the synthesizer's own rate; callers resample.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from glmvoice.audio import read_wav


@dataclass(frozen=True)
class Voice:
    # espeak-ng voice name: "en-us", "en-gb", ...; Mandarin must be "cmn-latn-pinyin" (plain "cmn" reads
    # hanzi poorly), given pinyin with tone numbers.
    name: str = "en-us"
    words_per_minute: int = 160
    pitch: int = 50


def espeak(text: str, voice: Voice = Voice()) -> tuple[np.ndarray, int]:
    """Synthesizes `text`; deterministic for the same text and voice."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed: run `make setup`")
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    command = [binary, "-v", voice.name, "-s", str(voice.words_per_minute), "-p", str(voice.pitch), "--stdout", text]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    return read_wav(wav)
