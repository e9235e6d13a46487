"""Style-controlled spoken dialogues: the user types a style instruction ("Please speak slowly.") in front of
a spoken question, and the assistant's interleaved answer is spoken in that style.

Styles and their source (espeak-ng 1.51, checked by running it on this machine):
- Speech rate: `-s` words per minute. "slow" is 100 and "fast" 220 against the assistant's normal 150; the
  same sentence lasts about 2.4 times longer slow than fast.
- Accent: espeak-ng's English voices. Each is a different pronunciation (phoneme set and rules) on the same
  built-in synthetic speaker (only en-029 scales two formants by 2 %), at the assistant's rate and pitch,
  so the decoder's single speaker still applies; only the voice *name* differs from the assistant's:
  British `en-gb`, Scottish `en-gb-scotland`, Caribbean `en-029`, West Midlands `en-gb-x-gbcwmd`.
  Left out because on this data's vocabulary (number words) they sound like voices already here, per
  `espeak-ng --ipa`: `en-gb-x-rp` (= en-gb) and `en-us-nyc` (= en-us but for "four"); `en-gb-x-gbclan`
  (Lancaster) is real and could be added.

What cannot be made here:
- Emotion. espeak-ng has no emotion control (its SSML support is prosody: rate, pitch, volume), its voice
  variants (`en-us+whisper`, `+AnxiousAndy`, ...) are fixed formant/pitch presets of other speakers, and
  flite's voices (`flite -lv`: kal, kal16, awb, awb_time, rms, slt) are different speakers reading neutrally.
  Raising pitch and rate would be a caricature labelled "happy", so no emotion style is made.
- Chinese dialects. espeak-ng has Cantonese (`yue`, hanzi or Jyutping input) next to Mandarin
  (`cmn-latn-pinyin`), but the answers here are English; a Cantonese style needs answers written in
  Cantonese, which this data has none of.

Measuring the effect (rate): ask the LM the same spoken questions once after "slow" and once after "fast"
instructions, count the speech tokens it emits, and take `rate_contrast(slow_counts, fast_counts)` (total
slow / total fast; above 1 means it slows down). Speech tokens come at a fixed rate, so the ratio of token
counts is a ratio of durations; `ground_truth_rate_ratio(examples)` gives the ratio the training data
teaches (the answers' seconds per character of text, slow / fast), the value a perfect LM would reach.

Deterministic: which question gets which style and which question voice is a seeded function of the
recipe; the synthesis is deterministic per text and voice. The data set is fixed by the arithmetic recipe
(the pairs and question voices) together with this recipe, so both hashes name it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from training.data import spoken_arithmetic
from training.data.tts import Voice, espeak

# The decoder has one speaker: every styled answer keeps this voice except for what its style changes.
ASSISTANT_VOICE = spoken_arithmetic.Recipe().voices[0]


@dataclass(frozen=True)
class Style:
    name: str
    instruction: str  # what the user types before speaking
    voice: Voice  # how the answer is spoken in this style


def styles_for(assistant: Voice) -> tuple[Style, ...]:
    """The styles made here, each changing one setting of the `assistant` voice (pass the arithmetic
    recipe's `voices[0]` when it is not the default)."""
    return (
        Style("slow", "Please speak slowly.", replace(assistant, words_per_minute=100)),
        Style("fast", "Please speak quickly.", replace(assistant, words_per_minute=220)),
        Style("british", "Please answer in a British accent.", replace(assistant, name="en-gb")),
        Style("scottish", "Please answer in a Scottish accent.", replace(assistant, name="en-gb-scotland")),
        Style("caribbean", "Please answer in a Caribbean accent.", replace(assistant, name="en-029")),
        Style("west_midlands", "Please answer in a West Midlands accent.", replace(assistant, name="en-gb-x-gbcwmd")),
    )


DEFAULT_STYLES = styles_for(ASSISTANT_VOICE)


@dataclass(frozen=True)
class Recipe:
    styles: tuple[Style, ...] = DEFAULT_STYLES
    seed: int = 0
    # Styled copies of each question, each copy in a different style. Three did not teach the tiny plan's
    # LM the rate either (speech tokens slow / fast 0.99 vs 1.00 with one) and cost accuracy, so one.
    rounds: int = 1

    def __post_init__(self):
        names = [style.name for style in self.styles]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"style names must be present and unique: {names}")
        if not 1 <= self.rounds <= len(names):
            raise ValueError(f"rounds must be 1..{len(names)} (one distinct style per copy), got {self.rounds}")

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StyledExample:
    question: str
    answer: str
    style: str
    instruction: str
    question_voice: Voice
    audio: np.ndarray  # question speech, float32
    sample_rate: int
    answer_audio: np.ndarray  # answer speech in the style
    answer_sample_rate: int


