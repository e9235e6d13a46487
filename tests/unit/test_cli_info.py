"""`glmvoice info`: real-size presets counted on the meta device, checkpoint directories recognised."""

import json

import pytest

from glmvoice.cli import main


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_real_presets_match_the_published_parameter_counts(capsys):
    networks = run_json(capsys, "info", "--preset", "glm-4-voice")["networks"]
    assert networks["speech_tokenizer"]["parameters"] == pytest.approx(343.6e6, rel=0.01)
    assert networks["llm"]["parameters"] == pytest.approx(9.54e9, rel=0.01)
    assert networks["speech_decoder"]["flow_parameters"] == pytest.approx(111.2e6, rel=0.02)
    assert networks["speech_decoder"]["hift_parameters_with_weight_norm"] == pytest.approx(20.46e6, rel=0.02)
    assert networks["llm"]["kv_bytes_per_token_bf16"] == 40 * 1024


def test_checkpoint_directories_are_recognised_by_layout(capsys, tiny_speech_tokenizer_dir, tiny_llm_dir, tiny_speech_decoder_dir):
    assert run_json(capsys, "info", "--checkpoint", str(tiny_speech_tokenizer_dir))["network"] == "speech_tokenizer"
    llm = run_json(capsys, "info", "--checkpoint", str(tiny_llm_dir))
    assert llm["network"] == "llm"
    # Read from the tokenizer files, not assumed: the tiny vocabulary puts <|audio_0|> elsewhere than 152353.
    from glmvoice.models.text_tokenizer import TextTokenizer

    assert llm["audio_offset"] == TextTokenizer.from_directory(tiny_llm_dir).token_id("<|audio_0|>")
    assert run_json(capsys, "info", "--checkpoint", str(tiny_speech_decoder_dir))["network"] == "speech_decoder"


def test_a_directory_that_is_no_checkpoint_is_a_clear_error(capsys, tmp_path):
    assert main(["info", "--checkpoint", str(tmp_path)]) == 2
    assert "not a glm-4-voice checkpoint directory" in capsys.readouterr().err
