"""The demo's evaluation (training.demo_eval) and the committed demo checkpoints (training/checkpoints/demo)."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from training import demo_eval, pipeline
from training.data import spoken_arithmetic

DEMO = Path(__file__).resolve().parents[2] / "training" / "checkpoints" / "demo"


def test_spoken_form_reads_digits_and_signs_as_the_reply_says_them():
    assert demo_eval.spoken_form("2 + 3 = 5.").split() == "two plus three is five .".split()
    assert demo_eval.spoken_form("Nine plus 9 is 18").split() == "Nine plus nine is eighteen".split()
    assert [demo_eval.number_words(n) for n in (0, 19, 20, 42, 99)] == ["zero", "nineteen", "twenty", "forty two", "ninety nine"]
    with pytest.raises(ValueError):
        demo_eval.number_words(100)


def test_reply_wer_counts_words_after_number_normalisation():
    assert demo_eval.reply_wer([("two plus three is five.", "2 + 3 = 5.")]) == 0.0
    # one substitution (six for five) and one deletion (is) in 5 + 5 words
    assert demo_eval.reply_wer([("two plus three is five.", "2 plus 3 6"),
                                ("one plus one is two.", "one plus one is two")]) == pytest.approx(2 / 10)
    assert demo_eval.reply_wer([("one plus one is two.", "")]) == 1.0


def test_questions_are_the_plans_training_questions_in_every_held_out_voice():
    train, unseen = spoken_arithmetic.question_answer_pairs(pipeline.PLANS["demo"].arithmetic)
    picked = demo_eval.questions("demo", "seen", 40)
    assert picked == demo_eval.questions("demo", "seen", 40)  # seeded
    assert len({(q.text, q.voice) for q in picked}) == 40
    assert all((q.text, q.answer) in train for q in picked)
    assert {q.voice for q in picked} == set(demo_eval.HELD_OUT_VOICES)
    assert all((q.text, q.answer) in unseen for q in demo_eval.questions("demo", "unseen", 10))
    every = demo_eval.questions("demo", "seen")
    assert sorted((q.text, q.voice) for q in every) == sorted(
        (question, voice) for question, _ in train for voice in demo_eval.HELD_OUT_VOICES)


def test_the_demo_plan_trains_on_no_held_out_voice():
    """The evaluation asks in flite voices that the demo plan's data never uses (questions or sentences), and
    no plan's data is spoken by piper."""
    plan = pipeline.PLANS["demo"]
    held_out = {voice.partition(":")[2] for voice in demo_eval.HELD_OUT_VOICES}
    assert plan.arithmetic.flite_voices and not held_out & {*plan.corpus.flite_voices, *plan.arithmetic.flite_voices}
    assert "piper" not in repr(pipeline.PLANS)


@pytest.fixture(scope="module")
def demo_checkpoints() -> Path:
    """The committed demo checkpoints with the tokenizer's weights rebuilt (whisper-base + its own tensors)."""
    from training import asr, whisper_init

    whisper_init.restore(DEMO / "glm-4-voice-tokenizer", asr.model_dir() / "model.bin")
    return DEMO


def test_committed_demo_tokenizer_is_what_the_demo_plan_trains(demo_checkpoints):
    """`make train-demo` keeps it (same data, hyperparameters, seed): a change to the plan or its data must
    come with a retrained checkpoint."""
    plan = pipeline.PLANS["demo"]
    assert pipeline.up_to_date("speech_tokenizer", DEMO / "glm-4-voice-tokenizer", plan.preset("speech_tokenizer"), plan)


def test_committed_demo_checkpoints_are_small():
    """At most 20 MB as committed: the tokenizer's rebuilt weights, its evaluation-only ASR head and the
    trainer state are not."""
    rebuilt = {DEMO / "glm-4-voice-tokenizer" / name for name in ("model.safetensors", "asr_head.pt")}
    committed = [f for f in DEMO.rglob("*") if f.is_file() and f not in rebuilt
                 and not any(part.startswith(".") for part in f.relative_to(DEMO).parts)]
    assert (DEMO / "glm-4-voice-tokenizer" / "trained.safetensors") in committed
    assert sum(f.stat().st_size for f in committed) <= 20 * 2**20