def style_assignment(count: int, recipe: Recipe, question_voices: Sequence[Voice],
                     round_index: int = 0) -> list[tuple[Style, Voice]]:
    """(style, question voice) for each of `count` questions in one round. Questions are ranked by a seeded
    permutation and dealt styles in turn, so styles differ in count by at most one; within a style the
    question voices are dealt in turn too, so no style is heard mostly in one voice. Round r shifts every
    question's style by r, so a question's copies all differ in style."""
    styles = recipe.styles
    ranks = np.empty(count, dtype=int)
    ranks[np.random.default_rng(recipe.seed).permutation(count)] = np.arange(count)
    return [(styles[(rank + round_index) % len(styles)],
             question_voices[(rank // len(styles) + round_index) % len(question_voices)])
            for rank in ranks]


def styled_examples(pairs: list[tuple[str, str]], recipe: Recipe,
                    arithmetic_recipe: spoken_arithmetic.Recipe) -> list[StyledExample]:
    """Each (question, answer) `recipe.rounds` times (round by round, in the order given): the question in
    one of the arithmetic recipe's training voices, the answer in the style assigned in that round."""
    examples = []
    for round_index in range(recipe.rounds):
        assignment = style_assignment(len(pairs), recipe, arithmetic_recipe.voices, round_index)
        for (question, answer), (style, voice) in zip(pairs, assignment):
            audio, rate = espeak(question, voice)
            answer_audio, answer_rate = espeak(answer, style.voice)
            examples.append(StyledExample(question, answer, style.name, style.instruction, voice,
                                          audio, rate, answer_audio, answer_rate))
    return examples


def styled_dialogue_pairs(text_tokenizer, examples: list[StyledExample], question_codes: list[list[int]],
                          answer_codes: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """(prompt, completion) LM ids: the instruction then the spoken question as the user's turn (serving's
    form), the styled answer as the streaming-thoughts turn closed by `<|user|>`. Codes are per example, not
    per answer text: the same text sounds different in each style."""
    from glmvoice.chat_template import Conversation
    from training.data.interleave import assistant_turn

    return [(Conversation(text_tokenizer).add_speech(question, ex.instruction),
             assistant_turn(text_tokenizer, ex.answer, answer))
            for ex, question, answer in zip(examples, question_codes, answer_codes, strict=True)]


def rate_contrast(slow_speech_counts: Sequence[int], fast_speech_counts: Sequence[int]) -> float:
    """Speech tokens emitted after slow instructions / after fast ones, for the same questions."""
    return sum(slow_speech_counts) / sum(fast_speech_counts)


def ground_truth_rate_ratio(examples: list[StyledExample], slow: str = "slow", fast: str = "fast") -> float:
    """The slow / fast duration ratio the data teaches. Slow and fast examples answer different questions,
    so each side is seconds per character of answer text, which removes the texts' different lengths."""
    return _seconds_per_character(examples, slow) / _seconds_per_character(examples, fast)


def _seconds_per_character(examples: list[StyledExample], style: str) -> float:
    chosen = [ex for ex in examples if ex.style == style]
    if not chosen:
        raise ValueError(f"no examples in style {style!r}")
    seconds = sum(len(ex.answer_audio) / ex.answer_sample_rate for ex in chosen)
    return seconds / sum(len(ex.answer) for ex in chosen)
