"""The decoder trainer (flow + HiFT) on a few espeak utterances: flow and vocoder get better on fixed inputs,
and a run stopped inside the HiFT part and resumed ends bit-identical to an uninterrupted run. HiFT's
adversarial phase: the discriminators' shapes, their loss's direction, the phase's effect on the generator,
exact resumption inside it, and a published hift.pt without them."""

import pytest
import torch

from tests.fixtures.training import same_weights


@pytest.fixture(scope="module")
def decoder_items(utterances, tiny_speech_tokenizer):
    from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder
    from training.train_decoder import decoder_item

    template = build_speech_decoder(DecoderConfig.from_name("tiny"), seed=0)
    return [decoder_item(template, tiny_speech_tokenizer.tokenize(u.audio, u.sample_rate), u.audio, u.sample_rate)
            for u in utterances]


def _decoder_run(items, work_dir=None, stop_at=None, **overrides):
    from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder
    from training.train_decoder import DecoderTrainConfig, train_decoder

    decoder = build_speech_decoder(DecoderConfig.from_name("tiny"), seed=0)
    config = DecoderTrainConfig(**{**dict(flow_steps=6, hift_steps=6, batch_size=2, warmup_steps=1, hift_frames=12,
                                          flow_lr=1e-2, hift_lr=1e-3), **overrides})
    return decoder, train_decoder(decoder, items, config, work_dir, stop_at)


def _hift_run(items, work_dir=None, stop_at=None, **overrides):
    """HiFT only (no flow steps), short: for the adversarial phase's tests."""
    return _decoder_run(items, work_dir, stop_at, **{"flow_steps": 0, "hift_steps": 4, **overrides})


def test_decoder_trainer_learns_and_resumes_exactly(decoder_items, tmp_path, one_torch_thread):
    from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder
    from training.train_decoder import mel_loss, vocoder_mel_loss

    items = decoder_items
    template = build_speech_decoder(DecoderConfig.from_name("tiny"), seed=0)
    assert all(i.mel.shape[-1] == template.config.flow.mel_frames(len(i.codes)) for i in items)
    before = (mel_loss(template, items), vocoder_mel_loss(template, items))
    decoder, history = _decoder_run(items)
    after = (mel_loss(decoder, items), vocoder_mel_loss(decoder, items))
    # Flow and vocoder, on fixed inputs and noise (per-step losses of random batches are too noisy in 6 steps).
    assert after[0] < before[0] and after[1] < before[1], (before, after)
    _decoder_run(items, tmp_path, stop_at=9)  # stops inside the HiFT part, before its adversarial phase
    resumed_decoder, resumed = _decoder_run(items, tmp_path)
    assert resumed == history
    assert same_weights(decoder.flow, resumed_decoder.flow) and same_weights(decoder.hift, resumed_decoder.hift)


