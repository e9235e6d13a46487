"""training.whisper_init: reading a CTranslate2 Whisper, mapping its encoder onto our tokenizer, and committing a
trained tokenizer as its own tensors. On a small CTranslate2 file written here in the format's layout; the
check against whisper-base itself (ctranslate2's own encoder) is tests/integration/test_whisper_base.py."""

import struct

import numpy as np
import pytest
import torch

from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
from glmvoice.models.speech_tokenizer_checkpoint import WEIGHTS_NAME, load_speech_tokenizer_model, save_speech_tokenizer
from training import whisper_init

CONFIG = SpeechTokenizerConfig(num_mel_bins=8, d_model=16, encoder_attention_heads=2, encoder_ffn_dim=32, encoder_layers=3,
                               max_source_positions=40, pooling_position=2, quantize_position=2, quantize_vocab_size=8,
                               quantize_causal_block_size=8)
DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int16): 2, np.dtype(np.float16): 4}


def write_ct2(path, tensors: dict[str, np.ndarray], spec: str = "WhisperSpec", version: int = 6) -> None:
    """CTranslate2's model.bin layout: version, spec name, revision, then (name, rank, dims, dtype, bytes, data)."""
    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(tensors))
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        out += string(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
        out += struct.pack("<BI", DTYPE_IDS[array.dtype], len(data)) + data
    path.write_bytes(out)


def ct2_whisper(model: SpeechTokenizerModel) -> dict[str, np.ndarray]:
    """A model's encoder under CTranslate2's Whisper names (q/k/v fused, the key bias zero), in float16."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    t = {"encoder/num_heads": np.array(model.config.encoder_attention_heads, np.int16)}
    for ours, theirs in (("conv1", "conv1"), ("conv2", "conv2")):
        t[f"encoder/{theirs}/weight"], t[f"encoder/{theirs}/bias"] = s[f"{ours}.weight"], s[f"{ours}.bias"]
    t["encoder/position_encodings/encodings"] = s["embed_positions.weight"]
    for i in range(model.config.encoder_layers):
        src = i % model.config.quantize_position  # layers past the cut exist in the file and are not read
        p, q = f"layers.{src}.", f"encoder/layer_{i}/"
        t[q + "self_attention/linear_0/weight"] = np.concatenate([s[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        t[q + "self_attention/linear_0/bias"] = np.concatenate(
            [s[p + "self_attn.q_proj.bias"], np.zeros_like(s[p + "self_attn.q_proj.bias"]), s[p + "self_attn.v_proj.bias"]])
        t[q + "self_attention/linear_1/weight"], t[q + "self_attention/linear_1/bias"] = s[p + "self_attn.out_proj.weight"], s[p + "self_attn.out_proj.bias"]
        t[q + "self_attention/layer_norm/gamma"], t[q + "self_attention/layer_norm/beta"] = s[p + "self_attn_layer_norm.weight"], s[p + "self_attn_layer_norm.bias"]
        t[q + "ffn/linear_0/weight"], t[q + "ffn/linear_0/bias"] = s[p + "fc1.weight"], s[p + "fc1.bias"]
        t[q + "ffn/linear_1/weight"], t[q + "ffn/linear_1/bias"] = s[p + "fc2.weight"], s[p + "fc2.bias"]
        t[q + "ffn/layer_norm/gamma"], t[q + "ffn/layer_norm/beta"] = s[p + "final_layer_norm.weight"], s[p + "final_layer_norm.bias"]
    return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in t.items()}


@pytest.fixture
def source(tmp_path):
    """(a random model, rounded to float16 as CTranslate2 stores it; its model.bin)."""
    model = SpeechTokenizerModel(CONFIG)
    model.init_random_weights(torch.Generator().manual_seed(1))
    for layer in model.layers:
        torch.nn.init.normal_(layer.self_attn_layer_norm.weight)  # norms other than ones: a swapped gamma shows
    tensors = ct2_whisper(model)
    write_ct2(tmp_path / "model.bin", tensors)
    with torch.no_grad():
        for p in model.state_dict().values():
            p.copy_(p.half().float())
    return model, tmp_path / "model.bin"


def test_reader_returns_each_tensor_with_its_shape_and_dtype(tmp_path):
    tensors = {"a/b": np.arange(6, dtype=np.float16).reshape(2, 3), "n": np.array(8, np.int16)}
    write_ct2(tmp_path / "m.bin", tensors)
    read = whisper_init.read_ct2(tmp_path / "m.bin")
    assert read.keys() == tensors.keys()
    assert read["a/b"].dtype == np.float16 and (read["a/b"] == tensors["a/b"]).all() and read["n"] == 8
    write_ct2(tmp_path / "old.bin", tensors, version=5)
    with pytest.raises(ValueError, match="format 5"):
        whisper_init.read_ct2(tmp_path / "old.bin")
    write_ct2(tmp_path / "t5.bin", tensors, spec="T5Spec")
    with pytest.raises(ValueError, match="T5Spec"):
        whisper_init.read_ct2(tmp_path / "t5.bin")


def test_initialised_encoder_computes_what_the_source_does(source):
    model, model_bin = source
    ours = whisper_init.whisper_initialised(model_bin, CONFIG)
    mel = torch.randn(2, CONFIG.num_mel_bins, 32)
    mask = torch.ones(2, 32)
    with torch.no_grad():
        assert torch.allclose(ours.hidden(mel, mask), model.hidden(mel, mask), atol=1e-5)
    assert int(ours.ema_count.sum()) == 0  # every code unused: training starts the codebook from data


def test_a_preset_of_other_sizes_is_refused(source):
    _, model_bin = source
    wider = SpeechTokenizerConfig(**{**CONFIG.__dict__, "d_model": 32, "extra": {}})
    with pytest.raises(ValueError, match="conv1.weight"):
        whisper_init.whisper_initialised(model_bin, wider)


def test_split_then_restore_gives_the_identical_weights_file(source, tmp_path):
    _, model_bin = source
    model = whisper_init.whisper_initialised(model_bin, CONFIG)
    with torch.no_grad():
        model.codebook.weight.normal_()
        model.ema_count.fill_(2.0)
    directory = tmp_path / "tok"
    save_speech_tokenizer(model, directory)
    original = (directory / WEIGHTS_NAME).read_bytes()
    delta = whisper_init.split(directory, model_bin)
    assert set(delta) == {"codebook.weight", "ema_count"}  # the Whisper encoder is not repeated
    (directory / WEIGHTS_NAME).unlink()
    whisper_init.restore(directory, model_bin)
    assert (directory / WEIGHTS_NAME).read_bytes() == original
    assert torch.equal(load_speech_tokenizer_model(directory).codebook.weight, model.codebook.weight)


def test_restore_from_another_whisper_is_refused_and_leaves_no_weights(source, tmp_path):
    model, model_bin = source
    save_speech_tokenizer(whisper_init.whisper_initialised(model_bin, CONFIG), tmp_path / "tok")
    whisper_init.split(tmp_path / "tok", model_bin)
    (tmp_path / "tok" / WEIGHTS_NAME).unlink()
    other = ct2_whisper(model)
    other["encoder/conv1/bias"] = other["encoder/conv1/bias"] + np.float16(1)
    write_ct2(tmp_path / "other.bin", other)
    with pytest.raises(ValueError, match="differ"):
        whisper_init.restore(tmp_path / "tok", tmp_path / "other.bin")
    assert not (tmp_path / "tok" / WEIGHTS_NAME).exists()


def test_whisper_base_maps_onto_our_encoder_exactly(one_torch_thread):
    """Our layers with whisper-base's weights, run as Whisper runs them (centred convolutions, full attention,
    the final norm), equal CTranslate2's own encoder on a spoken question: the tensor names and the q/k/v split
    are right. (Ours differ from Whisper only in the causal convolutions and block attention.)"""
    import ctranslate2
    import torch.nn.functional as F
    from faster_whisper.feature_extractor import FeatureExtractor

    from glmvoice.audio import resample
    from training import asr
    from training.data.tts import Voice, espeak

    model_bin = asr.model_dir() / "model.bin"  # installs the pinned whisper-base on first use
    model = whisper_init.whisper_initialised(model_bin, "whisper-base")
    audio, rate = espeak("what is two plus three", Voice("en-us", 150))
    mel = FeatureExtractor(feature_size=model.config.num_mel_bins)(resample(audio, rate, 16000), padding=True)
    whisper = whisper_init.read_ct2(model_bin)
    # All six layers, as Whisper runs them: the preset keeps four, so the last two are loaded here.
    layers = torch.nn.ModuleList(model.layers)
    full = SpeechTokenizerConfig.from_name("whisper-base")
    full.quantize_position = full.pooling_position = full.encoder_layers
    state = whisper_init.encoder_state(whisper, full)
    for i in range(len(layers), full.encoder_layers):
        layer = type(model.layers[0])(full)
        layer.load_state_dict({k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"layers.{i}.")})
        layers.append(layer)
    x = torch.from_numpy(mel)[None]
    with torch.no_grad():
        h = F.gelu(F.conv1d(x, model.conv1.weight, model.conv1.bias, padding=1))
        h = F.gelu(F.conv1d(h, model.conv2.weight, model.conv2.bias, stride=2, padding=1)).transpose(1, 2)
        h = h + model.embed_positions.weight[: h.shape[1]]
        mask = torch.ones(1, 1, h.shape[1], h.shape[1], dtype=torch.bool)
        for layer in layers:
            h, _ = layer(h, mask)
        norm = [torch.from_numpy(whisper[f"encoder/layer_norm/{n}"].astype(np.float32)) for n in ("gamma", "beta")]
        h = F.layer_norm(h, (full.d_model,), *norm)
    reference = ctranslate2.models.Whisper(str(model_bin.parent), device="cpu", compute_type="float32")
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))))
    assert expected.shape == tuple(h.shape)
    np.testing.assert_allclose(h.numpy(), expected, atol=1e-3 * np.abs(expected).max())
