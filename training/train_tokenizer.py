"""Speech tokenizer trainer: the VQ bottleneck of the Whisper-style encoder, trained with an ASR objective.

As in the paper, the quantized sequence must carry what an ASR decoder needs; here the ASR half is a small
CTC head over characters (training only, saved beside the checkpoint as `asr_head.pt` so evaluation can
read codes back as text). Tokens come at 12.5 Hz, slower than English characters are spoken, so the head
predicts `upsample` character slots per token.

VQ: straight-through estimator (the encoder receives the head's gradient as if quantization were the
identity) plus a commitment loss; the codebook is not a parameter but an exponential moving average of the
encoder states assigned to each code, kept in the published `ema_count` / `ema_weight` buffers with the
decay from the config (`quantize_ema_decay`). Codes that fall out of use are restarted on random encoder
states of the batch; a fresh run starts with every code unused, so the codebook is initialised from data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glmvoice.models.speech_tokenizer import SpeechTokenizerModel, vector_quantize
from glmvoice.runtime.tokenizer_stream import SpeechTokenizer
from training.data.corpus import CHARACTERS, Utterance, encode_chars
from training.loop import cosine_warmup, run_steps

HEAD_NAME = "asr_head.pt"


@dataclass(frozen=True)
class TokenizerTrainConfig:
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 40
    grad_clip: float = 1.0
    commitment: float = 0.25
    dead_code_count: float = 0.05  # EMA usage below which a code is restarted
    seed: int = 0
    save_every: int = 100
    # Encoder layers (from the last) that train; None: all, stem included. A pre-trained encoder (a Whisper
    # parent) keeps the rest frozen, so a checkpoint differs from its parent only in those layers and the VQ.
    train_layers: int | None = None


@dataclass(frozen=True)
class HeadConfig:
    d_model: int
    heads: int = 4
    ffn: int = 256
    layers: int = 2
    upsample: int = 4  # character slots per token
    vocab: int = len(CHARACTERS) + 1  # + CTC blank (id 0)


class CTCHead(nn.Module):
    """Quantized vectors [B, N, C] -> character log-probabilities [B, N * upsample, vocab]."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ffn, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.proj = nn.Linear(cfg.d_model, cfg.upsample * cfg.vocab)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # x: [B, N, C]; valid: [B, N] bool
        h = self.layers(x, src_key_padding_mask=~valid)
        b, n, _ = x.shape
        return self.proj(h).view(b, n * self.cfg.upsample, self.cfg.vocab).log_softmax(-1)


def save_head(head: CTCHead, directory: str | Path) -> None:
    torch.save({"config": asdict(head.cfg), "state": head.state_dict()}, Path(directory) / HEAD_NAME)


def load_head(directory: str | Path) -> CTCHead:
    path = Path(directory) / HEAD_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: this tokenizer was not trained with training/ (no ASR head)")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    head = CTCHead(HeadConfig(**raw["config"]))
    head.load_state_dict(raw["state"])
    return head.eval()


def greedy_ctc(log_probs: torch.Tensor, length: int) -> list[int]:
    """Best path of one item [T, vocab]: argmax, collapse repeats, drop blanks."""
    best = log_probs[:length].argmax(-1).tolist()
    return [c for i, c in enumerate(best) if c != 0 and (i == 0 or best[i - 1] != c)]


@dataclass
class Features:
    mel: torch.Tensor  # [M, T]
    mask: torch.Tensor  # [T]
    n_tokens: int
    chars: list[int]


def features(tokenizer: SpeechTokenizer, utterances: list[Utterance]) -> list[Features]:
    """Whisper log-mel exactly as inference computes it (first 30 s segment of each utterance)."""
    out = []
    for u in utterances:
        segment = tokenizer.segments(tokenizer.to_model_rate(u.audio, u.sample_rate))[0]
        mel, mask = tokenizer.segment_features(segment)
        out.append(Features(mel, mask, tokenizer.n_tokens(len(segment)), encode_chars(u.text)))
    return out


def collate(items: list[Features]) -> tuple[torch.Tensor, ...]:
    width = max(f.mel.shape[1] for f in items)
    mel = torch.stack([F.pad(f.mel, (0, width - f.mel.shape[1])) for f in items])
    mask = torch.stack([F.pad(f.mask.float(), (0, width - f.mask.shape[0])) for f in items])
    n_tokens = torch.tensor([f.n_tokens for f in items])
    targets = torch.tensor([c for f in items for c in f.chars])
    target_lens = torch.tensor([len(f.chars) for f in items])
    return mel, mask, n_tokens, targets, target_lens


