"""The LM against transformers' GlmForCausalLM (an implementation we did not write), the published
checkpoint layout, and the real-size parameter count."""

import json

import pytest
import torch

from glmvoice.models import llm as llm_module
from glmvoice.models.common import build_on_meta, load_safetensors
from glmvoice.models.llm import GLMConfig, Transformer, llm_info
from glmvoice.models.llm_checkpoint import INDEX_NAME, load_llm
from glmvoice.runtime.generate import generate

PROMPT_LEN = 48
DECODE_STEPS = 16
ATOL = 2e-4  # fp32; logits have std ~1, so this is a tight relative tolerance too
OUR_ROTARY = llm_module.apply_rotary


def hf_model_from_published(directory):
    """Builds GlmForCausalLM from the published files, mapping ChatGLM keys to HF's Glm keys here
    (independently of our loader): fused QKV rows split into q, k, v; dense_h_to_4h -> gate_up_proj."""
    from transformers import GlmConfig, GlmForCausalLM

    raw = json.loads((directory / "config.json").read_text())
    heads, groups, head_dim = raw["num_attention_heads"], raw["multi_query_group_num"], raw["kv_channels"]
    config = GlmConfig(
        vocab_size=raw["padded_vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["ffn_hidden_size"],
        num_hidden_layers=raw["num_layers"], num_attention_heads=heads, num_key_value_heads=groups, head_dim=head_dim,
        partial_rotary_factor=0.5, rms_norm_eps=raw["layernorm_epsilon"], rope_theta=10000.0 * raw["rope_ratio"],
        attention_bias=raw["add_qkv_bias"], max_position_embeddings=raw["seq_length"], tie_word_embeddings=False,
        pad_token_id=None, eos_token_id=None, bos_token_id=None, attn_implementation="eager",
    )
    published = load_safetensors(directory, "model.safetensors", INDEX_NAME)
    state = {
        "model.embed_tokens.weight": published["transformer.embedding.word_embeddings.weight"],
        "model.norm.weight": published["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": published["transformer.output_layer.weight"],
    }
    sizes = [heads * head_dim, groups * head_dim, groups * head_dim]
    for i in range(raw["num_layers"]):
        src, dst = f"transformer.encoder.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = published[src + f"self_attention.query_key_value.{kind}"].split(sizes, dim=0)
            for name, part in (("q", q), ("k", k), ("v", v)):
                state[dst + f"self_attn.{name}_proj.{kind}"] = part
        state[dst + "self_attn.o_proj.weight"] = published[src + "self_attention.dense.weight"]
        state[dst + "mlp.gate_up_proj.weight"] = published[src + "mlp.dense_h_to_4h.weight"]
        state[dst + "mlp.down_proj.weight"] = published[src + "mlp.dense_4h_to_h.weight"]
        state[dst + "input_layernorm.weight"] = published[src + "input_layernorm.weight"]
        state[dst + "post_attention_layernorm.weight"] = published[src + "post_attention_layernorm.weight"]
    model = GlmForCausalLM(config).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def models(tiny_llm_dir):
    ours, tokenizer = load_llm(tiny_llm_dir, dtype=torch.float32)
    return ours, hf_model_from_published(tiny_llm_dir), tokenizer


@pytest.fixture(scope="module")
def prompt(models):
    _, _, tokenizer = models
    generator = torch.Generator().manual_seed(7)
    return torch.randint(0, tokenizer.vocab_size, (2, PROMPT_LEN), generator=generator)  # [B, T]


def our_logits(model, idx):
    model.setup_caches(idx.shape[0], idx.shape[1])
    with torch.inference_mode():
        return model(idx, torch.arange(idx.shape[1]))


def hf_logits(model, idx):
    with torch.inference_mode():
        return model(input_ids=idx).logits.float()


def test_prefill_logits_match_transformers(models, prompt):
    ours, hf, _ = models
    a, b = our_logits(ours, prompt), hf_logits(hf, prompt)
    assert a.shape == b.shape == (2, PROMPT_LEN, ours.config.vocab_size)
    assert b.std() > 0.5  # the comparison is not between near-constant outputs
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def test_greedy_decode_with_kv_cache_matches_transformers(models, prompt):
    ours, hf, _ = models
    row = prompt[:1].tolist()[0]
    result = generate(ours, row, DECODE_STEPS)  # temperature 0 by default, no stop ids
    expected, seq = [], list(row)
    for _ in range(DECODE_STEPS):  # HF without a cache: the full sequence every step
        next_id = int(hf_logits(hf, torch.tensor([seq]))[0, -1].argmax())
        expected.append(next_id)
        seq.append(next_id)
    assert result.ids == expected
    assert len(set(expected)) > 3  # a non-degenerate continuation

    # Step logits from our cache equal HF's full-sequence logits at every decoded position.
    ours.setup_caches(1, len(seq))
    with torch.inference_mode():
        ours.prefill(torch.tensor([row]), torch.arange(len(row)))
        full = hf_logits(hf, torch.tensor([seq]))[0]
        for step, token in enumerate(expected[:-1]):
            pos = len(row) + step
            step_logits = ours.decode_one_token(torch.tensor([[token]]), torch.tensor([pos]))[0]
            torch.testing.assert_close(step_logits, full[pos], atol=ATOL, rtol=1e-4)


def _half_split_rotary(x, table):
    """The NeoX convention (pairs (i, i + R/2)) instead of ChatGLM's interleaved pairs."""
    rot = table.shape[-2] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    a, b = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, x_pass], dim=-1)


