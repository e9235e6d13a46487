"""The LM's continued pre-training corpus: text, ASR and TTS pairs, and interleaved documents (deterministic)."""

from glmvoice.models.text_tokenizer import AUDIO_BEGIN, AUDIO_END
from training.bpe_tokenizer import build_tiny_tokenizer
from training.data.interleave import Spoken, asr_sequence, interleaved_document, pretraining_sequences, tts_sequence
from training.train_llm import batch_tensors, whole_sequences

SPOKEN = [Spoken("one plus two is three.", [5, 6, 7]), Spoken("the cat sat.", [8, 9]), Spoken("hello there.", [10, 11, 12, 13])]
TEXTS = ["four plus four is eight.", "the dog ran."]


def _tokenizer(tmp_path):
    return build_tiny_tokenizer(tmp_path / "tok", audio_codebook_size=64)


def test_pairs_put_speech_and_its_text_in_both_orders(tmp_path):
    tok = _tokenizer(tmp_path)
    span = [tok.token_id(AUDIO_BEGIN), *tok.audio_ids([5, 6, 7]), tok.token_id(AUDIO_END)]
    text = tok.encode("one plus two is three.")
    assert asr_sequence(tok, SPOKEN[0]) == span + text
    assert tts_sequence(tok, SPOKEN[0]) == text + span


def test_document_speaks_exactly_the_chosen_sentences(tmp_path):
    tok = _tokenizer(tmp_path)
    ids = interleaved_document(tok, SPOKEN, [False, True, False])
    assert [i - tok.audio_offset for i in ids if tok.is_audio(i)] == [8, 9]
    text = tok.decode([i for i in ids if tok.is_text(i)])
    assert "one plus two is three." in text and "hello there." in text and "the cat sat" not in text


def test_corpus_holds_every_text_and_pair_and_is_deterministic(tmp_path):
    tok = _tokenizer(tmp_path)
    corpus = pretraining_sequences(tok, SPOKEN, TEXTS, seed=0, documents=20)
    assert len(corpus) == len(TEXTS) + 2 * len(SPOKEN) + 20
    assert corpus[: len(TEXTS)] == [tok.encode(t) for t in TEXTS]
    assert pretraining_sequences(tok, SPOKEN, TEXTS, seed=0, documents=20) == corpus
    assert pretraining_sequences(tok, SPOKEN, TEXTS, seed=1, documents=20) != corpus
    documents = corpus[len(TEXTS) + 2 * len(SPOKEN):]
    spoken_share = sum(tok.token_id(AUDIO_BEGIN) in d for d in documents) / len(documents)
    assert 0.3 < spoken_share < 1.0  # most documents mix both; some are all text
    no_speech = pretraining_sequences(tok, SPOKEN, TEXTS, seed=0, documents=5, speech_fraction=0.0)
    assert not any(tok.is_audio(i) for d in no_speech[-5:] for i in d)


def test_pretraining_learns_every_id_but_the_first():
    inputs, targets = batch_tensors(whole_sequences([[1, 2, 3, 4], [7]]))
    assert inputs.tolist() == [[1, 2, 3]] and targets.tolist() == [[2, 3, 4]]  # a one-id sequence teaches nothing
