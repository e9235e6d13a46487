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
