"""The pipeline on a minimal plan: a published-layout checkpoint with provenance, recipe and loss curve, skipped
when up to date and retrained when the plan changes; evaluation writes metrics.json with the gate's verdict."""

import dataclasses
import json

import pytest

from glmvoice.provenance import read_metrics, read_provenance
from training import pipeline
from training.data import corpus, spoken_arithmetic
from training.data.tts import Voice
from training.train_llm import LMTrainConfig
from training.train_tokenizer import TokenizerTrainConfig

VOICE = Voice("en-us", 150)
PLAN = pipeline.Plan(
    corpus=corpus.Recipe(voices=(VOICE,), held_out=2, librivox=False),
    arithmetic=spoken_arithmetic.Recipe(max_operand=2, voices=(VOICE,), held_out_fraction=0.25),
    tokenizer=TokenizerTrainConfig(steps=3, batch_size=4, warmup_steps=1),
    lm_pretrain=LMTrainConfig(steps=2, batch_size=4, warmup_steps=1),
    lm_pretrain_documents=6,
    lm=LMTrainConfig(steps=3, batch_size=4, warmup_steps=1),
)


def test_tokenizer_checkpoint_carries_provenance_and_is_cached(tmp_path):
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from training.evaluate import evaluate_checkpoint

    out = tmp_path / "glm-4-voice-tokenizer"
    pipeline.train_speech_tokenizer(out, "tiny", PLAN)
    prov = read_provenance(out)
    assert (prov.network, prov.preset, prov.steps, prov.seed, prov.parent_checkpoint) == ("speech_tokenizer", "tiny", 3, 0, None)
    assert prov.data_recipe_hash == PLAN.data_hash()
    assert json.loads((out / pipeline.RECIPE_NAME).read_text())["plan"]["tokenizer"]["steps"] == 3
    assert (out / pipeline.LOSS_PLOT).read_bytes()[:4] == b"\x89PNG"
    tokenizer = load_speech_tokenizer(out)  # the published layout loads with the serving loader
    assert tokenizer.config.quantize_vocab_size == 1024

    pipeline.train_speech_tokenizer(out, "tiny", PLAN)
    assert read_provenance(out).created_at == prov.created_at  # up to date: nothing retrained
    lr_changed = dataclasses.replace(PLAN, tokenizer=dataclasses.replace(PLAN.tokenizer, lr=1e-3))
    assert not pipeline.up_to_date("speech_tokenizer", out, "tiny", lr_changed)
    # Another network's own fields leave it current (the LM's steps, the decoder's dtype); shared ones do not.
    others_changed = dataclasses.replace(PLAN, lm=dataclasses.replace(PLAN.lm, steps=9), decoder_dtype="float16",
                                         lm_question_speeds=(0.9,))
    assert pipeline.up_to_date("speech_tokenizer", out, "tiny", others_changed)
    assert not pipeline.up_to_date("speech_tokenizer", out, "tiny", dataclasses.replace(PLAN, seed=1))
    assert {name for names in pipeline.OWN_FIELDS.values() for name in names} <= {
        f.name for f in dataclasses.fields(pipeline.Plan)}

    result = evaluate_checkpoint("speech_tokenizer", out, plan=PLAN, out=tmp_path / "eval")
    doc = read_metrics(out)
    assert doc == read_metrics(tmp_path / "eval")
    assert set(doc["metrics"]) >= {"asr_wer", "asr_wer_arithmetic", "codebook_usage"}
    assert doc["gate"] is result["gate"] and (doc["gate"] or doc["failed"])
    with pytest.raises(ValueError):
        evaluate_checkpoint("llm", out, plan=PLAN)


def test_lm_is_pretrained_on_interleaved_data_then_fine_tuned(tmp_path):
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

    tokenizer_dir = pipeline.train_speech_tokenizer(tmp_path / "tokenizer", "tiny", PLAN)
    out = pipeline.train_llm(tmp_path / "llm", "tiny", PLAN, tokenizer_dir)
    assert read_provenance(out).steps == 2 + 3  # both stages
    _, text_tokenizer = load_llm(out)
    corpus = pipeline.pretraining_corpus(text_tokenizer, load_speech_tokenizer(tokenizer_dir), PLAN)
    texts = [text_tokenizer.decode(ids) for ids in corpus]
    train, held = spoken_arithmetic.question_answer_pairs(PLAN.arithmetic)
    # Held-out questions' facts are in the text corpus; their speech is not.
    assert all(answer in texts for _, answer in held)
    assert any(text_tokenizer.is_audio(i) for ids in corpus for i in ids)
    assert not any(question in text for question, _ in held for text in texts)
    assert any(question in text for question, _ in train for text in texts)  # ASR pairs of training questions
    assert pipeline.pretraining_corpus(text_tokenizer, load_speech_tokenizer(tokenizer_dir), PLAN) == corpus
    # Speed-perturbed questions: one more spoken dialogue per factor and training question (new codes, same
    # answer).
    speech_tokenizer = load_speech_tokenizer(tokenizer_dir)
    pairs = pipeline.fine_tuning_pairs(text_tokenizer, speech_tokenizer, PLAN)
    more = dataclasses.replace(PLAN, lm_question_speeds=(0.9, 1.1))
    extra = pipeline.fine_tuning_pairs(text_tokenizer, speech_tokenizer, more)[len(pairs):]
    spoken = pipeline.speech_data(PLAN).arithmetic_train
    assert len(extra) == 2 * len(spoken)
    assert [completion for _, completion in extra[:len(spoken)]] == [completion for _, completion in pairs[:len(spoken)]]
    assert all(prompt != original for (prompt, _), (original, _) in zip(extra, pairs))
    assert more.data_hash() == PLAN.data_hash()  # the tokenizer's data: they are the LM's alone