def test_discriminators_judge_every_sub_discriminator_at_any_length(one_torch_thread):
    from training.discriminators import DiscriminatorConfig, HiFTDiscriminator, fold

    cfg = DiscriminatorConfig.from_name("tiny")
    discriminator = HiFTDiscriminator(cfg)
    assert sum(p.numel() for p in discriminator.parameters()) < 300_000  # trains on CPU
    audio = torch.randn(3, 12 * 256 + 5)  # a multiple of none of the periods
    logits, features = discriminator(audio)
    assert len(logits) == len(features) == len(cfg.periods) + cfg.scales
    for index, (x, maps) in enumerate(zip(logits, features)):
        assert x.shape[0] == 3 and x.dim() == 2 and x.shape[1] > 0
        assert len(maps) == (len(cfg.period_channels) if index < len(cfg.periods) else len(cfg.scale_channels)) + 1
        assert all(m.shape[0] == 3 for m in maps) and maps[-1].flatten(1).shape == x.shape
    for period, maps in zip(cfg.periods, features):
        assert all(m.dim() == 4 and m.shape[-1] == period for m in maps)
        folded = fold(audio, period)
        rows = -(-audio.shape[1] // period)
        assert folded.shape == (3, 1, rows, period)
        assert torch.equal(folded.flatten(1)[:, : audio.shape[1]], audio)  # sample i p + j at row i, column j
        tail = rows * period - audio.shape[1]  # completed by reflection about the last sample
        assert torch.equal(folded.flatten(1)[:, audio.shape[1]:], audio.flip(1)[:, 1: 1 + tail])


def test_discriminator_steps_separate_real_from_generated_crops(decoder_items, one_torch_thread):
    from glmvoice.models.speech_decoder import DecoderConfig, build_speech_decoder
    from training.discriminators import discriminator_loss, generator_adversarial_loss
    from training.train_decoder import DecoderTrainConfig, hift_crops, hift_generate, judge, new_discriminator

    config = DecoderTrainConfig(hift_frames=12)
    decoder = build_speech_decoder(DecoderConfig.from_name("tiny"), seed=0)
    torch.manual_seed(0)
    mel, real, _ = hift_crops(decoder_items, config, decoder.config.hift.samples_per_frame)
    with torch.no_grad():
        generated = hift_generate(decoder, mel)
    discriminator = new_discriminator(config)
    optimizer = torch.optim.AdamW(discriminator.parameters(), lr=config.discriminator_lr, betas=(0.8, 0.99))

    def outputs():
        (real_logits, _), (generated_logits, _) = judge(discriminator, real, generated)
        return real_logits, generated_logits

    before = discriminator_loss(*outputs()).item()
    for _ in range(30):  # at first the logits barely depend on the audio: the steps move the biases, then separate
        optimizer.zero_grad()
        discriminator_loss(*outputs()).backward()
        optimizer.step()
    real_logits, generated_logits = outputs()
    assert discriminator_loss(real_logits, generated_logits).item() < 0.5 * before
    # Least-squares targets: real towards 1, generated towards 0, in every sub-discriminator; the generator is
    # scored against 1, so real audio would score better than its own.
    assert all(r.mean() > g.mean() for r, g in zip(real_logits, generated_logits))
    assert generator_adversarial_loss(generated_logits) > generator_adversarial_loss(real_logits)


def test_adversarial_phase_changes_the_generator_update(decoder_items, one_torch_thread):
    without, without_history = _hift_run(decoder_items, adversarial_start=4)  # beyond the run
    with_gan, with_history = _hift_run(decoder_items, adversarial_start=2)
    assert "hift_disc" not in without_history and "hift_adv" not in without_history
    assert all(len(with_history[k]) == 4 - 2 for k in ("hift_disc", "hift_adv", "hift_fm"))
    # The same crops and noise (the discriminators draw none): the runs agree up to the first adversarial
    # update, then part.
    assert with_history["mel_l1"][:3] == without_history["mel_l1"][:3]
    assert with_history["mel_l1"][3] != without_history["mel_l1"][3]
    assert not same_weights(without.hift, with_gan.hift)


def test_resume_inside_the_adversarial_phase_is_exact(decoder_items, tmp_path, one_torch_thread):
    decoder, history = _hift_run(decoder_items, adversarial_start=1)
    _, partial = _hift_run(decoder_items, tmp_path, stop_at=3, adversarial_start=1)
    assert len(partial["hift_disc"]) == 2
    resumed_decoder, resumed = _hift_run(decoder_items, tmp_path, adversarial_start=1)
    assert resumed == history and same_weights(decoder.hift, resumed_decoder.hift)


def test_published_hift_holds_the_generator_only(decoder_items, tmp_path, one_torch_thread):
    from glmvoice.models.speech_decoder import (
        DecoderConfig,
        build_speech_decoder,
        load_speech_decoder,
        save_speech_decoder,
    )

    decoder, history = _hift_run(decoder_items, tmp_path / "work", hift_steps=2, adversarial_start=1)
    assert "discriminator" in torch.load(tmp_path / "work" / "hift" / "trainer_state.pt", weights_only=False)["objects"]
    trained = torch.load(save_speech_decoder(decoder, tmp_path / "trained") / "hift.pt", weights_only=True)
    fresh = build_speech_decoder(DecoderConfig.from_name("tiny"), seed=0)
    untrained = torch.load(save_speech_decoder(fresh, tmp_path / "fresh") / "hift.pt", weights_only=True)
    assert trained.keys() == untrained.keys()
    assert not any(k.startswith(("mpd", "msd", "discriminator")) for k in trained)
    load_speech_decoder(tmp_path / "trained")  # strict: an extra key would fail here
