"""The decoder trainer (flow + HiFT) on a few espeak utterances: flow and vocoder get better on fixed inputs,
and a run stopped inside the HiFT part and resumed ends bit-identical to an uninterrupted run."""

import pytest
import torch

from tests.fixtures.training import same_weights


def _decoder_run(items, work_dir=None, stop_at=None):
    from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder
    from training.train_decoder import DecoderTrainConfig, train_decoder

    decoder = build_speech_decoder(DecoderConfig.from_name("tiny"), seed=0)
    config = DecoderTrainConfig(flow_steps=6, hift_steps=6, batch_size=2, warmup_steps=1, hift_frames=12,
                                flow_lr=1e-2, hift_lr=1e-3)
    return decoder, train_decoder(decoder, items, config, work_dir, stop_at)


def test_decoder_trainer_learns_and_resumes_exactly(utterances, tiny_speech_tokenizer, tmp_path):
    from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder
    from training.train_decoder import decoder_item, mel_loss, vocoder_mel_loss

    template = build_speech_decoder(DecoderConfig.from_name("tiny"), seed=0)
    items = [decoder_item(template, tiny_speech_tokenizer.tokenize(u.audio, u.sample_rate), u.audio, u.sample_rate)
             for u in utterances]
    assert all(i.mel.shape[-1] == template.config.flow.mel_frames(len(i.codes)) for i in items)
    before = (mel_loss(template, items), vocoder_mel_loss(template, items))
    decoder, history = _decoder_run(items)
    after = (mel_loss(decoder, items), vocoder_mel_loss(decoder, items))
    # Flow and vocoder, on fixed inputs and noise (per-step losses of random batches are too noisy in 6 steps).
    assert after[0] < before[0] and after[1] < before[1], (before, after)
    _decoder_run(items, tmp_path, stop_at=9)  # stops inside the HiFT part
    resumed_decoder, resumed = _decoder_run(items, tmp_path)
    assert resumed == history
    assert same_weights(decoder.flow, resumed_decoder.flow) and same_weights(decoder.hift, resumed_decoder.hift)
