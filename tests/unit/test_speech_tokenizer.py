"""Speech tokenizer: published layout, parity with the official recipe, streaming == offline, segments, ONNX."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glmvoice.audio import AudioFormatError, read_wav, resample, write_wav
from glmvoice.models.speech_tokenizer import (
    SpeechTokenizerConfig,
    SpeechTokenizerModel,
    speech_tokenizer_info,
    transformer_configs,
)
from glmvoice.models.speech_tokenizer_checkpoint import load_speech_tokenizer_model, save_speech_tokenizer
from glmvoice.runtime.tokenizer_stream import TokenizerStreams, load_speech_tokenizer


def _clips(librivox_clips):
    return [read_wav(path)[0] for path, _ in librivox_clips]


def _stream(tokenizer, samples, rng, max_chunk=6000):
    stream, codes, start = tokenizer.open_stream("s"), [], 0
    while start < len(samples):
        size = int(rng.integers(1, max_chunk))
        codes += stream.push(samples[start: start + size])
        start += size
    return codes + stream.finalize()


# --- published layout ------------------------------------------------------------------------------------

def _published_keys(layers: int) -> set[str]:
    # REFERENCE.md: bare names, k_proj without bias, plus codebook, embed_positions2 and the EMA buffers.
    keys = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "embed_positions.weight",
            "embed_positions2.weight", "codebook.weight", "ema_count", "ema_weight"}
    for i in range(layers):
        p = f"layers.{i}."
        keys |= {p + f"self_attn.{n}_proj.weight" for n in ("q", "k", "v", "out")}
        keys |= {p + f"self_attn.{n}_proj.bias" for n in ("q", "v", "out")}
        keys |= {p + f"{n}.{w}" for n in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm") for w in ("weight", "bias")}
    return keys


def test_directory_has_the_published_layout(tiny_speech_tokenizer_dir):
    names = sorted(p.name for p in tiny_speech_tokenizer_dir.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((tiny_speech_tokenizer_dir / "config.json").read_text())
    tiny = SpeechTokenizerConfig.from_name("tiny")
    assert config["architectures"] == ["WhisperVQEncoder"] and config["model_type"] == "whisper"
    assert config["encoder_causal_convolution"] is True and config["encoder_causal_attention"] is False
    assert config["quantize_encoder_only"] is True and config["pooling_type"] == "avg"
    for name in ("quantize_position", "pooling_position", "pooling_kernel_size", "quantize_vocab_size",
                 "quantize_causal_block_size", "quantize_ema_decay", "num_mel_bins", "d_model", "max_source_positions"):
        assert config[name] == getattr(tiny, name), name
    pre = json.loads((tiny_speech_tokenizer_dir / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert (pre["feature_size"], pre["sampling_rate"], pre["hop_length"], pre["n_fft"], pre["chunk_length"]) == (
        tiny.num_mel_bins, 16000, 160, 400, 30)
    state = load_file(tiny_speech_tokenizer_dir / "model.safetensors")
    assert set(state) == _published_keys(tiny.quantize_position)
    assert state["embed_positions2.weight"].shape == (math.ceil(tiny.max_source_positions / 4), tiny.d_model)
    assert state["codebook.weight"].shape == state["ema_weight"].shape == (tiny.quantize_vocab_size, tiny.d_model)
    assert all(t.dtype == torch.float32 for t in state.values())


def test_transformers_reads_our_directory(tiny_speech_tokenizer_dir):
    from transformers import WhisperConfig, WhisperFeatureExtractor

    config = WhisperConfig.from_pretrained(tiny_speech_tokenizer_dir)
    assert config.quantize_causal_block_size == SpeechTokenizerConfig.from_name("tiny").quantize_causal_block_size
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_speech_tokenizer_dir)
    assert extractor.feature_size == config.num_mel_bins


def test_loader_accepts_a_full_whisper_vq_checkpoint(tiny_speech_tokenizer_dir, tiny_speech_tokenizer, tmp_path, librivox_clips):
    # A WhisperVQ checkpoint with the decoder nests the encoder under model.encoder. (official load_quantize_encoder).
    state = load_file(tiny_speech_tokenizer_dir / "model.safetensors")
    d = state["conv1.bias"].shape[0]
    full = {f"model.encoder.{k}": v for k, v in state.items()}
    full["model.encoder.layer_norm.weight"] = torch.ones(d)
    full["model.encoder.layers.99.fc1.bias"] = torch.zeros(4)  # beyond quantize_position: dropped
    full["model.decoder.embed_tokens.weight"] = torch.zeros(3, d)
    save_file(full, tmp_path / "model.safetensors")
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_text((tiny_speech_tokenizer_dir / name).read_text())
    samples = _clips(librivox_clips)[1]
    assert load_speech_tokenizer(tmp_path).tokenize(samples, 16000) == tiny_speech_tokenizer.tokenize(samples, 16000)


def test_loader_errors(tiny_speech_tokenizer_dir, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_speech_tokenizer_model(tmp_path)
    state = load_file(tiny_speech_tokenizer_dir / "model.safetensors")
    del state["embed_positions2.weight"]
    save_file(state, tmp_path / "model.safetensors")
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_text((tiny_speech_tokenizer_dir / name).read_text())
    with pytest.raises(ValueError, match="embed_positions2"):
        load_speech_tokenizer_model(tmp_path)


def test_real_preset_parameter_count_on_meta():
    info = speech_tokenizer_info(SpeechTokenizerConfig.from_name("glm-4-voice"))
    assert abs(info["parameters"] - 343.6e6) / 343.6e6 < 0.01
    assert (info["codebook_size"], info["sample_rate"], info["token_rate_hz"]) == (16384, 16000, 12.5)


# --- parity with the official recipe, built from transformers' Whisper pieces ----------------------------

def _reference_codes(directory, samples):
    """extract_speech_token as published: feature extractor with pad_to_multiple_of, causal convs, Whisper
    encoder layers under a tril | block_diag mask, average pooling, nearest codebook entry."""
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    config = WhisperConfig.from_pretrained(directory)
    config._attn_implementation = "eager"
    state = load_file(directory / "model.safetensors")
    stride = 2 * config.pooling_kernel_size * 160
    feats = WhisperFeatureExtractor.from_pretrained(directory)(
        samples, sampling_rate=16000, return_attention_mask=True, return_tensors="pt", padding="longest",
        pad_to_multiple_of=stride)
    mel, mask = feats.input_features, feats.attention_mask[:, ::2].bool()
    x = torch.nn.functional.gelu(torch.nn.functional.conv1d(torch.nn.functional.pad(mel, (2, 0)), state["conv1.weight"], state["conv1.bias"]))
    x = torch.nn.functional.gelu(torch.nn.functional.conv1d(torch.nn.functional.pad(x, (2, 0)), state["conv2.weight"], state["conv2.bias"], stride=2))
    x = x.transpose(1, 2) + state["embed_positions.weight"][: x.shape[2]]
    n = x.shape[1]
    block = config.quantize_causal_block_size
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool)) | torch.block_diag(
        *[torch.ones(min(block, n - s), min(block, n - s), dtype=torch.bool) for s in range(0, n, block)])
    allowed = allowed[None] & mask[:, None, :]
    additive = ((~allowed).float() * torch.finfo(torch.float32).min)[:, None]
    for i in range(config.quantize_position):
        layer = WhisperEncoderLayer(config).eval()
        layer.load_state_dict({k[len(f"layers.{i}."):]: v for k, v in state.items() if k.startswith(f"layers.{i}.")})
        out = layer(x, additive, layer_head_mask=None)
        x = out[0] if isinstance(out, tuple) else out
    x = torch.nn.AvgPool1d(config.pooling_kernel_size)(x.transpose(1, 2)).transpose(1, 2)
    codes = torch.cdist(x, state["codebook.weight"][None]).argmin(-1)[0]
    return codes[mask[0, :: config.pooling_kernel_size]].tolist(), x


@pytest.mark.parametrize("block", [None, 200])  # the tiny preset's block, the published one
def test_offline_matches_official_recipe(tiny_speech_tokenizer_dir, tiny_speech_tokenizer, librivox_clips, tmp_path, block):
    directory, tokenizer = tiny_speech_tokenizer_dir, tiny_speech_tokenizer
    if block is not None:
        config = SpeechTokenizerConfig(**{**transformer_configs["tiny"], "quantize_causal_block_size": block})
        model = SpeechTokenizerModel(config)
        model.init_random_weights(torch.Generator().manual_seed(3))
        save_speech_tokenizer(model, tmp_path)
        directory, tokenizer = tmp_path, load_speech_tokenizer(tmp_path)
    for samples in _clips(librivox_clips)[:3]:
        expected, reference_hidden = _reference_codes(directory, samples)
        ours = tokenizer.tokenize(samples, 16000)
        assert ours == expected
        assert len(set(ours)) > 10  # a random model still gives varied codes, so the comparison means something
        mel, mask = tokenizer.segment_features(samples)
        hidden = tokenizer.model.hidden(mel[None], mask[None])
        torch.testing.assert_close(hidden, reference_hidden, atol=1e-4, rtol=1e-4)


# --- streaming, segments, batching --------------------------------------------------------------------

def test_streaming_equals_offline_on_real_speech(tiny_speech_tokenizer, librivox_clips):
    rng = np.random.default_rng(0)
    for samples in _clips(librivox_clips):
        offline = tiny_speech_tokenizer.tokenize(samples, 16000, mel_floor="causal")
        assert len(offline) == math.ceil(len(samples) / 1280)
        assert _stream(tiny_speech_tokenizer, samples, rng) == offline


@pytest.mark.parametrize("variant", [
    dict(quantize_causal_block_size=200),  # the published 4 s block
    dict(encoder_causal_attention=True),  # frame-causal attention: streams emit one token at a time
    dict(pooling_position=1, encoder_layers=3, quantize_position=3),  # layers after pooling, at 12.5 Hz
])
def test_streaming_equals_offline_for_other_structures(librivox_clips, variant):
    from glmvoice.runtime.tokenizer_stream import SpeechTokenizer

    config = SpeechTokenizerConfig(**{**transformer_configs["tiny"], **variant})
    model = SpeechTokenizerModel(config)
    model.init_random_weights(torch.Generator().manual_seed(5))
    tokenizer = SpeechTokenizer(model)
    samples = np.concatenate(_clips(librivox_clips)[:2])
    offline = tokenizer.tokenize(samples, 16000, mel_floor="causal")
    assert len(set(offline)) > 5
    assert _stream(tokenizer, samples, np.random.default_rng(2)) == offline


def test_stream_emits_each_block_as_soon_as_its_audio_is_in(tiny_speech_tokenizer, librivox_clips):
    samples = _clips(librivox_clips)[0]
    block_samples = tiny_speech_tokenizer.unit_mel_frames * 160
    tokens_per_block = block_samples // 1280
    stream = tiny_speech_tokenizer.open_stream()
    # The last frame of block 0 needs 200 - 160 = 40 samples beyond the block (the STFT window).
    assert stream.push(samples[: block_samples + 39]) == []
    first = stream.push(samples[block_samples + 39: block_samples + 40])
    assert len(first) == tokens_per_block
    rest = stream.push(samples[block_samples + 40:]) + stream.finalize()
    assert first + rest == tiny_speech_tokenizer.tokenize(samples, 16000, mel_floor="causal")


def test_causal_floor_equals_official_floor_when_the_loudest_frame_comes_first(tiny_speech_tokenizer, librivox_clips):
    samples = _clips(librivox_clips)[2].copy()
    samples[:1600] = 0.9 * np.sign(np.sin(np.arange(1600) * 0.3))  # a loud click in the first block
    assert tiny_speech_tokenizer.tokenize(samples, 16000, "causal") == tiny_speech_tokenizer.tokenize(samples, 16000)


def test_long_audio_is_cut_into_30s_segments(tiny_speech_tokenizer, librivox_clips):
    clips = _clips(librivox_clips)
    long = np.concatenate(clips * 3)[: 16000 * 62 + 321]  # 62 s: segments of 30, 30 and 2.02 s
    codes = tiny_speech_tokenizer.tokenize(long, 16000)
    pieces = [long[i: i + 480000] for i in range(0, len(long), 480000)]
    assert codes == sum((tiny_speech_tokenizer.tokenize(p, 16000) for p in pieces), [])
    assert len(codes) == 375 + 375 + math.ceil((len(long) - 960000) / 1280)
    causal = tiny_speech_tokenizer.tokenize(long, 16000, mel_floor="causal")
    assert _stream(tiny_speech_tokenizer, long, np.random.default_rng(1), max_chunk=40000) == causal


@pytest.mark.parametrize("length", [1, 100, 1280, 1281, 480000, 480001])
def test_edge_lengths_give_one_code_per_started_token(tiny_speech_tokenizer, librivox_clips, length):
    samples = np.resize(np.concatenate(_clips(librivox_clips)), length)
    offline = tiny_speech_tokenizer.tokenize(samples, 16000, mel_floor="causal")
    n_segments = math.ceil(length / 480000)
    assert len(offline) == sum(math.ceil(len(samples[i: i + 480000]) / 1280) for i in range(0, length, 480000))
    assert n_segments == 1 or len(offline) == 375 + 1
    assert _stream(tiny_speech_tokenizer, samples, np.random.default_rng(length), max_chunk=50000) == offline


def test_batch_equals_one_by_one(tiny_speech_tokenizer, librivox_clips):
    waves = _clips(librivox_clips)
    waves.append(np.concatenate(waves)[: 16000 * 31])  # two segments of very different lengths
    one_by_one = [tiny_speech_tokenizer.tokenize(w, 16000) for w in waves]
    assert tiny_speech_tokenizer.tokenize_batch(waves, 16000, batch_size=3) == one_by_one


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
def test_other_sample_rates_are_resampled(tiny_speech_tokenizer, librivox_clips, rate):
    samples = _clips(librivox_clips)[1]
    at_rate = resample(samples, 16000, rate)
    codes = tiny_speech_tokenizer.tokenize(at_rate, rate)
    assert codes == tiny_speech_tokenizer.tokenize(resample(at_rate, rate, 16000), 16000)
    assert len(codes) == math.ceil(len(resample(at_rate, rate, 16000)) / 1280)


def test_bad_input_is_rejected(tiny_speech_tokenizer):
    for bad in (np.zeros(0, np.float32), np.zeros((2, 1600), np.float32), np.full(1600, np.inf, np.float32)):
        with pytest.raises(AudioFormatError):
            tiny_speech_tokenizer.tokenize(bad, 16000)
    with pytest.raises(AudioFormatError):
        tiny_speech_tokenizer.open_stream().push(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError):
        tiny_speech_tokenizer.tokenize(np.zeros(1600, np.float32), 16000, mel_floor="peak")
    with pytest.raises(AudioFormatError):
        tiny_speech_tokenizer.tokenize(np.zeros(1600, np.float32), 0)


def test_full_attention_config_cannot_stream():
    from glmvoice.runtime.tokenizer_stream import SpeechTokenizer

    config = SpeechTokenizerConfig.from_name("tiny")
    config.quantize_causal_block_size = None
    with pytest.raises(ValueError, match="cannot stream"):
        SpeechTokenizer(SpeechTokenizerModel(config)).open_stream()


def test_streams_are_keyed_and_closed(tiny_speech_tokenizer, librivox_clips):
    streams = TokenizerStreams(tiny_speech_tokenizer)
    samples = _clips(librivox_clips)[1]
    with streams.stream("a") as a, streams.stream("b") as b:
        assert "a" in streams and len(streams) == 2
        with pytest.raises(ValueError):
            with streams.stream("a"):
                pass
        half = len(samples) // 2
        codes_a = a.push(samples[:half]) + a.push(samples[half:]) + a.finalize()
        codes_b = b.push(samples) + b.finalize()
        assert codes_a == codes_b
        b.push(samples[:5000])
        b.reset()
        assert b.push(samples) + b.finalize() == codes_a
    assert len(streams) == 0


def test_cli_tokenize(tiny_speech_tokenizer_dir, tiny_speech_tokenizer, librivox_clips, tmp_path, capsys):
    import argparse

    from glmvoice.cli import tokenize as command

    def main(argv):  # the subcommand alone: the registry also imports the other networks' commands
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        return command.run(parser.parse_args(argv))

    samples = _clips(librivox_clips)[1]
    paths = []
    for rate in (8000, 44100):
        paths.append(tmp_path / f"clip_{rate}.wav")
        write_wav(paths[-1], resample(samples, 16000, rate), rate)
    assert main(["--checkpoint", str(tiny_speech_tokenizer_dir), *map(str, paths)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == list(map(str, paths))
    for line, path in zip(lines, paths):
        wave, rate = read_wav(path)
        assert line["tokens"] == tiny_speech_tokenizer.tokenize(wave, rate)
    with pytest.raises(FileNotFoundError):  # the CLI turns it into exit code 2
        main(["--checkpoint", str(tiny_speech_tokenizer_dir), str(tmp_path / "missing.wav")])


def test_onnx_export_matches_torch(tiny_speech_tokenizer, librivox_clips, tmp_path):
    from training.export.onnx_speech_tokenizer import check_against_torch, export_speech_tokenizer_onnx

    path = export_speech_tokenizer_onnx(tiny_speech_tokenizer.model, tmp_path)
    feats = [tiny_speech_tokenizer.segment_features(s) for s in _clips(librivox_clips)[:3]]
    width = max(m.shape[1] for m, _ in feats)
    mel = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m, _ in feats])
    mask = torch.stack([torch.nn.functional.pad(k, (0, width - k.shape[0])) for _, k in feats])
    result = check_against_torch(tiny_speech_tokenizer.model, path, mel, mask)
    assert result["codes_equal"] and result["max_abs_diff"] < 1e-4 and result["tokens"] == mel.shape[0] * width // 8


def test_save_load_round_trip_and_dequantize(tiny_speech_tokenizer, tmp_path, librivox_clips):
    save_speech_tokenizer(tiny_speech_tokenizer, tmp_path)
    again = load_speech_tokenizer(tmp_path)
    samples = _clips(librivox_clips)[0]
    codes = again.tokenize(samples, 16000)
    assert codes == tiny_speech_tokenizer.tokenize(samples, 16000)
    model = again.model
    ids = torch.tensor([codes[:20]])
    expected = model.codebook.weight[ids] + model.embed_positions2.weight[:20]
    torch.testing.assert_close(model.dequantize(ids), expected)


@pytest.mark.slow
def test_real_size_random_weights_stream_equals_offline(librivox_clips):
    from glmvoice.runtime.tokenizer_stream import SpeechTokenizer

    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(SpeechTokenizerModel(SpeechTokenizerConfig.from_name("glm-4-voice")))
    samples = np.concatenate(_clips(librivox_clips)[:2])  # 10 s: three 4 s blocks, the last one padded
    offline = tokenizer.tokenize(samples, 16000, mel_floor="causal")
    assert len(offline) == math.ceil(len(samples) / 1280)
    assert _stream(tokenizer, samples, np.random.default_rng(3), max_chunk=16000) == offline
