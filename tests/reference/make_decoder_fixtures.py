"""Writes tests/reference/decoder_official.npz: the OFFICIAL GLM-4-Voice decoder run on our tiny checkpoint.

The speech decoder had no independent reference (only stream vs offline vs Triton, all our own code). This
script runs the official code -- `flow_inference.AudioDecoder` with its cosyvoice and Matcha-TTS modules --
on the tiny random checkpoint in the published layout (config.yaml, flow.pt, hift.pt, written by
tests/fixtures/speech_decoder.py), and records what each stage produced inside one official call:

  encoder      official flow.encoder output for the embedded tokens          (forward hook)
  mu           official flow.length_regulator output (mu before the CFM)     (forward hook)
  estimator    the first official estimator call (conditional pass at t = 0; its x is the CFM noise,
               its mu is mu, its cond zeros): mask, t, spks and the output  (forward hook)
  est_random   one direct estimator call with random x, mu, cond, spks and t = 0.37
  cfm          the noise official ConditionalCFM drew (torch.randn_like after its manual_seed(42)) and
               the mel flow.inference returned: the whole Euler solve with classifier-free guidance
  hift         the random start phases (Uniform.sample) and SineGen noise (randn_like) the official HiFT
               drew, recorded, with the audio it returned

tests/unit/test_decoder_reference.py feeds the recorded inputs and random draws to our networks.

Official code, outside this repository (never copied into it):
  GLM-4-Voice  github.com/THUDM/GLM-4-Voice (now zai-org) at eb00ce9142e8d98b0ed7c57cd47e0d6d5dce9a1a
  Matcha-TTS   github.com/shivammehta25/Matcha-TTS at dd9105b34bf2be2230f4aa1e4769fb586a3c824e
               (the commit GLM-4-Voice pins as its third_party/Matcha-TTS submodule)
Their Python dependencies (pins from GLM-4-Voice's requirements.txt) go into a private --target dir, so
the project's venv is untouched.

Regenerate (about a minute on one core):
  REF=~/.cache/glmvoice/decoder-reference
  git clone https://github.com/THUDM/GLM-4-Voice $REF/src/GLM-4-Voice && git -C $REF/src/GLM-4-Voice checkout eb00ce9142e8
  git clone https://github.com/shivammehta25/Matcha-TTS $REF/src/Matcha-TTS && git -C $REF/src/Matcha-TTS checkout dd9105b34bf2
  .venv/bin/pip install --no-deps --target $REF/site HyperPyYAML==1.2.2 ruamel.yaml==0.18.6 omegaconf==2.3.0 \
      antlr4-python3-runtime==4.9.3 conformer==0.3.2 diffusers==0.27.2 einops==0.8.1 huggingface_hub==0.25.2
  OMP_NUM_THREADS=1 .venv/bin/python -m tests.reference.make_decoder_fixtures --reference $REF

Deviations from calling the official code bare, each only about the environment:
- `.eval()` on flow and HiFT: the official AudioDecoder never calls it, so the encoder's dropout (p 0.1)
  stays on and its output is random; ours runs in eval mode and the comparison needs a deterministic target.
- `torchaudio` is imported by flow_inference.py but unused on this path, and does not import beside our
  torch: an empty module stands in. `matcha.utils` pulls hydra/lightning/rich only for a logger: a stand-in
  package supplies `get_pylogger = logging.getLogger`. `transformers` is hidden from diffusers 0.27.2 (our
  venv's transformers needs a newer huggingface_hub than diffusers 0.27.2 can import).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import logging
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).with_name("decoder_official.npz")
GLM4VOICE_COMMIT = "eb00ce9142e8d98b0ed7c57cd47e0d6d5dce9a1a"
MATCHA_COMMIT = "dd9105b34bf2be2230f4aa1e4769fb586a3c824e"
N_TOKENS = 23  # not a multiple of the block size (10): the last block is partial
HIFT_FRAMES = 24  # HiFT on a short mel keeps the recorded noise (harmonics x 256 x frames) small
TOKEN_SEED, INPUT_SEED = 7, 11


def checkpoint_fingerprint(directory: Path) -> np.ndarray:
    """Sum and sum of squares of every tensor in flow.pt and hift.pt (sorted keys): says whether the tiny
    checkpoint the tests build is the one the fixtures were made from."""
    values = []
    for name in ("flow.pt", "hift.pt"):
        state = torch.load(directory / name, map_location="cpu", weights_only=True)
        for key in sorted(state):
            t = state[key].double()
            values += [t.sum().item(), t.pow(2).sum().item()]
    return np.array(values, dtype=np.float64)


def _import_official(reference: Path):
    sys.path[:0] = [str(reference / "site"), str(reference / "src" / "GLM-4-Voice"), str(reference / "src" / "Matcha-TTS")]
    torchaudio = types.ModuleType("torchaudio")
    torchaudio.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = torchaudio
    pylogger = types.ModuleType("matcha.utils.pylogger")
    pylogger.get_pylogger = logging.getLogger
    utils = types.ModuleType("matcha.utils")
    utils.__path__ = []
    utils.pylogger = pylogger
    sys.modules.update({"matcha.utils": utils, "matcha.utils.pylogger": pylogger, "transformers": None})
    import flow_inference  # the official module

    return flow_inference


@contextmanager
def _recording(obj, name: str, calls: list):
    """Wraps obj.name so each call's result is appended to `calls` (the value itself is untouched)."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.detach().clone())
        return out

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        setattr(obj, name, original)