def test_committed_demo_lm_and_decoder_are_what_the_demo_plan_trains(demo_checkpoints):
    plan, tokenizer = pipeline.PLANS["demo"], DEMO / "glm-4-voice-tokenizer"
    assert pipeline.up_to_date("speech_decoder", DEMO / "glm-4-voice-decoder", plan.preset("speech_decoder"), plan, tokenizer)
    assert pipeline.up_to_date("llm", DEMO / "glm-4-voice-9b", "tiny", plan, tokenizer)


def make_demo_default(name: str) -> str:
    """A `NAME ?= value` default from the Makefile: the question and voice `make demo` asks with."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    return re.search(rf"^{name} \?= (.+)$", makefile, re.M).group(1).strip()


@pytest.mark.parametrize("voice", [make_demo_default("DEMO_VOICE"), "flite:awb"])
def test_committed_demo_checkpoints_answer_make_demos_question_and_stop(demo_checkpoints, one_torch_thread, voice):
    question = make_demo_default("DEMO_QUESTION")
    answer = {q.text: q.answer for q in demo_eval.questions("demo", "seen")}[question]
    system = demo_eval.DemoSystem(DEMO)
    text, codes, reason = system.reply(*demo_eval.speak(question, voice), max_new_tokens=400)
    assert text.strip() == answer
    assert reason == "stop" and len(codes) > 20
    assert len(system.decoder.decode(codes)) > 0.5 * system.decoder.sample_rate


def test_committed_demo_reply_streamed_is_the_reply_decoded_whole(demo_checkpoints, one_torch_thread):
    """`training.demo_eval --streaming` decodes as the services do (a speech run at a time through a decoder
    stream): the same length and nearly the same waveform as the whole reply decoded at once."""
    from training.data.corpus import flite
    from training.data.interleave import SPEECH_RUN

    system = demo_eval.DemoSystem(DEMO)
    text, codes, _ = system.reply(*flite("what is nine plus seven", "awb"), max_new_tokens=400)
    assert len(codes) > SPEECH_RUN  # more than one push
    whole, streamed = system.reply_audio(codes, streaming=False), system.reply_audio(codes, streaming=True)
    assert len(streamed) == len(whole) and np.corrcoef(whole, streamed)[0, 1] > 0.9
    assert len(system.reply_audio([], streaming=True)) == 0


def test_decoder_can_learn_the_answers_alone(tmp_path):
    from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from tests.unit.test_training_pipeline import PLAN

    tokenizer = load_speech_tokenizer(pipeline.train_speech_tokenizer(tmp_path / "tok", "tiny", PLAN))
    decoder = build_speech_decoder(DecoderConfig.from_name("tiny"), 0)
    answers_only = dataclasses.replace(PLAN, decoder_sentences=False)
    answers = {ex.answer for ex in pipeline.speech_data(PLAN).arithmetic_train}
    assert len(pipeline.decoder_items(decoder, tokenizer, answers_only, held_out=False)) == len(answers)
    assert len(pipeline.decoder_items(decoder, tokenizer, PLAN, held_out=False)) > len(answers)


def test_arithmetic_questions_in_flite_voices_too():
    from training.data.tts import Voice

    recipe = spoken_arithmetic.Recipe(max_operand=1, voices=(Voice("en-us", 150),), flite_voices=("slt",),
                                      held_out_fraction=0.0)
    pairs, _ = spoken_arithmetic.question_answer_pairs(recipe)
    examples = spoken_arithmetic.synthesize(pairs, recipe)
    assert len(examples) == 2 * len(pairs)
    flite_made = [ex for ex in examples if ex.voice == "slt"]
    assert len(flite_made) == len(pairs) and all(ex.sample_rate == 16000 for ex in flite_made)
    espeak_answer = next(ex for ex in examples if ex.voice != "slt" and ex.answer == flite_made[0].answer)
    assert (flite_made[0].answer_audio == espeak_answer.answer_audio).all()  # one reply voice
    assert recipe.hash() != dataclasses.replace(recipe, flite_voices=()).hash()


def test_answers_in_a_flite_voice_are_the_decoders_voice():
    """Recipe.answer_voice: every answer in that flite voice (the demo's: whisper-base hears flite's slt far
    better than espeak-ng), and the decoder's voice is that one."""
    from training.data.tts import Voice

    recipe = spoken_arithmetic.Recipe(max_operand=1, voices=(Voice("en-us", 150), Voice("en-gb", 160)),
                                      held_out_fraction=0.0, answer_voice="slt")
    pairs, _ = spoken_arithmetic.question_answer_pairs(recipe)
    examples = spoken_arithmetic.synthesize(pairs, recipe)
    espeak_answers = spoken_arithmetic.synthesize(pairs, dataclasses.replace(recipe, answer_voice=None))
    assert all(ex.answer_sample_rate == 16000 for ex in examples)  # flite's rate, not espeak-ng's 22.05 kHz
    for ex in examples:
        same = next(o for o in examples if o.answer == ex.answer)
        assert (ex.answer_audio == same.answer_audio).all()
    assert all(ex.answer_sample_rate == 22050 for ex in espeak_answers)
    assert spoken_arithmetic.answer_source(recipe) == "flite:slt"
    assert spoken_arithmetic.answer_source(dataclasses.replace(recipe, answer_voice=None)) == "espeak:en-us:150:50"


