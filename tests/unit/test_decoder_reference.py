"""Our speech decoder against the official GLM-4-Voice decoder code, stage by stage.

tests/reference/decoder_official.npz was written by tests/reference/make_decoder_fixtures.py, which runs the
official flow_inference.py / cosyvoice / Matcha-TTS code (pinned commits, outside this repo) on the same tiny
checkpoint these tests build (the fingerprint check below says so). Each stage is fed the official inputs, so
a mismatch points at one stage. Tolerances are max |ours - official| relative to the reference's largest
magnitude. Measured on one core (torch 2.13 CPU): encoder 0, mu 3e-7, estimator 6e-7, CFM solve 3e-7,
HiFT 7e-7. Allowed: 1e-5 per network call, 1e-4 for the 10-step CFM solve (20 estimator calls) and HiFT
(our sine phase accumulates in float64, the official one in float32), room for other BLAS/CPU kernels.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reference.make_decoder_fixtures import OUT as FIXTURES
from tests.reference.make_decoder_fixtures import checkpoint_fingerprint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGENERATE = "regenerate with tests/reference/make_decoder_fixtures.py (see its docstring)"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES))


@pytest.fixture(scope="module")
def flow(tiny_speech_decoder, tiny_speech_decoder_dir, ref):
    fingerprint = checkpoint_fingerprint(Path(tiny_speech_decoder_dir))
    assert fingerprint.shape == ref["checkpoint_fingerprint"].shape and np.allclose(
        fingerprint, ref["checkpoint_fingerprint"], rtol=1e-9, atol=1e-9), (
        f"the tiny decoder checkpoint differs from the one the fixtures were made from: {REGENERATE}")
    return tiny_speech_decoder.flow


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def assert_close(ours: torch.Tensor, theirs: np.ndarray, rel: float, what: str) -> None:
    ours = ours.detach().float().cpu().numpy()
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs official {theirs.shape}"
    scale = float(np.abs(theirs).max())
    err = float(np.abs(ours - theirs).max())
    assert err <= rel * scale, f"{what}: max |ours - official| = {err:.3g} > {rel} x {scale:.3g}"


def lens(ref) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([ref["tokens"].shape[1]]), torch.tensor([ref["mu"].shape[-1]])


@torch.inference_mode()
def test_encoder_output(flow, ref):
    tokens = t(ref["tokens"])
    token_lens, _ = lens(ref)
    assert_close(flow.encoder(flow.input_embedding(tokens), token_lens), ref["encoder_out"], 1e-5, "encoder")


@torch.inference_mode()
def test_mu_after_length_regulator(flow, ref):
    token_lens, mel_lens = lens(ref)
    assert mel_lens.item() == flow.cfg.mel_frames(token_lens.item())
    assert_close(flow.encode(t(ref["tokens"]), token_lens, mel_lens), ref["mu"], 1e-5, "mu")


@torch.inference_mode()
def test_one_estimator_call_in_the_pipeline(flow, ref):
    # The official first call: conditional pass at t = 0 on the CFM noise, cond all zeros.
    mu = t(ref["mu"])
    out = flow.decoder.estimator(t(ref["cfm_noise"]), t(ref["est_mask"]), mu, t(ref["est_t"]), t(ref["est_spks"]),
                                 torch.zeros_like(mu))
    assert_close(out, ref["est_out"], 1e-5, "estimator (pipeline call)")


@torch.inference_mode()
def test_one_estimator_call_with_cond_spks_and_time(flow, ref):
    args = [t(ref[k]) for k in ("rnd_x", "rnd_mask", "rnd_mu", "rnd_t", "rnd_spks", "rnd_cond")]
    assert_close(flow.decoder.estimator(*args), ref["rnd_out"], 1e-5, "estimator (random call)")


@torch.inference_mode()
def test_speaker_projection_of_the_zero_xvector(flow, ref):
    assert_close(flow.speaker(1, torch.device("cpu")), ref["est_spks"], 1e-6, "spks")


@torch.inference_mode()
def test_cfm_solve_with_guidance_from_the_saved_noise(flow, ref):
    assert flow.cfg.inference_cfg_rate == pytest.approx(float(ref["cfg_rate"]))
    mu = t(ref["mu"])
    _, mel_lens = lens(ref)
    mel = flow.sample(mu, mel_lens, torch.zeros_like(mu), t(ref["cfm_noise"]))
    assert_close(mel, ref["mel"], 1e-4, "CFM solve")
    # Guard: the reference separates guidance from no guidance, so a sign or rate error cannot hide in tolerance.
    unguided = flow.sample(mu, mel_lens, torch.zeros_like(mu), t(ref["cfm_noise"]), cfg_rate=0.0)
    assert np.abs(unguided.numpy() - ref["mel"]).max() > 100 * 1e-4 * np.abs(ref["mel"]).max()


@torch.inference_mode()
def test_whole_flow_inference(flow, ref):
    token_lens, _ = lens(ref)
    assert_close(flow.inference(t(ref["tokens"]), token_lens, t(ref["cfm_noise"])), ref["mel"], 1e-4, "flow.inference")


@torch.inference_mode()
def test_hift_with_the_official_random_source_terms(tiny_speech_decoder, flow, ref):
    hift = tiny_speech_decoder.hift
    mel = t(ref["hift_mel"])
    harmonics = hift.cfg.nb_harmonics + 1
    audio, _ = hift(mel, torch.tensor([mel.shape[-1]]), torch.zeros(1, harmonics), t(ref["hift_phase"]), t(ref["hift_noise"]))
    assert_close(audio, ref["hift_audio"], 1e-4, "HiFT audio")