def _first_call_hook(module: torch.nn.Module, store: dict, key: str):
    def hook(mod, args, kwargs, output):
        if key not in store:
            store[key] = (args, kwargs, output)

    return module.register_forward_hook(hook, with_kwargs=True)


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def generate(reference: Path, out: Path) -> dict[str, np.ndarray]:
    from tests.fixtures.speech_decoder import build_tiny_speech_decoder_dir

    torch.set_num_threads(1)
    flow_inference = _import_official(reference)
    from torch.distributions.uniform import Uniform

    ckpt = build_tiny_speech_decoder_dir(Path(tempfile.mkdtemp(prefix="glmvoice-decoder-ref-")))
    official = flow_inference.AudioDecoder(str(ckpt / "config.yaml"), str(ckpt / "flow.pt"), str(ckpt / "hift.pt"), device="cpu")
    flow, hift = official.flow.eval(), official.hift.eval()
    vocab = flow.input_embedding.num_embeddings
    tokens = torch.randint(0, vocab, (1, N_TOKENS), generator=torch.Generator().manual_seed(TOKEN_SEED), dtype=torch.int32)

    seen: dict = {}
    hooks = [_first_call_hook(flow.encoder, seen, "encoder"), _first_call_hook(flow.length_regulator, seen, "mu"),
             _first_call_hook(flow.decoder.estimator, seen, "estimator")]
    cfm_noise: list = []
    with _recording(torch, "randn_like", cfm_noise):
        mel = flow.inference(token=tokens, token_len=torch.tensor([N_TOKENS], dtype=torch.int32),
                             prompt_token=torch.zeros(1, 0, dtype=torch.int32), prompt_token_len=torch.tensor([0], dtype=torch.int32),
                             prompt_feat=torch.zeros(1, 0, 80), prompt_feat_len=torch.tensor([0], dtype=torch.int32),
                             embedding=torch.zeros(1, flow.spk_embed_affine_layer.in_features))
    for h in hooks:
        h.remove()
    assert len(cfm_noise) == 1, f"expected one noise draw in the CFM, saw {len(cfm_noise)}"
    enc_out, enc_mask = seen["encoder"][2]
    mu, _ = seen["mu"][2]
    est_args, est_kwargs, est_out = seen["estimator"]
    x, mask, est_mu, t, spks, cond = est_args
    # The first call is the conditional pass at t = 0 on the drawn noise: store only what is new in it.
    assert torch.equal(x, cfm_noise[0]) and torch.equal(est_mu, mu.transpose(1, 2)) and not cond.any()

    # A direct estimator call whose cond and time are not the pipeline's zeros and zero.
    gen = torch.Generator().manual_seed(INPUT_SEED)
    frames = mu.shape[1]
    r_x, r_mu, r_cond = (torch.randn(1, 80, frames, generator=gen) for _ in range(3))
    # No padding: the official estimator normalises over padded frames too (it only ever runs on batch 1),
    # while ours keeps padded items equal to unpadded ones (test_padded_batch_equals_single_items).
    r_mask = torch.ones(1, 1, frames)
    r_t = torch.tensor([0.37])
    r_spks = flow.spk_embed_affine_layer(torch.nn.functional.normalize(torch.randn(1, flow.spk_embed_affine_layer.in_features, generator=gen), dim=1))
    with torch.inference_mode():
        r_out = flow.decoder.estimator(r_x, r_mask, r_mu, r_t, r_spks, r_cond)

    hift_mel = mel[:, :, :HIFT_FRAMES].clone()
    phases, sine_noise = [], []
    with _recording(Uniform, "sample", phases), _recording(torch, "randn_like", sine_noise):
        audio, _source = hift.inference(mel=hift_mel)
    harmonics = hift.m_source.l_sin_gen.harmonic_num + 1
    sine_noise = [n for n in sine_noise if n.dim() == 3 and n.shape[1] == harmonics]
    assert len(phases) == 1 and len(sine_noise) == 1, "the official SineGen's random draws changed shape"

    arrays = {
        "checkpoint_fingerprint": checkpoint_fingerprint(ckpt),
        "tokens": _np(tokens).astype(np.int64),
        "encoder_out": _np(enc_out), "encoder_mask": _np(enc_mask),
        "mu": _np(mu.transpose(1, 2)),  # [1, 80, T] as the CFM sees it
        "est_mask": _np(mask), "est_t": _np(t).reshape(-1), "est_spks": _np(spks), "est_out": _np(est_out),
        "rnd_x": _np(r_x), "rnd_mask": _np(r_mask), "rnd_mu": _np(r_mu), "rnd_t": _np(r_t), "rnd_spks": _np(r_spks),
        "rnd_cond": _np(r_cond), "rnd_out": _np(r_out),
        "cfm_noise": _np(cfm_noise[0]), "cfg_rate": np.float64(flow.decoder.inference_cfg_rate), "mel": _np(mel),
        "hift_mel": _np(hift_mel), "hift_phase": _np(phases[0]).reshape(1, -1), "hift_noise": _np(sine_noise[0]),
        "hift_audio": _np(audio),
    }
    np.savez_compressed(out, **arrays)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=Path("~/.cache/glmvoice/decoder-reference").expanduser(),
                        help="directory with src/GLM-4-Voice, src/Matcha-TTS and site/ (see the module docstring)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for sub in ("src/GLM-4-Voice/flow_inference.py", "src/Matcha-TTS/matcha/models/components/decoder.py", "site/hyperpyyaml"):
        if not (args.reference / sub).exists():
            sys.exit(f"{args.reference / sub} is missing: set up the official code as this module's docstring says")
    arrays = generate(args.reference, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
