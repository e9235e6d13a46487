"""Speech decoder networks and the published glm-4-voice-decoder layout (config.yaml, flow.pt, hift.pt)."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glmvoice.models.flow import FlowConfig, nearest_indices
from glmvoice.models.hift import HiFTConfig
from glmvoice.models.speech_decoder import (
    DecoderConfig,
    fold_weight_norm,
    load_speech_decoder,
    read_decoder_config,
    read_hyperpyyaml,
    speech_decoder_info,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_published_layout_files_and_key_names(tiny_speech_decoder_dir):
    assert sorted(p.name for p in tiny_speech_decoder_dir.iterdir()) == ["config.yaml", "flow.pt", "hift.pt"]
    flow = torch.load(tiny_speech_decoder_dir / "flow.pt", weights_only=True)
    hift = torch.load(tiny_speech_decoder_dir / "hift.pt", weights_only=True)
    for key in (
        "input_embedding.weight",
        "spk_embed_affine_layer.bias",
        "encoder.embed.out.0.weight",
        "encoder.embed.out.1.weight",
        "encoder.encoders.0.self_attn.linear_pos.weight",
        "encoder.encoders.0.self_attn.pos_bias_u",
        "encoder.encoders.0.feed_forward.w_1.weight",
        "encoder.after_norm.weight",
        "encoder_proj.weight",
        "length_regulator.model.0.weight",
        "length_regulator.model.1.weight",
        "decoder.estimator.time_mlp.linear_1.weight",
        "decoder.estimator.down_blocks.0.0.mlp.1.weight",
        "decoder.estimator.down_blocks.0.0.block1.block.0.weight",
        "decoder.estimator.down_blocks.0.1.0.attn1.to_q.weight",
        "decoder.estimator.down_blocks.0.1.0.attn1.to_out.0.bias",
        "decoder.estimator.down_blocks.0.1.0.ff.net.0.proj.weight",
        "decoder.estimator.down_blocks.0.1.0.ff.net.2.weight",
        "decoder.estimator.down_blocks.0.2.conv.weight",
        "decoder.estimator.mid_blocks.0.1.0.norm3.weight",
        "decoder.estimator.up_blocks.0.2.conv.weight",
        "decoder.estimator.final_proj.weight",
    ):
        assert key in flow, key
    assert "decoder.estimator.down_blocks.0.1.0.attn1.to_q.bias" not in flow
    assert "encoder.encoders.0.self_attn.linear_pos.bias" not in flow
    for key in (
        "conv_pre.weight_g",
        "conv_pre.weight_v",
        "ups.0.weight_v",
        "resblocks.0.convs1.0.weight_g",
        "resblocks.0.activations1.0.alpha",
        "source_resblocks.1.convs2.0.weight_v",
        "source_downs.0.weight",
        "conv_post.weight_g",
        "f0_predictor.condnet.0.weight_g",
        "f0_predictor.condnet.8.weight_v",
        "f0_predictor.classifier.weight",
        "m_source.l_linear.weight",
    ):
        assert key in hift, key
    assert "conv_pre.weight" not in hift and "source_downs.0.weight_g" not in hift


def test_config_yaml_tags_are_kept_as_data_and_refs_resolved(tiny_speech_decoder_dir):
    doc = read_hyperpyyaml(tiny_speech_decoder_dir / "config.yaml")
    assert doc["flow"]["__tag__"] == "!new:cosyvoice.flow.flow.MaskedDiffWithXvec"
    assert doc["flow"]["encoder"]["__tag__"].endswith("BlockConformerEncoder")
    assert doc["hift"]["sampling_rate"] == doc["sample_rate"] == 22050  # was `!ref <sample_rate>`
    assert doc["flow"]["spk_embed_dim"] == doc["spk_embed_dim"]
    cfg = read_decoder_config(tiny_speech_decoder_dir)
    assert cfg.flow.vocab_size == 1024 and cfg.flow.encoder.block_size == 10
    assert cfg.flow == FlowConfig.from_name("tiny") and cfg.hift == HiFTConfig.from_name("tiny")


def test_config_yaml_never_executes_anything(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "config.yaml").write_text(
        f"__set_seed: !apply:os.system ['touch {marker}']\n"
        "thing: !new:some_module_that_does_not_exist.Thing\n    a: 1\n"
        "fn: !name:os.remove\n"
    )
    doc = read_hyperpyyaml(tmp_path / "config.yaml")
    assert not marker.exists()
    assert doc["__set_seed"] == {"__tag__": "!apply:os.system", "args": [f"touch {marker}"]}
    assert doc["thing"] == {"__tag__": "!new:some_module_that_does_not_exist.Thing", "a": 1}
    (tmp_path / "evil.yaml").write_text(f"x: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(Exception, match="python/object"):
        read_hyperpyyaml(tmp_path / "evil.yaml")
    assert not marker.exists()


def test_config_values_come_from_the_file(tmp_path, tiny_speech_decoder_dir):
    text = (tiny_speech_decoder_dir / "config.yaml").read_text()
    text = text.replace("vocab_size: 1024", "vocab_size: 777").replace("num_mid_blocks: 1", "num_mid_blocks: 3")
    text = text.replace("inference_cfg_rate: 0.7", "inference_cfg_rate: 0.5").replace("cond_channels: 32", "cond_channels: 24")
    (tmp_path / "config.yaml").write_text(text)
    cfg = read_decoder_config(tmp_path)
    assert (cfg.flow.vocab_size, cfg.flow.estimator.num_mid_blocks, cfg.flow.inference_cfg_rate) == (777, 3, 0.5)
    assert cfg.hift.f0_cond_channels == 24


def test_loader_round_trip_and_strictness(tmp_path, tiny_speech_decoder_dir, tiny_speech_decoder):
    codes = list(range(3, 1000, 37))
    again = load_speech_decoder(tiny_speech_decoder_dir)
    np.testing.assert_array_equal(again.decode(codes, seed=1), tiny_speech_decoder.decode(codes, seed=1))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_speech_decoder_dir, broken)
    state = torch.load(broken / "flow.pt", weights_only=True)
    del state["encoder_proj.weight"]
    torch.save(state, broken / "flow.pt")
    with pytest.raises(ValueError, match="encoder_proj.weight"):
        load_speech_decoder(broken)
    with pytest.raises(FileNotFoundError):
        load_speech_decoder(tmp_path / "nowhere")


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize(
    "make", [lambda: torch.nn.Conv1d(6, 5, 3), lambda: torch.nn.ConvTranspose1d(6, 4, 16, 8)], ids=["conv", "transposed"]
)
def test_weight_norm_folding_matches_torch_weight_norm(make):
    torch.manual_seed(0)
    normed = torch.nn.utils.weight_norm(make())  # the old API: weight_g / weight_v, as in hift.pt
    with torch.no_grad():
        normed.weight_g.mul_(torch.rand_like(normed.weight_g) + 0.5)
    plain = make()
    plain.load_state_dict({k[2:]: v for k, v in fold_weight_norm({f"c.{k}": v for k, v in normed.state_dict().items()}).items()})
    x = torch.randn(1, 6, 20)
    torch.testing.assert_close(plain(x), normed(x))
    new_style = torch.nn.utils.parametrizations.weight_norm(make())
    new_style.load_state_dict(normed.state_dict())  # torch converts the old keys into parametrizations.*
    folded = fold_weight_norm({f"c.{k}": v for k, v in new_style.state_dict().items()})
    torch.testing.assert_close(folded["c.weight"], plain.weight)


def test_real_preset_parameter_counts():
    info = speech_decoder_info("glm-4-voice")
    assert abs(info["flow_parameters"] / 111.2e6 - 1) < 0.02
    assert abs(info["hift_parameters_with_weight_norm"] / 20.46e6 - 1) < 0.02
    assert (info["codebook_size"], info["sample_rate"], info["samples_per_mel_frame"], info["block_size"]) == (16384, 22050, 256, 10)


def test_decode_is_reproducible_and_shaped(tiny_speech_decoder):
    codes = list(range(0, 1000, 40))  # 25 codes = 2 s
    a = tiny_speech_decoder.decode(codes, seed=7)
    assert a.dtype == np.float32 and len(a) == 256 * int(25 / 12.5 * 22050 / 256)
    assert np.isfinite(a).all() and np.abs(a).max() <= 0.99 and a.std() > 1e-3
    np.testing.assert_array_equal(a, tiny_speech_decoder.decode(codes, seed=7))
    assert np.abs(a - tiny_speech_decoder.decode(codes, seed=8)).max() > 1e-3
    with pytest.raises(ValueError, match="1024"):
        tiny_speech_decoder.decode([5, 1024])


def test_encoder_is_block_causal(tiny_speech_decoder):
    flow = tiny_speech_decoder.flow
    tokens = torch.randint(0, 1024, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = flow.encoder(flow.input_embedding(tokens), torch.tensor([30]))
        part = flow.encoder(flow.input_embedding(tokens[:, :20]), torch.tensor([20]))
        cut = flow.encoder(flow.input_embedding(tokens[:, :15]), torch.tensor([15]))
    torch.testing.assert_close(full[:, :20], part, atol=1e-5, rtol=1e-5)  # finished blocks ignore later codes
    assert (full[:, 10:15] - cut[:, 10:15]).abs().max() > 1e-3  # inside a block, later codes are seen


def test_padded_batch_equals_single_items(tiny_speech_decoder):
    flow, hift = tiny_speech_decoder.flow, tiny_speech_decoder.hift
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 1024, (2, 25), generator=gen)
    lens = torch.tensor([25, 17])
    noise = torch.randn(2, 80, 200, generator=gen)
    with torch.no_grad():
        batch = flow.inference(tokens, lens, noise)
        single = flow.inference(tokens[1:, :17], lens[1:], noise[1:])
        torch.testing.assert_close(batch[1:, :, : single.shape[-1]], single, atol=1e-5, rtol=1e-5)
        h = hift.cfg.nb_harmonics + 1
        mel_lens = torch.tensor([batch.shape[-1], single.shape[-1]])
        args = (torch.rand(2, h, generator=gen), torch.rand(2, h, generator=gen), torch.randn(2, h, batch.shape[-1] * 256, generator=gen))
        audio, _ = hift(batch, mel_lens, *args)
        alone, _ = hift(single, mel_lens[1:], *(a[1:] for a in args[:2]), args[2][1:, :, : single.shape[-1] * 256])
    torch.testing.assert_close(audio[1:, : alone.shape[-1]], alone, atol=1e-5, rtol=1e-4)


def test_stft_and_istft_match_torch(tiny_speech_decoder):
    hift = tiny_speech_decoder.hift
    s = torch.randn(2, 1024, generator=torch.Generator().manual_seed(2))
    ref = torch.view_as_real(torch.stft(s, 16, 4, 16, window=torch.hann_window(16), return_complex=True))
    ours = hift.stft(s, torch.tensor([1024, 1024]))
    torch.testing.assert_close(ours, torch.cat([ref[..., 0], ref[..., 1]], dim=1), atol=1e-5, rtol=1e-5)
    back = hift.istft(ours, torch.ones(2, 1, ours.shape[-1]))
    torch.testing.assert_close(back, torch.istft(torch.view_as_complex(ref.contiguous()), 16, 4, 16, window=torch.hann_window(16)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back, s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_in,n_out", [(10, 68), (25, 172), (7, 48), (30, 206)])
def test_length_regulator_indices_match_interpolate(n_in, n_out):
    x = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
    ref = F.interpolate(x, size=n_out, mode="nearest")[0, 0].long()
    assert torch.equal(nearest_indices(torch.tensor([n_in]), torch.tensor([n_out]), n_out)[0], ref)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_onnx_export_matches_torch(tmp_path, tiny_speech_decoder):
    ort = pytest.importorskip("onnxruntime")
    from training.export.onnx_speech_decoder import example_inputs, export_speech_decoder

    paths = export_speech_decoder(tiny_speech_decoder, tmp_path)
    inputs = example_inputs(tiny_speech_decoder, batch=3, frames=53)  # other shapes than the traced ones
    with torch.no_grad():
        expected = {
            "estimator": tiny_speech_decoder.flow.decoder.estimator(*inputs["estimator"]),
            "hift": tiny_speech_decoder.hift(*inputs["hift"])[0],
        }
    for name, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: v.numpy() for i, v in zip(session.get_inputs(), inputs[name])}
        got = session.run(None, feed)[0]
        np.testing.assert_allclose(got, expected[name].numpy(), atol=1e-4, rtol=1e-4)


def test_save_load_real_size_config_round_trip(tmp_path):
    cfg = DecoderConfig.from_name("glm-4-voice")
    from glmvoice.models.speech_decoder import config_to_yaml

    (tmp_path / "config.yaml").write_text(config_to_yaml(cfg))
    assert read_decoder_config(tmp_path) == cfg


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        FlowConfig.from_name("huge")
    with pytest.raises(ValueError, match="unknown"):
        HiFTConfig.from_name("huge")


def test_unevaluated_ref_in_a_needed_field_is_a_clear_error(tmp_path, tiny_speech_decoder_dir):
    text = (tiny_speech_decoder_dir / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("vocab_size: 1024", "vocab_size: !ref <sample_rate> // 2"))
    with pytest.raises(ValueError, match="vocab_size"):
        read_decoder_config(tmp_path)


def test_a_decoder_saved_in_half_precision_loads_as_float32_with_the_rounded_weights(tmp_path):
    import torch

    from glmvoice.models.speech_decoder import (
        DecoderConfig,
        build_speech_decoder,
        load_speech_decoder,
        save_speech_decoder,
    )

    decoder = build_speech_decoder(DecoderConfig.from_name("tiny"), 0)
    save_speech_decoder(decoder, tmp_path / "half", torch.float16)
    save_speech_decoder(decoder, tmp_path / "full")
    half, full = load_speech_decoder(tmp_path / "half"), load_speech_decoder(tmp_path / "full")
    assert (tmp_path / "half" / "flow.pt").stat().st_size < 0.6 * (tmp_path / "full" / "flow.pt").stat().st_size
    for name, value in half.flow.state_dict().items():
        reference = full.flow.state_dict()[name]
        assert value.dtype == reference.dtype
        assert torch.equal(value, reference.half().float()) if value.is_floating_point() else torch.equal(value, reference)
    codes = list(range(30))
    assert half.decode(codes).shape == full.decode(codes).shape
