"""Megatron-style tensor parallelism for the LM: which slice of each weight a rank holds, and where the
ranks sum or gather.

- QKV and gate/up are column parallel: rank r holds its query heads, its KV groups (the 2 KV groups of
  GLM-4 allow up to 2 ranks without copying KV heads), and its share of the SwiGLU width.
- The attention output and down projections are row parallel: each rank multiplies its input columns and
  one all-reduce sums the partial outputs (one after attention, one after the MLP).
- Embedding and output layer are split by vocabulary: a rank looks up only its rows (others contribute
  zeros to one all-reduce), and the output logits are gathered.
A rank's model is an ordinary Transformer over a config with 1/N of the heads and width, so attention, the
KV cache and quantization run unchanged on its shard.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from glmvoice.models.llm import GLMConfig, Transformer, TransformerBlock


def check_world(config: GLMConfig, world: int) -> None:
    if config.n_local_heads % world or config.n_head % world:
        raise ValueError(f"{world} ranks do not divide the {config.n_local_heads} KV groups and {config.n_head} heads")
    if config.intermediate_size % world or config.vocab_size % world:
        raise ValueError(f"{world} ranks do not divide the MLP width {config.intermediate_size} or the vocabulary")


def shard_config(config: GLMConfig, world: int) -> GLMConfig:
    check_world(config, world)
    return replace(config, n_head=config.n_head // world, n_local_heads=config.n_local_heads // world,
                   intermediate_size=config.intermediate_size // world, vocab_size=config.vocab_size // world)


def _rows(tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return tensor.chunk(world, dim=0)[rank]


def _columns(key: str, tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """A row-parallel layer's input columns for this rank. Quantized layers (glmvoice.models.quantize's
    stored format) split as stored: int8 columns, INT4 bytes (two columns each), group scales by group; a
    per-output-channel scale is the whole row's and is kept on every rank, so the shards compute exactly
    what the unsplit quantized layer does."""
    if key.endswith(".weight_scale") and (tensor.dim() == 1 or tensor.shape[1] == 1):
        return tensor
    if tensor.shape[1] % world:
        raise ValueError(f"{key}: {tensor.shape[1]} columns (or groups) do not split over {world} ranks")
    return tensor.chunk(world, dim=1)[rank]


def shard_state(state: dict[str, torch.Tensor], config: GLMConfig, rank: int, world: int) -> dict[str, torch.Tensor]:
    """A full state dict (our key names; float, or quantized in the stored format) -> rank `rank`'s slices."""
    c = config
    q_size, kv_size = c.n_head * c.head_dim, c.n_local_heads * c.head_dim
    out = {}
    for key, tensor in state.items():
        # Column-parallel layers split their output rows: weight, bias and scales alike.
        if ".attention.wqkv." in key:
            q, k, v = tensor.split([q_size, kv_size, kv_size], dim=0)
            out[key] = torch.cat([_rows(q, rank, world), _rows(k, rank, world), _rows(v, rank, world)])
        elif ".feed_forward.w13." in key:
            gate, up = tensor.chunk(2, dim=0)
            out[key] = torch.cat([_rows(gate, rank, world), _rows(up, rank, world)])
        elif ".attention.wo." in key or ".feed_forward.w2." in key:
            out[key] = _columns(key, tensor, rank, world)
        elif key in ("tok_embeddings.weight", "output.weight"):
            out[key] = _rows(tensor, rank, world)
        else:
            out[key] = tensor  # norms: replicated
    return out


class AllReduceOutput(nn.Module):
    """A row-parallel layer: this rank's partial product, summed over ranks."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        dist.all_reduce(y)
        return y


class VocabParallelEmbedding(nn.Module):
    """This rank's rows of the embedding; ids of other ranks look up zeros, and one all-reduce completes them."""

    def __init__(self, weight: torch.Tensor, rank: int):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.start = rank * weight.shape[0]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        local = idx - self.start
        mine = (local >= 0) & (local < self.weight.shape[0])
        x = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight) * mine[..., None]
        dist.all_reduce(x)
        return x


class VocabParallelOutput(nn.Module):
    """This rank's rows of the output layer; the logits of all ranks are gathered, so every rank holds [.., V]."""

    def __init__(self, inner: nn.Linear, world: int):
        super().__init__()
        self.inner, self.world = inner, world

    @property
    def weight(self) -> torch.Tensor:  # the runner reads the model's device and dtype from output.weight
        return self.inner.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gather_logits(self.inner(x), self.world)


def parallelize(model: Transformer, rank: int, world: int) -> Transformer:
    """Wraps a rank's loaded Transformer (over shard_config) with its all-reduces and the logits gather
    (add_module: each wrapper takes the place of the layer it wraps)."""
    model.add_module("tok_embeddings", VocabParallelEmbedding(model.tok_embeddings.weight.data, rank))
    model.add_module("output", VocabParallelOutput(model.output, world))
    for layer in model.layers:
        assert isinstance(layer, TransformerBlock)
        layer.attention.add_module("wo", AllReduceOutput(layer.attention.wo))
        layer.feed_forward.add_module("w2", AllReduceOutput(layer.feed_forward.w2))
    return model


def gather_logits(local: torch.Tensor, world: int) -> torch.Tensor:
    """[B, V/N] per rank -> [B, V] on every rank (vocabulary order = rank order)."""
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts, dim=-1)
