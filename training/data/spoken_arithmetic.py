"""A small spoken task with checkable answers: "what is three plus four?" → "three plus four is seven."

Questions and answers are spoken by espeak-ng in several voices and speeds. Two held-out sets: questions
never heard in training (does the LM add, or only remember?), and the training questions in a voice never
heard in training (does it understand new speech of its closed question set?). Deterministic: the recipe
(and its hash) fixes it all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import numpy as np

from training.data.tts import Voice, espeak

NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen".split()


@dataclass(frozen=True)
class Recipe:
    max_operand: int = 9
    voices: tuple[Voice, ...] = (Voice("en-us", 150), Voice("en-us", 175), Voice("en-gb", 160))
    held_out_voices: tuple[Voice, ...] = (Voice("en-us", 160, pitch=70),)
    flite_voices: tuple[str, ...] = ()  # more training voices, from flite (`flite -lv`); needs Debian's flite
    # The assistant's voice: a flite voice's name, or None for voices[0] (espeak-ng).
    answer_voice: str | None = None
    held_out_fraction: float = 0.15
    seed: int = 0

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    voice: Voice | str  # an espeak-ng voice, or a flite voice's name
    audio: np.ndarray  # question speech, float32
    sample_rate: int
    answer_audio: np.ndarray
    answer_sample_rate: int


def question_answer_pairs(recipe: Recipe) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) lists of (question, answer) text."""
    pairs = []
    for a in range(recipe.max_operand + 1):
        for b in range(recipe.max_operand + 1):
            pairs.append((f"what is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}", f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}."))
    order = np.random.default_rng(recipe.seed).permutation(len(pairs))
    held = int(round(len(pairs) * recipe.held_out_fraction))
    return [pairs[i] for i in order[held:]], [pairs[i] for i in order[:held]]


def synthesize(pairs: list[tuple[str, str]], recipe: Recipe, voices: tuple[Voice, ...] | None = None) -> list[Example]:
    """Each question in each voice (default: the training voices, flite's included), each answer in the
    assistant's voice."""
    from training.data.corpus import flite

    examples = []
    for question, answer in pairs:
        for voice in recipe.voices + recipe.flite_voices if voices is None else voices:
            audio, rate = flite(question, voice) if isinstance(voice, str) else espeak(question, voice)
            # The assistant always answers in one voice: the decoder has one (zero x-vector) speaker.
            answer_audio, answer_rate = answer_speech(answer, recipe)
            examples.append(Example(question, answer, voice, audio, rate, answer_audio, answer_rate))
    return examples


def speed_perturbed(examples: list[Example], factors: tuple[float, ...]) -> list[Example]:
    """Each example's question once per factor, played that much faster (resampled: pitch, formants and tempo
    all shift, as a shorter or longer vocal tract and a faster or slower talker would; Ko et al. 2015, "Audio
    augmentation for speech recognition"). New speakers for the LM from the voices it has."""
    from glmvoice.audio import resample

    if any(not 0.5 <= f <= 2.0 for f in factors):
        raise ValueError(f"speed factors must lie in 0.5..2.0, got {factors}")
    return [replace(ex, audio=resample(ex.audio, int(round(ex.sample_rate * f)), ex.sample_rate))
            for f in factors for ex in examples]


def answer_speech(answer: str, recipe: Recipe) -> tuple[np.ndarray, int]:
    from training.data.corpus import flite

    return espeak(answer, recipe.voices[0]) if recipe.answer_voice is None else flite(answer, recipe.answer_voice)


def answer_source(recipe: Recipe) -> str:
    """The assistant's voice as corpus.Utterance.source names it."""
    from training.data.corpus import utterance_source

    return utterance_source(recipe.voices[0]) if recipe.answer_voice is None else f"flite:{recipe.answer_voice}"


def dialogue_pairs(text_tokenizer, examples: list[Example], question_codes: list[list[int]],
                   answer_codes: dict[str, list[int]]) -> list[tuple[list[int], list[int]]]:
    """(prompt, completion) LM ids in the streaming-thoughts template: the spoken question as the user's speech
    turn, the answer as interleaved text and speech ids closed by `<|user|>`."""
    from glmvoice.chat_template import Conversation
    from training.data.interleave import assistant_turn

    return [(Conversation(text_tokenizer).add_speech(codes), assistant_turn(text_tokenizer, ex.answer, answer_codes[ex.answer]))
            for ex, codes in zip(examples, question_codes)]