def test_speed_perturbed_questions_shift_pitch_and_tempo_together():
    """Plan.lm_question_speeds: a question sped up by f is 1/f as long and every frequency in it f times higher
    (a new speaker for the LM); the answer and its audio are the example's own."""
    rate = 16000
    tone = np.sin(2 * np.pi * 200 * np.arange(rate) / rate).astype(np.float32)
    answer = np.zeros(10, np.float32)
    example = spoken_arithmetic.Example("what is one plus one", "one plus one is two.", "slt", tone, rate, answer, rate)
    faster, slower = spoken_arithmetic.speed_perturbed([example], (1.25, 0.8))

    def peak_hz(audio):
        return np.argmax(np.abs(np.fft.rfft(audio))) * rate / len(audio)

    assert len(faster.audio) == pytest.approx(rate / 1.25, abs=2) and len(slower.audio) == pytest.approx(rate / 0.8, abs=2)
    assert peak_hz(faster.audio) == pytest.approx(250, abs=2) and peak_hz(slower.audio) == pytest.approx(160, abs=2)
    assert (faster.question, faster.answer, faster.sample_rate, faster.answer_audio is answer) == (
        example.question, example.answer, rate, True)
    with pytest.raises(ValueError):
        spoken_arithmetic.speed_perturbed([example], (3.0,))


def test_say_writes_the_question_in_the_voice_asked(tmp_path):
    from glmvoice.audio import read_wav

    wav = tmp_path / "q" / "question.wav"
    assert demo_eval.main(["--say", "what is one plus two", "--voices", "flite:rms", "--wav", str(wav)]) == 0
    audio, rate = read_wav(wav)
    spoken, spoken_rate = demo_eval.speak("what is one plus two", "flite:rms")
    assert rate == spoken_rate and len(audio) == len(spoken)
    assert np.abs(audio - spoken).max() < 1e-3  # 16-bit PCM on disk
    other = demo_eval.speak("what is one plus two", "flite:awb")[0]
    assert len(other) != len(audio) or np.abs(other - audio).max() > 0.1  # the voice named, not another


def test_say_refuses_more_than_one_voice(tmp_path):
    wav = tmp_path / "question.wav"
    with pytest.raises(SystemExit) as refused:
        demo_eval.main(["--say", "what is one plus two", "--voices", "flite:rms,flite:awb", "--wav", str(wav)])
    assert refused.value.code == 2 and not wav.exists()


def test_piper_speaks_the_same_audio_every_run_and_is_a_held_out_voice():
    """Evaluations must be reproducible: piper's default samples prosody inside its graph on every call;
    ours speaks without that noise. demo_eval asks in it by name, as in flite's voices."""
    from training.data.tts import piper

    audio, rate = piper("what is two plus three")
    again, _ = piper("what is two plus three")
    slower, _ = piper("what is two plus three", length_scale=1.2)
    assert rate == 22050 and audio.dtype == np.float32 and np.array_equal(audio, again)
    assert 0.5 * rate < len(audio) < 3 * rate and len(slower) > 1.1 * len(audio)
    assert np.abs(audio).max() > 0.1
    assert np.array_equal(demo_eval.speak("what is two plus three", "piper:joe-us")[0], audio)
    assert demo_eval.speak("what is two plus three", "flite:awb")[1] == 16000
    with pytest.raises(ValueError):
        piper(" ")
    with pytest.raises(ValueError):
        demo_eval.speak("what is two plus three", "espeak:en-us")
