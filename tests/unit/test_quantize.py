"""Weight-only INT8 / INT4 quantization: packing, the kernels against the dequantized weights, quantized
checkpoints (`glmvoice quantize`) against on-the-fly quantization, and the engine on a quantized model."""

import json
import threading

import pytest
import torch
import torch.nn.functional as F

from glmvoice.cli import main as cli_main
from glmvoice.models.llm_checkpoint import load_llm, stored_quantization
from glmvoice.models.quantize import (
    QuantizedLinear,
    QuantScheme,
    dequantize_weight,
    quantize_weight,
    unpack_int4,
    weight_bytes,
)
from glmvoice.runtime.generate import generate
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine
from glmvoice.sampling import SamplingParams

SCHEMES = [QuantScheme(8), QuantScheme(4), QuantScheme(4, 64)]
GREEDY = SamplingParams(temperature=0.0)


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_equals_a_float_matmul_over_the_dequantized_weight(scheme, dtype):
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(320, 192, generator=generator), torch.randn(320, generator=generator)
    x = torch.randn(2, 5, 192, generator=generator)
    stored, scale = quantize_weight(weight.to(dtype), scheme)
    layer = QuantizedLinear(stored, scale, bias, scheme, 192, dtype)
    reference = F.linear(x, dequantize_weight(stored, scale, scheme.bits), bias)
    tolerance = 1e-4 if dtype == torch.float32 else 0.1 * reference.abs().max().item() / 10
    assert (layer(x.to(dtype)).float() - reference).abs().max().item() < tolerance


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_absmax_round_trip_is_within_half_a_step(scheme):
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    stored, scale = quantize_weight(weight, scheme)
    error = (dequantize_weight(stored, scale, scheme.bits) - weight).abs()
    step = scale[:, None] if scheme.bits == 8 else scale.repeat_interleave(256 // scale.shape[1], dim=1)
    assert (error <= step / 2 + 1e-6).all()
    if scheme.bits == 4:  # two values per byte, q + 8 in 0..15, and the packing is lossless
        q = unpack_int4(stored)
        assert stored.dtype == torch.uint8 and stored.shape == (64, 128) and 0 <= q.min() and q.max() <= 15
        assert torch.equal(unpack_int4((q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8)), q)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(bits=3), "bits"), (dict(bits=8, group_size=128), "INT4"), (dict(bits=4, group_size=100), "group size")],
)
def test_bad_schemes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantScheme(**kwargs)


def test_a_group_that_does_not_divide_the_layer_is_refused():
    with pytest.raises(ValueError, match="groups of 128"):
        quantize_weight(torch.randn(8, 192), QuantScheme(4, 128))


@pytest.fixture(scope="module")
def quantized_dirs(tiny_llm_dir, tmp_path_factory):
    out = {}
    for name, args in (("int8", ["--bits", "8"]), ("int4-g64", ["--bits", "4", "--group-size", "64"])):
        out[name] = tmp_path_factory.mktemp(name)
        assert cli_main(["quantize", "--checkpoint", str(tiny_llm_dir), *args, "--out", str(out[name])]) == 0
    return out


@pytest.mark.parametrize("name", ["int8", "int4-g64"])
def test_quantized_checkpoint_loads_as_on_the_fly_quantization(tiny_llm_dir, quantized_dirs, name):
    scheme = QuantScheme.parse(name)
    assert stored_quantization(quantized_dirs[name]) == scheme
    assert json.loads((quantized_dirs[name] / "config.json").read_text())["quantization"]["bits"] == scheme.bits
    stored, _ = load_llm(quantized_dirs[name])
    on_the_fly, _ = load_llm(tiny_llm_dir, quantize=scheme)
    floating, _ = load_llm(tiny_llm_dir)
    assert sum(isinstance(m, QuantizedLinear) for m in stored.modules()) == 4 * stored.config.n_layer
    idx = torch.tensor([[3, 5, 7, 11, 13]])
    with torch.inference_mode():
        assert torch.equal(stored(idx), on_the_fly(idx))
        # Random tiny weights (std 0.1) are not a quality measure; this only checks the layers compute the same function.
        assert torch.allclose(stored(idx), floating(idx), atol=0.5 if scheme.bits == 8 else 5.0)
    ratio = weight_bytes(stored)["quantized_layers"] / weight_bytes(floating)["total"]
    assert ratio < (0.3 if scheme.bits == 8 else 0.2)


def test_a_quantized_checkpoint_refuses_another_scheme(quantized_dirs):
    with pytest.raises(ValueError, match="quantized as"):
        load_llm(quantized_dirs["int8"], quantize=QuantScheme(4))


def test_engine_on_a_quantized_model_equals_its_single_request_path(quantized_dirs):
    model, _ = load_llm(quantized_dirs["int4-g64"])
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], [4, 4, 4, 4, 4, 4, 4]]
    engine = LLMEngine(model, EngineConfig(max_slots=2, max_seq_len=64, prefill_chunk=4)).start()
    results = [([], [], threading.Event()) for _ in prompts]
    try:
        for prompt, (ids, reasons, done) in zip(prompts, results):
            on_finish = lambda reason, error, reasons=reasons, done=done: (reasons.append(reason), done.set())  # noqa: E731
            engine.submit(GenerationRequest(prompt, GREEDY, 8), ids.append, on_finish)
        assert all(done.wait(60) for _, _, done in results)
    finally:
        engine.stop()
    for prompt, (ids, reasons, _) in zip(prompts, results):
        assert reasons == ["length"] and ids == generate(model, prompt, 8, params=GREEDY).ids