def _second_half_rotary(x, table):
    """Rotates the second half of each head instead of the first."""
    half = x.shape[-1] // 2
    flipped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    out = OUR_ROTARY(flipped, table)
    return torch.cat([out[..., half:], out[..., :half]], dim=-1)


VARIANTS = ["half_split_rotary", "second_half_rotary", "no_rotary", "swapped_gate_up", "kv_group_order"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_comparison_detects_wrong_variants(models, prompt, monkeypatch, variant):
    """Each plausible mistake moves the logits far beyond the parity tolerance."""
    ours, hf, _ = models
    reference = hf_logits(hf, prompt)
    saved = {k: v.clone() for k, v in ours.state_dict().items()}
    try:
        if variant == "half_split_rotary":
            monkeypatch.setattr(llm_module, "apply_rotary", _half_split_rotary)
        elif variant == "second_half_rotary":
            monkeypatch.setattr(llm_module, "apply_rotary", _second_half_rotary)
        elif variant == "no_rotary":
            monkeypatch.setattr(llm_module, "apply_rotary", lambda x, table: x)
        elif variant == "swapped_gate_up":
            with torch.no_grad():
                for layer in ours.layers:
                    gate, up = layer.feed_forward.w13.weight.chunk(2, dim=0)
                    layer.feed_forward.w13.weight.copy_(torch.cat([up, gate]))
        elif variant == "kv_group_order":
            # Permuting query heads (and wo's columns alike) so that query head h reads group
            # h % groups instead of h // (heads / groups): only the grouping changes.
            c = ours.config
            order = torch.arange(c.n_head).view(c.n_local_heads, -1).t().reshape(-1)
            with torch.no_grad():
                for layer in ours.layers:
                    attn = layer.attention
                    for t in (attn.wqkv.weight, attn.wqkv.bias):
                        q = t[: c.n_head * c.head_dim].view(c.n_head, c.head_dim, *t.shape[1:])
                        t[: c.n_head * c.head_dim] = q[order].reshape(-1, *t.shape[1:])
                    wo = attn.wo.weight.view(c.dim, c.n_head, c.head_dim)
                    attn.wo.weight.copy_(wo[:, order].reshape(c.dim, -1))
        wrong = our_logits(ours, prompt)
    finally:
        ours.load_state_dict(saved)
    assert (wrong - reference).abs().max() > 100 * ATOL


def test_loader_reads_published_layout(tiny_llm_dir):
    index = json.loads((tiny_llm_dir / INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tiny_llm_dir / s).exists() for s in shards)
    assert "transformer.encoder.layers.0.self_attention.query_key_value.bias" in index["weight_map"]
    assert "transformer.rotary_pos_emb.inv_freq" in index["weight_map"]
    raw = json.loads((tiny_llm_dir / "config.json").read_text())
    assert raw["model_type"] == "chatglm" and raw["multi_query_attention"] is True
    model, tokenizer = load_llm(tiny_llm_dir)
    assert model.config.vocab_size == raw["padded_vocab_size"] >= tokenizer.vocab_size
    assert model.config.n_local_heads == raw["multi_query_group_num"]


def test_loader_rejects_unknown_tensor(tiny_llm_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    for f in tiny_llm_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    save_file({"transformer.encoder.layers.0.mlp.extra.weight": torch.zeros(2)}, tmp_path / "extra.safetensors")
    index["weight_map"]["transformer.encoder.layers.0.mlp.extra.weight"] = "extra.safetensors"
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="unexpected tensor"):
        load_llm(tmp_path)


def test_real_preset_parameter_count_on_meta():
    info = llm_info(GLMConfig.from_name("glm-4-voice"))
    # REFERENCE.md: 9.54 B counting the padded vocabulary and the untied output layer.
    assert abs(info["parameters"] - 9.54e9) / 9.54e9 < 0.01
    assert info["kv_bytes_per_token_bf16"] == 40 * 1024
    meta = build_on_meta(lambda: Transformer(GLMConfig.from_name("glm-4-voice")))
    assert next(meta.parameters()).is_meta
    assert info["parameters"] == sum(p.numel() for p in meta.parameters())


def test_training_forward_equals_cached_forward(models, prompt):
    ours, _, _ = models
    with torch.inference_mode():
        uncached = ours(prompt)  # no input_pos: plain causal attention, as a trainer calls it
    torch.testing.assert_close(uncached, our_logits(ours, prompt), atol=1e-5, rtol=1e-5)


def test_onnx_prefill_and_decode_match_torch(models, tmp_path):
    from training.export.onnx_llm import check_against_torch, export_llm_onnx

    ours, _, tokenizer = models
    paths = export_llm_onnx(ours, tmp_path)
    # Shapes differ from the traced ones (batch 1, 5 tokens, past 3): dynamic axes must hold.
    prompt = torch.randint(0, tokenizer.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    report = check_against_torch(ours, paths, prompt, steps=4)
    assert report["max_abs_diff"] < 1e-4
    assert report["ort_ids"] == report["torch_ids"]
    assert report["cache_length"] == 9 + 4


def test_cli_generate_text_greedy(tiny_llm_dir, capsys):
    import argparse

    from glmvoice.chat_template import Conversation
    from glmvoice.cli import generate as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(tiny_llm_dir), "--text", "Hello, 你好", "--max-new-tokens", "24",
                              "--temperature", "0"])
    assert cli.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    model, tokenizer = load_llm(tiny_llm_dir)
    prompt = Conversation(tokenizer).add_text("Hello, 你好")
    assert out["prompt_ids"] == prompt
    assert out["ids"] == generate(model, prompt, 24, tokenizer.stop_ids).ids
    audio = [i - tokenizer.audio_offset for i in out["ids"] if tokenizer.is_audio(i)]
    assert out["speech_codes"] == audio
    assert out["text"] == tokenizer.decode([i for i in out["ids"] if tokenizer.is_text(i)])


