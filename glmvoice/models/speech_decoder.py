"""The speech decoder as published (`glm-4-voice-decoder`: config.yaml, flow.pt, hift.pt) and its offline API.

config.yaml is HyperPyYAML: its `!new:`/`!name:`/`!apply:` tags name classes to instantiate. We read it with a
SafeLoader that turns every tag into plain data (nothing is imported or executed) and resolve `!ref <key>`
against the top-level keys; the numbers then fill our FlowConfig / HiFTConfig (a key the file lacks keeps the
glm-4-voice preset value). flow.pt / hift.pt are plain state_dicts read with `weights_only=True`; HiFT's weight
norm (`weight_g`/`weight_v`, or the newer `parametrizations.weight.original0/1`) is folded here, in the loader.
`save_speech_decoder` writes the same layout, so tests run the loader on directories made by our code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from torch import nn

from glmvoice.models.common import build_on_meta, count_parameters
from glmvoice.models.flow import Flow, FlowConfig
from glmvoice.models.hift import HiFT, HiFTConfig

CONFIG_NAME, FLOW_NAME, HIFT_NAME = "config.yaml", "flow.pt", "hift.pt"
TAG = "__tag__"

# Noise streams: every random draw is a function of (seed, stream kind, absolute position), so a decode cut
# into blocks draws exactly the numbers the whole-utterance decode draws.
NOISE_MEL, NOISE_AUDIO, NOISE_PHASE = 1, 2, 3
MEL_NOISE_CHUNK, AUDIO_NOISE_CHUNK = 64, 8192


class _TagSafeLoader(yaml.SafeLoader):
    """SafeLoader that keeps HyperPyYAML tags as data: {"__tag__": "!new:a.B", ...mapping} or {"__tag__", "args"}."""


@dataclass(frozen=True)
class _Ref:
    target: str


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    tag = "!" + suffix
    if tag == "!ref" and not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "!ref takes a name", node.start_mark)
    if isinstance(node, yaml.MappingNode):
        return {TAG: tag, **loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        return {TAG: tag, "args": loader.construct_sequence(node, deep=True)}
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, f"unexpected YAML node for {tag}", node.start_mark)
    if tag == "!ref":
        return _Ref(loader.construct_scalar(node))
    return {TAG: tag, "args": loader.construct_scalar(node)}


_TagSafeLoader.add_multi_constructor("!", _construct_tagged)


def _resolve(value: Any, top: dict) -> Any:
    if isinstance(value, _Ref):
        key = value.target.strip()
        if key.startswith("<") and key.endswith(">") and key[1:-1] in top:
            return _resolve(top[key[1:-1]], top)
        return value  # an expression we do not evaluate; fatal only if a field we read holds it
    if isinstance(value, dict):
        return {k: _resolve(v, top) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, top) for v in value]
    return value


def read_hyperpyyaml(path: str | Path) -> dict:
    """Parses a HyperPyYAML file into plain data without importing or calling anything it names."""
    doc = yaml.load(Path(path).read_text(), Loader=_TagSafeLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return _resolve(doc, doc)


@dataclass
class DecoderConfig:
    flow: FlowConfig
    hift: HiFTConfig

    @classmethod
    def from_name(cls, name: str) -> DecoderConfig:
        return cls(FlowConfig.from_name(name), HiFTConfig.from_name(name))

    @classmethod
    def from_yaml(cls, path: str | Path) -> DecoderConfig:
        return config_from_document(read_hyperpyyaml(path))


def _pick(section: dict, target: Any, names: dict[str, str]) -> None:
    """Copies section[yaml_key] onto target.attr (as the attribute's type) for each key present in the section."""
    for attr, key in names.items():
        if key not in section:
            continue
        value, current = section[key], getattr(target, attr)
        if isinstance(value, _Ref) or isinstance(value, dict) or isinstance(value, list) != isinstance(current, list):
            raise ValueError(f"config.yaml: {key}: expected a plain {type(current).__name__}, got {value!r}")
        setattr(target, attr, value if isinstance(value, list) else type(current)(value))


def _content(node: Any) -> dict:
    """`!new:omegaconf.DictConfig {content: {...}}` or a plain mapping -> the mapping."""
    if isinstance(node, dict) and isinstance(node.get("content"), dict):
        return node["content"]
    return node if isinstance(node, dict) else {}


def read_decoder_config(directory: str | Path) -> DecoderConfig:
    """The DecoderConfig of a published-layout directory (its config.yaml)."""
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return DecoderConfig.from_yaml(path)


def config_from_document(doc: dict) -> DecoderConfig:
    if "flow" not in doc or "hift" not in doc:
        raise ValueError("config.yaml: needs top-level `flow` and `hift` entries")
    cfg = DecoderConfig.from_name("glm-4-voice")
    flow, hift = doc["flow"], doc["hift"]
    _pick(flow, cfg.flow, {k: k for k in ("vocab_size", "input_size", "output_size", "spk_embed_dim", "input_frame_rate")})
    if "sample_rate" in doc:
        cfg.flow.sample_rate = int(doc["sample_rate"])
    enc = flow.get("encoder", {})
    if enc.get("selfattention_layer_type", "block_rel_selfattn") != "block_rel_selfattn" or enc.get("use_cnn_module") or enc.get("macaron_style"):
        raise ValueError("config.yaml: only the block relative-position conformer without conv/macaron modules is supported")
    _pick(enc, cfg.flow.encoder, {k: k for k in ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks", "block_size")})
    regulator = flow.get("length_regulator", {})
    if "sampling_ratios" in regulator:
        cfg.flow.regulator_ratios = len(regulator["sampling_ratios"])
    decoder = flow.get("decoder", {})
    _pick(_content(decoder.get("cfm_params")), cfg.flow, {k: k for k in ("sigma_min", "t_scheduler", "inference_cfg_rate")})
    est = decoder.get("estimator", {})
    if est.get("act_fn", "gelu") != "gelu":
        raise ValueError(f"config.yaml: estimator act_fn {est['act_fn']!r} is not supported (gelu only)")
    _pick(est, cfg.flow.estimator, {k: k for k in ("in_channels", "out_channels", "channels", "attention_head_dim", "n_blocks", "num_mid_blocks", "num_heads")})
    _pick(hift, cfg.hift, {k: k for k in (
        "in_channels", "base_channels", "nb_harmonics", "sampling_rate", "nsf_alpha", "nsf_sigma", "nsf_voiced_threshold",
        "upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes", "resblock_dilation_sizes",
        "source_resblock_kernel_sizes", "source_resblock_dilation_sizes", "lrelu_slope", "audio_limit")})
    _pick(hift.get("istft_params", {}), cfg.hift, {"n_fft": "n_fft", "hop_len": "hop_len"})
    _pick(hift.get("f0_predictor", {}), cfg.hift, {"f0_cond_channels": "cond_channels"})
    cfg.flow.hop_length = cfg.hift.samples_per_frame
    if cfg.hift.sampling_rate != cfg.flow.sample_rate:
        raise ValueError(f"config.yaml: hift sampling_rate {cfg.hift.sampling_rate} != sample_rate {cfg.flow.sample_rate}")
    return cfg


def config_to_yaml(cfg: DecoderConfig) -> str:
    """HyperPyYAML text in the published shape (same tags and keys) for our configs."""
    f, e, s, h = cfg.flow, cfg.flow.encoder, cfg.flow.estimator, cfg.hift
    doc = f"""# glm-4-voice-decoder layout (HyperPyYAML), written by glmvoice
sample_rate: {f.sample_rate}
spk_embed_dim: {f.spk_embed_dim}

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: {f.input_size}
    output_size: {f.output_size}
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {f.vocab_size}
    input_frame_rate: {f.input_frame_rate}
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.BlockConformerEncoder
        output_size: {e.output_size}
        attention_heads: {e.attention_heads}
        linear_units: {e.linear_units}
        num_blocks: {e.num_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'block_rel_selfattn'
        input_size: {e.input_size}
        use_cnn_module: False
        macaron_style: False
        block_size: {e.block_size}
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: {f.output_size}
        sampling_ratios: {[1] * f.regulator_ratios}
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: {f.output_size}
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: {f.sigma_min}
                solver: 'euler'
                t_scheduler: '{f.t_scheduler}'
                training_cfg_rate: 0.2
                inference_cfg_rate: {f.inference_cfg_rate}
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: {s.in_channels}
            out_channels: {s.out_channels}
            channels: {list(s.channels)}
            dropout: 0.0
            attention_head_dim: {s.attention_head_dim}
            n_blocks: {s.n_blocks}
            num_mid_blocks: {s.num_mid_blocks}
            num_heads: {s.num_heads}
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: {h.in_channels}
    base_channels: {h.base_channels}
    nb_harmonics: {h.nb_harmonics}
    sampling_rate: !ref <sample_rate>
    nsf_alpha: {h.nsf_alpha}
    nsf_sigma: {h.nsf_sigma}
    nsf_voiced_threshold: {h.nsf_voiced_threshold}
    upsample_rates: {list(h.upsample_rates)}
    upsample_kernel_sizes: {list(h.upsample_kernel_sizes)}
    istft_params:
        n_fft: {h.n_fft}
        hop_len: {h.hop_len}
    resblock_kernel_sizes: {list(h.resblock_kernel_sizes)}
    resblock_dilation_sizes: {[list(d) for d in h.resblock_dilation_sizes]}
    source_resblock_kernel_sizes: {list(h.source_resblock_kernel_sizes)}
    source_resblock_dilation_sizes: {[list(d) for d in h.source_resblock_dilation_sizes]}
    lrelu_slope: {h.lrelu_slope}
    audio_limit: {h.audio_limit}
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: {h.in_channels}
        cond_channels: {h.f0_cond_channels}
"""
    return doc


def weight_normed_convs(hift: HiFT) -> list[str]:
    """Module names that carry weight norm in the published hift.pt (all but source_downs and the linears)."""
    names = ["conv_pre", "conv_post"]
    names += [f"ups.{i}" for i in range(len(hift.ups))]
    for group in ("resblocks", "source_resblocks"):
        for i, block in enumerate(getattr(hift, group)):
            names += [f"{group}.{i}.convs{j}.{k}" for j in (1, 2) for k in range(len(block.convs1))]
    names += [f"f0_predictor.condnet.{i}" for i in range(0, len(hift.f0_predictor.condnet), 2)]
    return names


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`X.weight_g`+`X.weight_v` (or `X.parametrizations.weight.original0/1`) -> `X.weight = g * v / ||v||` (dim 0)."""
    out: dict[str, torch.Tensor] = {}
    forms = ((".weight_g", ".weight_v"), (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
    for key, value in state.items():
        for g_suffix, v_suffix in forms:
            if key.endswith(g_suffix):
                prefix = key[: -len(g_suffix)]
                v = state[prefix + v_suffix].float()
                out[prefix + ".weight"] = value.float() * v / _norm_except_dim0(v)
                break
            if key.endswith(v_suffix):
                break
        else:
            out[key] = value
    return out


def unfold_weight_norm(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Inverse of fold_weight_norm for the published key names: weight -> weight_g (norms), weight_v (weight)."""
    out = dict(state)
    for name in names:
        w = out.pop(name + ".weight")
        out[name + ".weight_g"] = _norm_except_dim0(w).clone()
        out[name + ".weight_v"] = w.clone()
    return out


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing[:5]} ({len(missing)}), unexpected keys {unexpected[:5]} ({len(unexpected)})")
    module.load_state_dict(state)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict")
    # Float tensors as float32 before anything computes with them (weight-norm folding): a checkpoint saved in
    # half precision loads as the float32 modules it came from, rounded.
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def positional_noise(seed: int, kind: int, start: int, stop: int, channels: int, chunk: int) -> torch.Tensor:
    """Standard normal [channels, stop - start] for absolute positions [start, stop) of one noise stream."""
    first, last = start // chunk, max(stop - 1, start) // chunk
    parts = []
    for c in range(first, last + 1):
        gen = torch.Generator().manual_seed((seed * 0x9E3779B1 + kind * 0x85EBCA77 + c) % 2**63)
        parts.append(torch.randn(channels, chunk, generator=gen))
    return torch.cat(parts, dim=1)[:, start - first * chunk : stop - first * chunk]


def harmonic_phases(seed: int, harmonics: int) -> torch.Tensor:
    """Per-utterance random start phase of each overtone (radians); the fundamental starts at 0 as in SineGen."""
    gen = torch.Generator().manual_seed((seed * 0x9E3779B1 + NOISE_PHASE * 0x85EBCA77) % 2**63)
    phases = (torch.rand(harmonics + 1, generator=gen) * 2 - 1) * math.pi
    phases[0] = 0.0
    return phases


class SpeechDecoder:
    """Flow + HiFT on one device, in eval mode. `decode` is the offline (whole-utterance) path."""

    def __init__(self, flow: Flow, hift: HiFT, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.flow = flow.to(self.device).eval()
        self.hift = hift.to(self.device).eval()
        self.config = DecoderConfig(flow.cfg, hift.cfg)

    @property
    def sample_rate(self) -> int:
        return self.hift.cfg.sampling_rate

    @property
    def codebook_size(self) -> int:
        return self.flow.cfg.vocab_size

    @property
    def block_size(self) -> int:
        return self.flow.cfg.encoder.block_size

    def check_codes(self, codes: Sequence[int] | np.ndarray) -> list[int]:
        codes = [int(c) for c in codes]
        bad = [c for c in codes if not 0 <= c < self.codebook_size]
        if bad:
            raise ValueError(f"speech codes must lie in [0, {self.codebook_size}); got {bad[:5]}")
        return codes

    def mel_noise(self, seed: int, start: int, stop: int) -> torch.Tensor:
        return positional_noise(seed, NOISE_MEL, start, stop, self.flow.cfg.output_size, MEL_NOISE_CHUNK).to(self.device)

    def audio_noise(self, seed: int, start: int, stop: int) -> torch.Tensor:
        h = self.hift.cfg.nb_harmonics + 1
        return positional_noise(seed, NOISE_AUDIO, start, stop, h, AUDIO_NOISE_CHUNK).to(self.device)

    @torch.inference_mode()
    def decode_mel(self, codes: Sequence[int] | np.ndarray, seed: int = 0, n_steps: int | None = None, cfg_rate: float | None = None) -> torch.Tensor:
        codes = self.check_codes(codes)
        frames = self.flow.cfg.mel_frames(len(codes))
        if frames == 0:
            return torch.zeros(1, self.flow.cfg.output_size, 0, device=self.device)
        tokens = torch.tensor([codes], device=self.device)
        noise = self.mel_noise(seed, 0, frames).unsqueeze(0)
        return self.flow.inference(tokens, torch.tensor([len(codes)], device=self.device), noise, n_steps=n_steps, cfg_rate=cfg_rate)

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor, seed: int = 0) -> torch.Tensor:
        # mel: [1, 80, T] -> audio [1, 256 T]
        t = mel.shape[-1]
        h = self.hift.cfg.nb_harmonics + 1
        noise = self.audio_noise(seed, 0, t * self.hift.cfg.samples_per_frame).unsqueeze(0)
        rand_phase = harmonic_phases(seed, self.hift.cfg.nb_harmonics).to(self.device).unsqueeze(0)
        audio, _ = self.hift(mel, torch.tensor([t], device=self.device), torch.zeros(1, h, device=self.device), rand_phase, noise)
        return audio

    def decode(self, codes: Sequence[int] | np.ndarray, seed: int = 0, n_steps: int | None = None, cfg_rate: float | None = None) -> np.ndarray:
        """Speech codes -> float32 waveform at `sample_rate` (256 samples per mel frame)."""
        mel = self.decode_mel(codes, seed, n_steps, cfg_rate)
        if mel.shape[-1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.vocode(mel, seed)[0].float().cpu().numpy()


def build_speech_decoder(cfg: DecoderConfig, seed: int = 0) -> SpeechDecoder:
    """Randomly initialised decoder (tests, benchmarks); torch's default init under a fixed seed."""
    torch.manual_seed(seed)
    return SpeechDecoder(Flow(cfg.flow), HiFT(cfg.hift))


def load_speech_decoder(directory: str | Path, device: str | torch.device = "cpu") -> SpeechDecoder:
    directory = Path(directory)
    cfg = read_decoder_config(directory)
    flow, hift = Flow(cfg.flow), HiFT(cfg.hift)
    _load_strict(flow, _read_state(directory / FLOW_NAME), directory / FLOW_NAME)
    hift_state = {k: v for k, v in fold_weight_norm(_read_state(directory / HIFT_NAME)).items() if k != "stft_window"}
    _load_strict(hift, hift_state, directory / HIFT_NAME)
    return SpeechDecoder(flow, hift, device)


def save_speech_decoder(decoder: SpeechDecoder, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Writes config.yaml, flow.pt and hift.pt (weight norm unfolded) in the published layout; float tensors in
    `dtype` (float32 as published; loading casts them back to the modules' float32)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(config_to_yaml(decoder.config))

    def cast(state: dict) -> dict:
        return {k: v.detach().cpu().to(dtype) if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}

    torch.save(cast(decoder.flow.state_dict()), directory / FLOW_NAME)
    hift_state = {k: v.detach().cpu() for k, v in decoder.hift.state_dict().items()}
    torch.save(cast(unfold_weight_norm(hift_state, weight_normed_convs(decoder.hift))), directory / HIFT_NAME)
    return directory


def speech_decoder_info(config: str | Path | DecoderConfig) -> dict:
    """Parameter counts (built on the meta device), rates and block size for a preset name, directory or config."""
    if isinstance(config, DecoderConfig):
        cfg = config
    elif Path(config, CONFIG_NAME).exists():
        cfg = read_decoder_config(config)
    else:
        cfg = DecoderConfig.from_name(str(config))
    flow = build_on_meta(lambda: Flow(cfg.flow))
    hift = build_on_meta(lambda: HiFT(cfg.hift))
    hift_published = count_parameters(hift) + sum(
        cast(nn.Conv1d, hift.get_submodule(name)).weight.shape[0] for name in weight_normed_convs(hift)
    )
    return {
        "flow_parameters": count_parameters(flow),
        "hift_parameters": count_parameters(hift),
        "hift_parameters_with_weight_norm": hift_published,
        "codebook_size": cfg.flow.vocab_size,
        "sample_rate": cfg.hift.sampling_rate,
        "mel_bins": cfg.flow.output_size,
        "samples_per_mel_frame": cfg.hift.samples_per_frame,
        "token_rate": cfg.flow.input_frame_rate,
        "block_size": cfg.flow.encoder.block_size,
        "flow_steps": cfg.flow.n_timesteps,
        "cfg_rate": cfg.flow.inference_cfg_rate,
    }
