"""TensorRT variants: their tensors match our ONNX exports, and building stops clearly without TensorRT."""

import importlib.util

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from glmvoice.models.speech_decoder import DecoderConfig
from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig
from training.export.tensorrt import PLANS, VARIANTS, main

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_speech_tokenizer_dir, tiny_speech_decoder_dir):
    root = tmp_path_factory.mktemp("checkpoints")
    (root / "glm-4-voice-tokenizer").symlink_to(tiny_speech_tokenizer_dir)
    (root / "glm-4-voice-decoder").symlink_to(tiny_speech_decoder_dir)
    return root


def variant(name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((VARIANTS / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", sorted(PLANS))
def test_variant_tensors_match_the_onnx_export(name, checkpoints, tmp_path):
    config = variant(name)
    assert config.platform == "tensorrt_plan" and config.name == name
    graph = onnx.load(PLANS[name].export(checkpoints / PLANS[name].checkpoint_subdir, tmp_path)).graph
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        exported = {t.name: ONNX_TO_TRITON[t.type.tensor_type.elem_type] for t in actual}
        assert {t.name: model_config_pb2.DataType.Name(t.data_type) for t in declared} == exported


def test_variant_shapes_are_the_real_presets():
    tokenizer = SpeechTokenizerConfig.from_name("glm-4-voice")
    decoder = DecoderConfig.from_name("glm-4-voice")
    dims = {(c.name, t.name): list(t.dims) for c in map(variant, PLANS) for t in [*c.input, *c.output]}
    assert dims["speech_tokenizer_encoder", "mel"] == [tokenizer.num_mel_bins, -1]
    assert dims["speech_tokenizer_encoder", "hidden"] == [-1, tokenizer.d_model]
    assert dims["flow_estimator", "x"] == [decoder.flow.output_size, -1]
    assert dims["hift", "noise"] == [decoder.hift.nb_harmonics + 1, -1]


def test_engines_stop_with_a_clear_message_without_tensorrt(checkpoints, tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: plans are built by the gpu suite")
    assert main(["--checkpoints", str(checkpoints), "--out", str(tmp_path)]) == 2
    assert "TensorRT is not installed here" in capsys.readouterr().err
    assert {p.parent.name for p in (tmp_path / "onnx").rglob("*.onnx")} == set(PLANS)
