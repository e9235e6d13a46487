"""The tokenizer and LM trainers on a few espeak utterances: they reduce their loss, and a run stopped and
resumed from its work directory ends bit-identical to an uninterrupted run (hence also deterministic).
The decoder trainer's twin test is in test_training_decoder.py."""

import numpy as np
import torch

from tests.fixtures.training import same_weights


def _tokenizer_run(utterances, steps, work_dir=None, stop_at=None):
    from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
    from glmvoice.runtime.tokenizer_stream import SpeechTokenizer
    from training import train_tokenizer as tt

    torch.manual_seed(0)
    model = SpeechTokenizerModel(SpeechTokenizerConfig.from_name("tiny"))
    model.init_random_weights(torch.Generator().manual_seed(0))
    head = tt.CTCHead(tt.HeadConfig(model.config.d_model, layers=1))
    tt.prepare_model(model, fresh=True)
    data = tt.features(SpeechTokenizer(model), utterances)
    config = tt.TokenizerTrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=2, save_every=100)
    history = tt.train_tokenizer(model, head, data, config, work_dir, stop_at)
    return model, head, history


def test_tokenizer_trainer_learns_and_resumes_exactly(utterances, tmp_path):
    model, head, history = _tokenizer_run(utterances, 12)
    assert np.mean(history["ctc"][-3:]) < 0.6 * np.mean(history["ctc"][:3])
    assert history["restarted"][0] > 0  # a fresh codebook is initialised from encoder states
    _, _, partial = _tokenizer_run(utterances, 12, tmp_path, stop_at=5)
    assert len(partial["ctc"]) == 5
    resumed_model, resumed_head, resumed = _tokenizer_run(utterances, 12, tmp_path)
    assert resumed == history
    assert same_weights(model, resumed_model) and same_weights(head, resumed_head)  # EMA buffers and codebook included


def _lm_run(pairs, vocab, work_dir=None, stop_at=None):
    from glmvoice.models.llm import GLMConfig, Transformer, pad_vocab
    from training.pipeline import init_lm
    from training.train_llm import LMTrainConfig, train_lm

    model = Transformer(GLMConfig.from_name("tiny", vocab_size=pad_vocab(vocab)))
    init_lm(model, seed=0)
    losses = train_lm(model, pairs, LMTrainConfig(steps=8, batch_size=4, warmup_steps=2, save_every=100), work_dir, stop_at)
    return model, losses


def test_lm_trainer_learns_and_resumes_exactly(utterances, tiny_speech_tokenizer, tmp_path):
    from glmvoice.models.text_tokenizer import AUDIO_BEGIN, AUDIO_END
    from training.bpe_tokenizer import build_tiny_tokenizer
    from training.data.interleave import assistant_turn

    text_tokenizer = build_tiny_tokenizer(tmp_path / "tok", audio_codebook_size=tiny_speech_tokenizer.config.quantize_vocab_size)
    codes = [tiny_speech_tokenizer.tokenize(u.audio, u.sample_rate) for u in utterances]
    # Short prompts (speech only, no system prompt) keep the test fast; the trainer does not look at the template.
    begin, end = text_tokenizer.token_id(AUDIO_BEGIN), text_tokenizer.token_id(AUDIO_END)
    pairs = [([begin, *text_tokenizer.audio_ids(c), end], assistant_turn(text_tokenizer, u.text, c))
             for u, c in zip(utterances, codes)]
    model, losses = _lm_run(pairs, text_tokenizer.vocab_size)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    _lm_run(pairs, text_tokenizer.vocab_size, tmp_path / "work", stop_at=3)
    resumed_model, resumed = _lm_run(pairs, text_tokenizer.vocab_size, tmp_path / "work")
    assert resumed == losses and same_weights(model, resumed_model)


def _frozen_run(utterances, train_layers):
    from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
    from glmvoice.runtime.tokenizer_stream import SpeechTokenizer
    from training import train_tokenizer as tt

    torch.manual_seed(0)
    model = SpeechTokenizerModel(SpeechTokenizerConfig.from_name("tiny"))
    model.init_random_weights(torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head = tt.CTCHead(tt.HeadConfig(model.config.d_model, layers=1))
    tt.prepare_model(model, fresh=True, train_layers=train_layers)
    data = tt.features(SpeechTokenizer(model), utterances)
    config = tt.TokenizerTrainConfig(steps=12, batch_size=4, lr=3e-3, warmup_steps=2, train_layers=train_layers)
    history = tt.train_tokenizer(model, head, data, config)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    return changed, history


def test_a_frozen_encoder_keeps_its_weights_and_the_codes_still_learn(utterances):
    """train_layers=0 (a Whisper parent): only the VQ and the ASR half train (states computed once); 1: the last
    encoder layer too."""
    changed, history = _frozen_run(utterances, 0)
    assert changed == {"codebook.weight", "ema_count", "ema_weight", "embed_positions2.weight"}
    assert np.mean(history["ctc"][-3:]) < 0.8 * np.mean(history["ctc"][:3])
    changed, _ = _frozen_run(utterances, 1)
    assert {k.split(".")[1] for k in changed if k.startswith("layers.")} == {"1"}
    assert not any(k.startswith(("conv", "layers.0.")) for k in changed)
