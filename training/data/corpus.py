"""Speech-text pairs for the tokenizer and decoder: synthesized sentences and recorded LibriVox clips.

Sources: training/data/sentences_en.txt spoken by espeak-ng in several voices (and flite voices when the
recipe names them), plus the LibriVox clips of Debian's pocketsphinx-testdata; with `mandarin`, the bilingual
pairs of sentences_zh.txt spoken by espeak-ng's pinyin voice (the English side is the translation, for
speech-text pairs in both languages). The split is by sentence:
the last `held_out` sentences of the file and the last LibriVox clip are never trained on. Deterministic:
the recipe, the sentence file and the synthesizers' versions fix every sample; `Recipe.hash()` covers the
first two.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from glmvoice.audio import read_wav
from training.data.tts import Voice, espeak

SENTENCES = Path(__file__).with_name("sentences_en.txt")
SENTENCES_ZH = Path(__file__).with_name("sentences_zh.txt")
MANDARIN_VOICE = Voice("cmn-latn-pinyin", 150)  # espeak-ng reads pinyin with tone numbers; plain "cmn" reads hanzi poorly
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
CHARACTERS = " abcdefghijklmnopqrstuvwxyz'"  # CTC targets; index 0 is the blank, so character i is id i + 1


@dataclass(frozen=True)
class Utterance:
    text: str
    audio: np.ndarray  # mono float32
    sample_rate: int
    source: str  # "espeak:<voice>:<wpm>", "flite:<voice>", "librivox:<id>", "arithmetic:..."


@dataclass(frozen=True)
class Recipe:
    voices: tuple[Voice, ...] = (Voice("en-us", 150), Voice("en-gb", 170), Voice("en-us", 130, pitch=35))
    flite_voices: tuple[str, ...] = ()  # e.g. ("slt", "kal"); needs Debian's flite
    held_out: int = 8
    librivox: bool = True
    mandarin: bool = False  # add Mandarin speech (espeak-ng pinyin) transcribed in toneless pinyin

    def hash(self) -> str:
        files = (SENTENCES, SENTENCES_ZH) if self.mandarin else (SENTENCES,)
        doc = {"recipe": asdict(self), "sentences": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def normalize_text(text: str) -> str:
    """Lower case, letters, apostrophes and single spaces: what the CTC head spells and WER compares."""
    text = re.sub(r"[^a-z' ]+", " ", text.lower())
    return " ".join(text.split())


def encode_chars(text: str) -> list[int]:
    return [CHARACTERS.index(c) + 1 for c in normalize_text(text)]


def decode_chars(ids) -> str:
    return "".join(CHARACTERS[i - 1] for i in ids if 0 < i <= len(CHARACTERS))


def sentences() -> list[str]:
    return [line.strip() for line in SENTENCES.read_text().splitlines() if line.strip() and not line.startswith("#")]


def flite(text: str, voice: str) -> tuple[np.ndarray, int]:
    binary = shutil.which("flite")
    if binary is None:
        raise RuntimeError("flite is not installed: run `make setup`")
    wav = subprocess.run([binary, "-voice", voice, "-t", text, "-o", "/dev/stdout"], check=True, capture_output=True).stdout
    return read_wav(wav)


def librivox_clips() -> list[tuple[Path, str]]:
    if not LIBRIVOX_DIR.is_dir():
        raise FileNotFoundError(f"{LIBRIVOX_DIR} is missing: run `make setup` (installs pocketsphinx-testdata)")
    clips = []
    for line in (LIBRIVOX_DIR / "transcription").read_text().splitlines():
        words, file_id = line.rsplit("(", 1)
        clips.append((LIBRIVOX_DIR / f"{file_id.rstrip(')').strip()}.wav", words.replace("<s>", "").replace("</s>", "").strip()))
    return clips


def utterance_source(voice: Voice) -> str:
    return f"espeak:{voice.name}:{voice.words_per_minute}:{voice.pitch}"


def speak(text: str, recipe: Recipe) -> list[Utterance]:
    out = []
    for voice in recipe.voices:
        audio, rate = espeak(text, voice)
        out.append(Utterance(text, audio, rate, utterance_source(voice)))
    for name in recipe.flite_voices:
        audio, rate = flite(text, name)
        out.append(Utterance(text, audio, rate, f"flite:{name}"))
    return out


@dataclass(frozen=True)
class BilingualPair:
    pinyin: str
    hanzi: str
    english: str


def bilingual_pairs() -> list[BilingualPair]:
    rows = [line.split("|") for line in SENTENCES_ZH.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [BilingualPair(*(part.strip() for part in row)) for row in rows]


def mandarin_corpus(held_out: int = 3) -> tuple[list[Utterance], list[Utterance]]:
    """(train, held-out) Mandarin utterances; their text is the pinyin (tone numbers drop out in normalize_text)."""
    pairs = bilingual_pairs()
    utterances = []
    for pair in pairs:
        audio, rate = espeak(pair.pinyin, MANDARIN_VOICE)
        utterances.append(Utterance(pair.pinyin, audio, rate, f"espeak:{MANDARIN_VOICE.name}:{MANDARIN_VOICE.words_per_minute}"))
    return utterances[: len(pairs) - held_out], utterances[len(pairs) - held_out:]


def english_corpus(recipe: Recipe) -> tuple[list[Utterance], list[Utterance]]:
    """(train, held-out) utterances (Mandarin ones too when the recipe asks for them)."""
    lines = sentences()
    cut = len(lines) - recipe.held_out
    train = [u for text in lines[:cut] for u in speak(text, recipe)]
    held = [u for text in lines[cut:] for u in speak(text, recipe)]
    if recipe.librivox:
        clips = librivox_clips()
        for i, (path, text) in enumerate(clips):
            audio, rate = read_wav(path)
            (held if i == len(clips) - 1 else train).append(Utterance(text, audio, rate, f"librivox:{path.stem}"))
    if recipe.mandarin:
        zh_train, zh_held = mandarin_corpus()
        train, held = train + zh_train, held + zh_held
    return train, held
