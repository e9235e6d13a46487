"""Helpers shared by the three networks: parameter counting on the meta device, safetensors I/O."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file

M = TypeVar("M", bound=torch.nn.Module)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_on_meta(factory: Callable[[], M]) -> M:
    """Builds a module without allocating memory, so real-size presets can be counted anywhere."""
    with torch.device("meta"):
        return factory()


def load_safetensors(directory: str | Path, single_name: str, index_name: str | None = None) -> dict[str, torch.Tensor]:
    """Reads `single_name`, or every shard that `index_name` (the HF `weight_map` index) lists."""
    directory = Path(directory)
    if index_name and (directory / index_name).exists():
        weight_map = json.loads((directory / index_name).read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_file(directory / shard))
        missing = set(weight_map) - set(state)
        if missing:
            raise ValueError(f"{directory}: index lists tensors absent from the shards: {sorted(missing)[:5]}")
        return state
    path = directory / single_name
    if not path.exists():
        raise FileNotFoundError(f"{directory}: neither {single_name} nor {index_name} exists")
    return load_file(path)


def save_safetensors_sharded(
    state: dict[str, torch.Tensor], directory: str | Path, shard_pattern: str, index_name: str, max_shard_bytes: int
) -> None:
    """Writes HF-style shards (`shard_pattern` formatted with 1-based index and count) plus a weight_map index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        file_name = shard_pattern.format(i, len(shards))
        save_file(shard, directory / file_name, metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = file_name
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / index_name).write_text(json.dumps(index, indent=2))
