"""The CUDA path at tiny size: each network on the GPU against the same checkpoint on the CPU, and the LM engine
in bfloat16 against float32. Run by `make test-gpu`; where there is no CUDA device every test is skipped with
that reason (pytest exits 0 and says so).

GLMVOICE_GPU_TEST_DEVICE=cpu runs the same checks with the CPU as the "device" (float32 parity is then exact
and bf16 runs on the CPU): that is how this file is tested on machines without a GPU.

Tolerances (max |device - cpu| relative to the CPU output's largest magnitude, float32 with TF32 off, since
parity is about our kernels, not TF32's 10-bit mantissa): 1e-4 per network, 1e-3 for the 10-step flow solve
and the vocoder. bf16 engine: the token the bf16 engine picks at each greedy step must score, under the fp32
model, within 5% of the fp32 logit range of the fp32 best token (bf16 keeps 8 mantissa bits, ~0.4% per
rounding, summed over the tiny model's layers), and the bf16 logits stay within 5% of that range.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from glmvoice.audio import read_wav

DEVICE = os.environ.get("GLMVOICE_GPU_TEST_DEVICE", "cuda")
CLIP = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                       reason="no CUDA device on this machine: the GPU suite runs on a GPU node"),
]


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off for the parity checks; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_close(device_out, cpu_out, rel: float, what: str) -> None:
    a = torch.as_tensor(device_out).detach().float().cpu()
    b = torch.as_tensor(cpu_out).detach().float().cpu()
    assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    print(f"{what}: max |{DEVICE} - cpu| = {err:.3g} ({err / max(scale, 1e-12):.2g} of {scale:.3g})")
    assert err <= rel * scale, f"{what}: max |{DEVICE} - cpu| = {err:.3g} > {rel} x {scale:.3g}"


# ---- speech tokenizer -----------------------------------------------------------------------------
def test_speech_tokenizer_codes_on_the_device_equal_the_cpu(tiny_speech_tokenizer_dir):
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

    samples, rate = read_wav(CLIP)
    cpu = load_speech_tokenizer(tiny_speech_tokenizer_dir, "cpu").tokenize(samples, rate)
    dev = load_speech_tokenizer(tiny_speech_tokenizer_dir, DEVICE).tokenize(samples, rate)
    assert len(dev) == len(cpu) > 0
    # Codes are an argmin over distances: a near tie may flip under other kernels; nearly all must agree.
    agree = np.mean(np.asarray(dev) == np.asarray(cpu))
    print(f"speech tokenizer: {agree:.1%} of {len(cpu)} codes equal")
    assert agree >= 0.98


# ---- LM -------------------------------------------------------------------------------------------
def sequence(vocab: int, n: int = 48) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(5)).tolist()


def all_logits(model, ids: list[int]) -> torch.Tensor:
    device = model.output.weight.device
    model.setup_caches(1, len(ids))
    with torch.inference_mode():
        idx = torch.tensor([ids], device=device)
        return model(idx, torch.arange(len(ids), device=device))[0].float().cpu()  # [T, V]


def test_lm_logits_and_greedy_reply_on_the_device_equal_the_cpu(tiny_llm_dir):
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.runtime.generate import generate

    cpu, _ = load_llm(tiny_llm_dir, "cpu", torch.float32)
    dev, _ = load_llm(tiny_llm_dir, DEVICE, torch.float32)
    ids = sequence(cpu.config.vocab_size)
    assert_close(all_logits(dev, ids), all_logits(cpu, ids), 1e-4, "LM logits")
    assert generate(dev, ids[:16], 24).ids == generate(cpu, ids[:16], 24).ids


def test_bf16_engine_stays_within_tolerance_of_fp32(tiny_llm_dir):
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine
    from glmvoice.sampling import SamplingParams

    fp32, _ = load_llm(tiny_llm_dir, "cpu", torch.float32)
    bf16, _ = load_llm(tiny_llm_dir, DEVICE, torch.bfloat16)
    ids = sequence(fp32.config.vocab_size)
    reference = all_logits(fp32, ids)
    span = float(reference.max() - reference.min())
    drift = float((all_logits(bf16, ids) - reference).abs().max())
    print(f"bf16 LM logits: max |bf16 - fp32| = {drift:.3g} (logit span {span:.3g})")
    assert drift <= 0.05 * span

    prompts = [ids[:12], ids[5:30], ids[20:28]]
    replies: list[list[int]] = [[] for _ in prompts]
    done = [threading.Event() for _ in prompts]
    engine = LLMEngine(bf16, EngineConfig(max_slots=4, max_seq_len=128, prefill_chunk=8)).start()
    try:
        for prompt, reply, event in zip(prompts, replies, done):
            engine.submit(GenerationRequest(prompt, SamplingParams(temperature=0.0), 16), reply.append,
                          lambda reason, error, event=event: event.set())
        assert all(event.wait(120) for event in done)
    finally:
        engine.stop()
    for prompt, reply in zip(prompts, replies):
        assert len(reply) == 16
        scored = all_logits(fp32, prompt + reply)[len(prompt) - 1 : -1]  # fp32 logits where each reply id was picked
        picked = scored.gather(1, torch.tensor(reply)[:, None])[:, 0]
        gap = (scored.max(dim=1).values - picked).max().item()
        print(f"bf16 engine: worst fp32 shortfall of a picked token {gap:.3g} (logit span {span:.3g})")
        assert gap <= 0.05 * span


# ---- speech decoder -------------------------------------------------------------------------------
def test_speech_decoder_flow_and_vocoder_on_the_device_equal_the_cpu(tiny_speech_decoder_dir):
    from glmvoice.models.speech_decoder import load_speech_decoder

    cpu = load_speech_decoder(tiny_speech_decoder_dir, "cpu")
    dev = load_speech_decoder(tiny_speech_decoder_dir, DEVICE)
    codes = torch.randint(0, cpu.codebook_size, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    mel = cpu.decode_mel(codes, seed=11)
    assert_close(dev.decode_mel(codes, seed=11), mel, 1e-3, "flow mel")
    assert_close(dev.vocode(mel.to(dev.device), seed=11), cpu.vocode(mel, seed=11), 1e-3, "HiFT audio")


def test_decoder_stream_on_the_device_equals_the_cpu_stream(tiny_speech_decoder_dir):
    from glmvoice.models.speech_decoder import load_speech_decoder
    from glmvoice.runtime.decoder_stream import DecoderStreams

    codes = torch.randint(0, 1024, (30,), generator=torch.Generator().manual_seed(4)).tolist()
    outs = []
    for device in (DEVICE, "cpu"):
        streams = DecoderStreams(load_speech_decoder(tiny_speech_decoder_dir, device))
        with streams.stream("s", seed=2) as stream:
            chunks = [stream.push(codes[i : i + 10]) for i in range(0, len(codes), 10)]
            outs.append(np.concatenate(chunks + [stream.finalize()]))
    assert_close(outs[0], outs[1], 1e-3, "decoder stream audio")
