"""Style-controlled dialogue data: recipe hash, deterministic and balanced assignment, styles that really
change the answer's speech, and the LM pairs' layout."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from glmvoice.models.text_tokenizer import AUDIO_BEGIN
from training.bpe_tokenizer import build_tiny_tokenizer
from training.data import spoken_arithmetic, style
from training.data.tts import espeak, espeak_phonemes

STYLES = {s.name: s for s in style.DEFAULT_STYLES}
ARITHMETIC = spoken_arithmetic.Recipe(max_operand=3)
# Two questions per style: enough for every style and the slow/fast ratio, few enough to synthesize in seconds.
PAIRS = spoken_arithmetic.question_answer_pairs(ARITHMETIC)[0][: 2 * len(style.DEFAULT_STYLES)]


@pytest.fixture(scope="module")
def examples():
    return style.styled_examples(PAIRS, style.Recipe(rounds=1), ARITHMETIC)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), audio_codebook_size=64)


def test_recipe_hash_is_stable_and_follows_every_style_setting():
    recipe = style.Recipe()
    assert recipe.hash() == style.Recipe().hash() and len(recipe.hash()) == 16
    slow = STYLES["slow"]
    changed = [
        replace(slow, instruction="Slowly, please."),
        replace(slow, voice=replace(slow.voice, words_per_minute=90)),
        replace(slow, voice=replace(slow.voice, name="en-gb")),
    ]
    hashes = {style.Recipe(styles=(variant,) + recipe.styles[1:]).hash() for variant in changed}
    assert len(hashes) == len(changed) and recipe.hash() not in hashes
    assert style.Recipe(seed=1).hash() != recipe.hash()


def test_recipe_rejects_duplicate_style_names():
    with pytest.raises(ValueError):
        style.Recipe(styles=(STYLES["slow"], STYLES["slow"]))


def test_answers_keep_the_assistant_voice_but_for_their_style():
    for s in style.DEFAULT_STYLES:
        differences = {field for field in ("name", "words_per_minute", "pitch")
                       if getattr(s.voice, field) != getattr(style.ASSISTANT_VOICE, field)}
        assert len(differences) == 1, s.name
    other = replace(style.ASSISTANT_VOICE, pitch=70)
    assert all(s.voice.pitch == 70 for s in style.styles_for(other))


def test_assignment_is_deterministic_and_balanced():
    recipe, voices = style.Recipe(), ARITHMETIC.voices
    count = 85  # the arithmetic training set's size
    assignment = style.style_assignment(count, recipe, voices)
    assert assignment == style.style_assignment(count, recipe, voices)
    assert assignment != style.style_assignment(count, replace(recipe, seed=1), voices)
    per_style = Counter(s.name for s, _ in assignment)
    assert set(per_style) == set(STYLES) and max(per_style.values()) - min(per_style.values()) <= 1
    for name in STYLES:
        per_voice = Counter(v for s, v in assignment if s.name == name)
        assert max(per_voice.values()) - min(per_voice.values()) <= 1


def test_examples_are_deterministic(examples):
    again = style.styled_examples(PAIRS, style.Recipe(rounds=1), ARITHMETIC)
    def labels(items):
        return [(e.question, e.style, e.question_voice) for e in items]

    assert labels(again) == labels(examples)
    assert all(np.array_equal(a.audio, b.audio) and np.array_equal(a.answer_audio, b.answer_audio)
               for a, b in zip(again, examples))
    assert [(e.question, e.answer) for e in examples] == PAIRS
    assert Counter(e.style for e in examples) == Counter({name: 2 for name in STYLES})
    assert all(e.instruction == STYLES[e.style].instruction for e in examples)


def test_rounds_give_each_question_distinct_styles_and_stay_balanced():
    assignment = [style.style_assignment(len(PAIRS) * 3, style.Recipe(), ARITHMETIC.voices, r) for r in range(3)]
    for i in range(len(PAIRS) * 3):
        assert len({assignment[r][i][0].name for r in range(3)}) == 3
    counts = Counter(s.name for round_ in assignment for s, _ in round_)
    assert max(counts.values()) - min(counts.values()) <= 3
    with pytest.raises(ValueError):
        style.Recipe(rounds=len(STYLES) + 1)


def seconds(audio_and_rate) -> float:
    audio, rate = audio_and_rate
    return len(audio) / rate


def test_slow_answers_last_clearly_longer_than_fast_ones(examples):
    text = "three plus four is seven."
    assert seconds(espeak(text, STYLES["slow"].voice)) > 1.3 * seconds(espeak(text, STYLES["fast"].voice))
    assert style.ground_truth_rate_ratio(examples) > 1.3


def test_accents_change_the_pronunciation_of_the_answer_speech():
    text = "what is two plus zero"
    default, _ = espeak(text, style.ASSISTANT_VOICE)
    default_phonemes = espeak_phonemes(text, style.ASSISTANT_VOICE.name)
    phonemes = {default_phonemes}
    for name in ("british", "scottish", "caribbean", "west_midlands"):
        voice = STYLES[name].voice
        assert not np.array_equal(espeak(text, voice)[0], default), name
        phonemes.add(espeak_phonemes(text, voice.name))
    assert len(phonemes) == 5  # each accent pronounces these number words its own way


def test_rate_contrast_is_slow_over_fast_totals():
    assert style.rate_contrast([30, 50], [20, 20]) == 2.0


def test_dialogue_pairs_put_the_instruction_before_the_speech_and_end_with_user(tok, examples):
    question_codes = [[i, i + 1] for i in range(len(examples))]
    answer_codes = [[32 + i] * 30 for i in range(len(examples))]  # apart from the question codes
    pairs = style.styled_dialogue_pairs(tok, examples, question_codes, answer_codes)
    assert len(pairs) == len(examples)
    for ex, codes, answers, (prompt, completion) in zip(examples, question_codes, answer_codes, pairs):
        text = tok.decode(prompt)
        speech = AUDIO_BEGIN + "".join(f"<|audio_{c}|>" for c in codes)
        assert f"<|user|>\n{ex.instruction}\n{speech}" in text
        assert completion[-1] == tok.token_id("<|user|>")
        assert [i for i in completion if tok.is_audio(i)] == tok.audio_ids(answers)