@torch.no_grad()
def ema_update(model: SpeechTokenizerModel, states: torch.Tensor, codes: torch.Tensor, dead_count: float) -> int:
    """states: [K, C] encoder states of valid tokens, codes: [K] their codes. Returns how many codes restarted."""
    decay = model.config.quantize_ema_decay
    size = model.config.quantize_vocab_size
    counts = torch.bincount(codes, minlength=size).to(states.dtype)
    sums = torch.zeros_like(model.ema_weight).index_add_(0, codes, states)
    model.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
    model.ema_weight.mul_(decay).add_(sums, alpha=1 - decay)
    total = model.ema_count.sum()
    eps = 1e-5
    smoothed = (model.ema_count + eps) / (total + size * eps) * total  # Laplace smoothing: no division by zero
    model.codebook.weight.copy_(model.ema_weight / smoothed[:, None])
    dead = (model.ema_count < dead_count).nonzero().squeeze(1)
    if len(dead):
        picks = states[torch.randint(len(states), (len(dead),)).to(states.device)]  # CPU generator: resumable
        picks = picks + 0.01 * states.std() * torch.randn(picks.shape).to(picks.device)  # duplicates must differ
        model.codebook.weight[dead] = picks
        model.ema_weight[dead] = picks
        # At the threshold: a restarted code that the next batch does not use is restarted again.
        model.ema_weight[dead] *= dead_count
        model.ema_count[dead] = dead_count
    return len(dead)


def prepare_model(model: SpeechTokenizerModel, fresh: bool, train_layers: int | None = None) -> None:
    """The codebook follows the EMA, not the optimizer; a fresh model starts with every code unused.
    With `train_layers`, only the last that many encoder layers keep gradients."""
    model.codebook.weight.requires_grad_(False)
    if fresh:
        model.ema_count.zero_()
    if train_layers is not None:
        frozen = [model.conv1, model.conv2, *model.layers[: len(model.layers) - train_layers]]
        for module in frozen:
            module.requires_grad_(False)


def train_tokenizer(
    model: SpeechTokenizerModel, head: CTCHead, data: list[Features], config: TokenizerTrainConfig,
    work_dir: Path | None = None, stop_at: int | None = None,
) -> dict[str, list[float]]:
    """Trains model and head in place; returns the per-step histories (ctc, commitment, codes in use).
    `stop_at`: end early at that step, resumable from work_dir."""
    params = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_warmup(config.warmup_steps, config.steps))

    device = model.codebook.weight.device
    # A wholly frozen encoder gives each utterance the same states every step: computed once, not per step.
    frozen = frozen_states(model, data, config.batch_size) if config.train_layers == 0 else None

    def step(index, rng) -> dict[str, float]:
        picks = rng.sample(range(len(data)), min(config.batch_size, len(data)))
        mel, mask, n_tokens, targets, target_lens = (t.to(device) for t in collate([data[i] for i in picks]))
        if frozen is None:
            h = model.hidden(mel, mask)  # [B, N, C]
        else:
            h = _pad_states([frozen[i] for i in picks]).to(device)
        valid = torch.arange(h.shape[1], device=h.device)[None, :] < n_tokens[:, None]
        codes = vector_quantize(h.detach(), model.codebook.weight)
        q = model.codebook.weight[codes]
        commit = (h - q).pow(2).mean(-1)[valid].mean()
        st = h + (q - h).detach()  # straight through: forward uses q, backward is the identity
        log_probs = head(st + model.embed_positions2.weight[: h.shape[1]], valid)
        ctc = F.ctc_loss(log_probs.transpose(0, 1), targets, n_tokens * head.cfg.upsample, target_lens,
                         blank=0, zero_infinity=True)
        loss = ctc + config.commitment * commit
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        restarted = ema_update(model, h.detach()[valid], codes[valid], config.dead_code_count)
        return {"ctc": ctc.item(), "commitment": commit.item(), "codes_used": float(codes[valid].unique().numel()),
                "restarted": float(restarted)}

    model.train()
    head.train()
    history = run_steps("train speech tokenizer", step, config.steps, config.seed,
                        {"model": model, "head": head, "optimizer": optimizer, "schedule": schedule},
                        work_dir, config.save_every, stop_at)
    model.eval()
    head.eval()
    return history


@torch.no_grad()
def frozen_states(model: SpeechTokenizerModel, data: list[Features], batch_size: int) -> list[torch.Tensor]:
    """Each utterance's pooled encoder states [N, C] (its valid tokens only)."""
    states = []
    for start in range(0, len(data), batch_size):
        items = data[start: start + batch_size]
        mel, mask, n_tokens, _, _ = (t.to(model.codebook.weight.device) for t in collate(items))
        h = model.hidden(mel, mask).cpu()
        states += [h[i, : int(n)] for i, n in enumerate(n_tokens)]
    return states


def _pad_states(states: list[torch.Tensor]) -> torch.Tensor:
    width = max(s.shape[0] for s in states)
    return torch.stack([F.pad(s, (0, 0, 0, width - s.shape[0])) for s in states])


@torch.no_grad()
def transcribe_codes(model: SpeechTokenizerModel, head: CTCHead, codes: list[int]) -> str:
    """Speech codes -> text through the ASR head (what the codes say, as the tokenizer learned it)."""
    from training.data.corpus import decode_chars

    if not codes:
        return ""
    x = model.dequantize(torch.tensor([codes]))
    log_probs = head(x, torch.ones(1, len(codes), dtype=torch.bool))[0]
    return decode_chars(greedy_ctc(log_probs, len(log_probs)))