def test_published_chatglm_config_maps_to_the_real_preset():
    """config.json with the fields and values of the published glm-4-voice-9b, as a third-party mirror
    lists them (no seq_length; HF's num_hidden_layers / vocab_size aliases; eos and pad ids)."""
    from glmvoice.models.llm_checkpoint import config_from_chatglm

    raw = {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"], "add_bias_linear": False, "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True, "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
        "ffn_hidden_size": 13696, "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 4096,
        "kv_channels": 128, "layernorm_epsilon": 3.90625e-08, "multi_query_attention": True,
        "multi_query_group_num": 2, "num_attention_heads": 32, "num_layers": 40, "original_rope": True,
        "padded_vocab_size": 168960, "post_layer_norm": True, "rmsnorm": True, "rope_ratio": 1,
        "torch_dtype": "bfloat16", "use_cache": True, "classifier_dropout": None, "num_hidden_layers": 40,
        "vocab_size": 168960, "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
        "transformers_version": "4.44.1",
    }
    assert config_from_chatglm(raw) == GLMConfig.from_name("glm-4-voice")
    with pytest.raises(ValueError, match="original_rope"):
        config_from_chatglm(raw | {"original_rope": False})


def test_per_row_positions_and_cache_rows_match_transformers(models):
    """In-flight batching: two requests of different lengths in cache rows 1 and 0, one batched decode step."""
    ours, hf, tokenizer = models
    generator = torch.Generator().manual_seed(11)
    a, b = (torch.randint(0, tokenizer.vocab_size, (n,), generator=generator).tolist() for n in (20, 13))
    ours.setup_caches(2, 64)
    with torch.inference_mode():
        for ids, row in ((a, 1), (b, 0)):  # prefill each request into its own row
            ours(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1)[None], rows=torch.tensor([row]))
        step = torch.tensor([[a[-1]], [b[-1]]])
        positions = torch.tensor([[len(a) - 1], [len(b) - 1]])
        logits = ours(step, positions, rows=torch.tensor([1, 0]))[:, -1]
    torch.testing.assert_close(logits[0], hf_logits(hf, torch.tensor([a]))[0, -1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(logits[1], hf_logits(hf, torch.tensor([b]))[0, -1], atol=ATOL, rtol=1e-4)


def test_cli_generate_from_real_speech(tiny_llm_dir, tiny_speech_tokenizer_dir, librivox_clips, capsys):
    import argparse

    from glmvoice.audio import read_wav
    from glmvoice.cli import generate as cli
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

    wav = librivox_clips[0][0]
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(tiny_llm_dir), "--audio", str(wav), "--tokenizer",
                              str(tiny_speech_tokenizer_dir), "--max-new-tokens", "8", "--seed", "1"])
    assert cli.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    codes = load_speech_tokenizer(tiny_speech_tokenizer_dir).tokenize(*read_wav(wav))
    assert out["input_speech_codes"] == codes and len(codes) > 10
    _, tokenizer = load_llm(tiny_llm_dir)
    begin = out["prompt_ids"].index(tokenizer.token_id("<|begin_of_audio|>"))
    assert out["prompt_ids"][begin + 1: begin + 1 + len(codes)] == tokenizer.audio_ids(codes)
    assert len(out["ids"]) <= 8
