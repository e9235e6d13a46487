"""Training support: provenance and metrics files, the eval gate, WER, data recipes, decoder mel targets."""

import json

import numpy as np
import pytest
import torch

from glmvoice import provenance as prov
from training.data import corpus
from training.evaluate import gate, wer, word_errors


def test_provenance_round_trip_keeps_exactly_the_promoter_fields(tmp_path):
    p = prov.new_provenance("llm", "tiny", "abc123", None, 7, 500)
    prov.write_provenance(tmp_path, p)
    raw = json.loads((tmp_path / "provenance.json").read_text())
    assert sorted(raw) == sorted(["network", "preset", "code_version", "data_recipe_hash", "parent_checkpoint",
                                  "seed", "steps", "created_at"])
    back = prov.read_provenance(tmp_path)
    assert back == p and back.code_version and back.created_at.endswith("+00:00")
    assert back.same_recipe(prov.new_provenance("llm", "tiny", "abc123", None, 7, 500))
    assert not back.same_recipe(prov.new_provenance("llm", "tiny", "abc123", None, 7, 501))
    with pytest.raises(ValueError):
        prov.Provenance("vocoder", "tiny", "v", "h", None, 0, 1, "t")


def test_metrics_file_records_the_gate(tmp_path):
    prov.write_metrics(tmp_path, "llm", {"task_accuracy": 0.5}, False, ["task_accuracy 0.5 < 0.8"], {"min_task_accuracy": 0.8})
    doc = prov.read_metrics(tmp_path)
    assert doc["gate"] is False and doc["metrics"]["task_accuracy"] == 0.5 and doc["failed"]
    with pytest.raises(FileNotFoundError):
        prov.read_metrics(tmp_path / "missing")


def test_gate_applies_bounds_and_requires_metrics(tmp_path):
    rules = tmp_path / "gate.yaml"
    rules.write_text("llm:\n  tiny:\n    required: [task_accuracy]\n    min_task_accuracy: 0.8\n    max_held_out_loss: 2.0\n")
    assert gate("llm", "tiny", {"task_accuracy": 0.9, "held_out_loss": 1.0}, rules)[0]
    ok, failed, _ = gate("llm", "tiny", {"task_accuracy": 0.7, "held_out_loss": 2.5}, rules)
    assert not ok and len(failed) == 2
    assert gate("llm", "tiny", {"held_out_loss": 1.0}, rules)[1] == ["task_accuracy not measured"]
    assert not gate("llm", "glm-4-voice", {"task_accuracy": 1.0}, rules)[0]  # no thresholds: never promoted


def test_word_error_rate():
    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "a cat sat down") == (2, 3)
    assert word_errors("Three plus four is seven.", "three plus four is seven") == (0, 5)
    assert wer([("a b c d", "a b"), ("e f", "e f")]) == pytest.approx(2 / 6)


def test_characters_round_trip_and_recipe_hash_follows_the_recipe():
    assert corpus.decode_chars(corpus.encode_chars("He's here, 3 times!")) == "he's here times"
    assert corpus.Recipe().hash() == corpus.Recipe().hash()
    assert corpus.Recipe(held_out=7).hash() != corpus.Recipe().hash()


def test_speech_corpus_is_deterministic_and_split_by_sentence():
    recipe = corpus.Recipe(voices=(corpus.Voice("en-us", 170),), held_out=3, librivox=False)
    train, held = corpus.english_corpus(recipe)
    again, _ = corpus.english_corpus(recipe)
    assert len(held) == 3 and len(train) == len(corpus.sentences()) - 3
    assert {u.text for u in train}.isdisjoint({u.text for u in held})
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(train[:3], again[:3]))


def test_decoder_mel_matches_a_direct_computation():
    from glmvoice.models.mel import mel_filter_bank
    from training.train_decoder import decoder_mel, frame_f0

    rate, hop = 22050, 256
    t = np.arange(hop * 40) / rate
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    mel = decoder_mel(torch.from_numpy(tone)[None], rate, hop, 80)[0]
    assert mel.shape == (80, 40)
    # Frame 20 by hand: a Hann-windowed 1024-point FFT magnitude starting 384 samples before its hop.
    start = 20 * hop - (1024 - hop) // 2
    frame = tone[start: start + 1024] * np.hanning(1025)[:-1]
    magnitude = np.sqrt(np.abs(np.fft.rfft(frame)) ** 2 + 1e-9)  # the epsilon Matcha-TTS adds
    expected = np.log(np.maximum(mel_filter_bank(80, 1024, rate, 0.0, 8000.0).T @ magnitude, 1e-5))
    assert np.allclose(mel[:, 20].numpy(), expected, atol=5e-3)  # float32 vs float64 near the 1e-5 floor
    f0 = frame_f0(tone, rate, hop)
    assert np.median(f0[5:-5]) == pytest.approx(220, rel=0.03)
    assert frame_f0(np.zeros_like(tone), rate, hop).max() == 0


def test_mandarin_pairs_are_spoken_and_spelled_in_pinyin():
    pairs = corpus.bilingual_pairs()
    assert len(pairs) >= 10 and all(p.pinyin and p.hanzi and p.english for p in pairs)
    train, held = corpus.mandarin_corpus(held_out=3)
    assert len(held) == 3 and len(train) == len(pairs) - 3
    assert corpus.normalize_text(held[0].text) == corpus.normalize_text(pairs[-3].pinyin)
    assert all(len(u.audio) > u.sample_rate // 2 for u in held)  # real speech, not an empty read
    assert corpus.Recipe(mandarin=True).hash() != corpus.Recipe().hash()
