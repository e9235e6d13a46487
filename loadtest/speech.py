"""What the simulated callers say: real LibriVox recordings and espeak-ng questions (English and Mandarin),
as 16 kHz float32 mono, and the wire formats the API takes (`FORMATS`).

The tiny models are trained on spoken arithmetic, so the English questions are in that domain (their replies
have a realistic length); the recordings and Mandarin questions are speech the models never heard.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glmvoice.audio import read_wav, resample

RATE = 16000
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian pocketsphinx-testdata
# name -> (wire encoding, sample rate): telephony mu-law / A-law at 8 kHz, LINEAR16 at 16 and 24 kHz.
FORMATS = {"mulaw8k": ("MULAW", 8000), "alaw8k": ("ALAW", 8000), "pcm16k": ("LINEAR16", 16000), "pcm24k": ("LINEAR16", 24000)}
ENGLISH = ["what is three plus four", "what is two plus five", "what is six plus one", "what is eight plus zero",
           "what is four plus four", "what is one plus seven", "what is five plus three", "what is nine plus two"]
# espeak-ng reads Mandarin from pinyin with tone numbers (voice cmn-latn-pinyin; plain "cmn" reads hanzi poorly).
MANDARIN = ["san1 jia1 si4 deng3 yu2 ji3", "ni3 hao3, jin1 tian1 tian1 qi4 zen3 me yang4"]


@dataclass(frozen=True)
class Utterance:
    name: str
    audio: np.ndarray  # float32, 16 kHz

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


def _espeak(text: str, voice: str) -> np.ndarray:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed: run `make setup`")
    wav = subprocess.run([binary, "-v", voice, "-s", "160", "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = read_wav(wav)
    return resample(samples, rate, RATE).astype(np.float32)


@functools.cache
def librivox() -> tuple[Utterance, ...]:
    paths = sorted(LIBRIVOX.glob("*.wav"))
    if not paths:
        raise RuntimeError(f"no LibriVox clips in {LIBRIVOX}: run `make setup` (Debian pocketsphinx-testdata)")
    clips = []
    for path in paths:
        samples, rate = read_wav(path)
        clips.append(Utterance(f"librivox/{path.stem}", resample(samples, rate, RATE).astype(np.float32)))
    return tuple(clips)


@functools.cache
def questions() -> tuple[Utterance, ...]:
    english = [Utterance(f"en/{text}", _espeak(text, "en-us")) for text in ENGLISH]
    mandarin = [Utterance(f"zh/{text}", _espeak(text, "cmn-latn-pinyin")) for text in MANDARIN]
    return tuple(english + mandarin)


def corpus(kind: str = "mixed") -> tuple[Utterance, ...]:
    """`questions`, `librivox`, or `mixed` (both)."""
    if kind == "questions":
        return questions()
    if kind == "librivox":
        return librivox()
    if kind == "mixed":
        return questions() + librivox()
    raise ValueError(f"speech corpus must be questions, librivox or mixed, got {kind!r}")


def of_length(seconds: float) -> Utterance:
    """Real speech of exactly `seconds`: LibriVox recordings laid end to end and cut."""
    audio = np.concatenate([clip.audio for clip in librivox()])
    n = int(seconds * RATE)
    audio = np.tile(audio, n // len(audio) + 1)[:n]
    return Utterance(f"librivox/{seconds:g}s", audio)
