"""Weight-only INT8 / INT4 quantization of the LM's linear layers, GLM-130B style.

Symmetric absmax scales per output channel (INT4 optionally per group of `group_size` input columns),
no calibration data, no retraining; activations and the KV cache keep the model's float dtype.

Quantized: the four linear layers of every block (attention.wqkv, attention.wo, feed_forward.w13,
feed_forward.w2), 96 % of the 9B model's parameters outside the embedding and the output layer. Kept in
the float dtype: the embedding (a lookup: a decode step reads B rows of it, not the table), the norms
(tiny) and the output layer, as GLM-130B kept them: the logits rank 16k speech and 150k text tokens, and
the sampler sees them directly.

Kernels: torch's own weight-only matmuls (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm` on CUDA
and `_weight_int4pack_mm_for_cpu` on CPU), the ones torchao's int8/int4 weight-only layouts call. Our code
is only the packing and loading rules.

Stored format (device independent; the kernels' own layouts are made at load, per device):
- INT8: `weight` int8 [N, K] (q in -127..127), `weight_scale` [N] float: w = q * scale.
- INT4: `weight` uint8 [N, K/2], two values per byte, (q[2i] + 8) << 4 | (q[2i+1] + 8), q in -8..7 (the
  byte order CUDA's `_convert_weight_to_int4pack` takes); `weight_scale` [N, K/group] float:
  w = q * scale of its group. Per channel (group_size None) stores [N, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

QUANTIZED_LINEARS = ("attention.wqkv", "attention.wo", "feed_forward.w13", "feed_forward.w2")
INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # group sizes torch's int4 kernels take


@dataclass(frozen=True)
class QuantScheme:
    bits: int  # 8 or 4
    group_size: int | None = None  # INT4 only: input columns per scale; None = one scale per output channel
    method: str = "absmax-weight-only"

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.bits == 8 and self.group_size is not None:
            raise ValueError("INT8 uses one scale per output channel; --group-size is for INT4")
        if self.group_size is not None and self.group_size not in INT4_KERNEL_GROUPS:
            raise ValueError(f"group size must be one of {INT4_KERNEL_GROUPS}, got {self.group_size}")
        if self.method != "absmax-weight-only":
            raise ValueError(f"unknown quantization method {self.method!r}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> QuantScheme:
        return cls(**raw)

    @classmethod
    def parse(cls, text: str) -> QuantScheme:
        """"int8", "int4" (per channel) or "int4-g128" (groups of 128), as the config parameter / flags say."""
        name, _, group = text.partition("-g")
        if name not in ("int8", "int4"):
            raise ValueError(f"quantization {text!r}: expected int8, int4 or int4-g<N>")
        return cls(bits=int(name[3:]), group_size=int(group) if group else None)

    def check_shape(self, out_features: int, in_features: int, name: str = "") -> None:
        if self.bits == 4:
            if in_features % 2 or (self.group_size and in_features % self.group_size):
                raise ValueError(f"{name}: {in_features} input columns do not split into groups of {self.group_size}")
            if _kernel_group(in_features, self.group_size) is None:
                raise ValueError(f"{name}: no int4 kernel group size divides {in_features} input columns")


def _kernel_group(in_features: int, group_size: int | None) -> int | None:
    """The group size the int4 kernel runs with: the scheme's, or for per-channel scales any that divides
    K (the channel's scale is repeated over its groups, which is exactly per-channel quantization)."""
    if group_size is not None:
        return group_size
    return next((g for g in reversed(INT4_KERNEL_GROUPS) if in_features % g == 0), None)


def quantize_weight(weight: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] float -> (stored weight, scales in weight's dtype), the stored format above."""
    n, k = weight.shape
    scheme.check_shape(n, k)
    w = weight.float()
    if scheme.bits == 8:
        # Quantize against the scale as stored (rounded to the weight's dtype): the kernels use that one.
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).to(weight.dtype)  # [N]
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        return q, scale
    group = scheme.group_size or k
    grouped = w.reshape(n, k // group, group)
    scale = (grouped.abs().amax(dim=-1).clamp(min=1e-12) / 7).to(weight.dtype)  # [N, K/group]; -8 stays unused
    q = torch.round(grouped / scale.float()[..., None]).clamp(-8, 7).reshape(n, k).to(torch.int32) + 8  # 0..15
    packed = (q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8)  # [N, K/2]
    return packed, scale


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> int32 [N, K] in 0..15 (q + 8)."""
    high, low = (packed >> 4).to(torch.int32), (packed & 0xF).to(torch.int32)
    return torch.stack([high, low], dim=-1).flatten(-2)


def dequantize_weight(stored: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The stored format back to float32 [N, K] (the round trip, and the reference the kernels are tested on)."""
    if bits == 8:
        return stored.float() * scale.float()[:, None]
    q = (unpack_int4(stored) - 8).float()
    n, k = q.shape
    groups = scale.shape[1]
    return (q.reshape(n, groups, k // groups) * scale.float()[..., None]).reshape(n, k)


class QuantizedLinear(nn.Module):
    """y = x W^T (+ b) with W held as int8 [N, K] or the device's int4 kernel layout; x keeps its dtype.

    Its tensors are non-persistent buffers: they are built from the stored format (or a float layer),
    never saved from the kernel layout, and the rest of the model loads strictly around them."""

    def __init__(self, stored: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, scheme: QuantScheme,
                 in_features: int, dtype: torch.dtype):
        super().__init__()
        self.scheme, self.in_features, self.out_features, self.dtype = scheme, in_features, stored.shape[0], dtype
        device = stored.device
        if scheme.bits == 8:
            self.register_buffer("weight", stored.contiguous(), persistent=False)
            self.register_buffer("scale", scale.to(dtype).contiguous(), persistent=False)
        else:
            group = _kernel_group(in_features, scheme.group_size)
            if group is None:
                raise ValueError(f"no int4 kernel group size divides {in_features} input columns")
            self.group = group
            scale = scale.float().repeat_interleave(in_features // scale.shape[1] // self.group, dim=1)  # [N, K/group]
            # The kernels add `zero` after scaling (w = (q - 8) * scale + zero): symmetric absmax has zero 0.
            zeros = torch.zeros_like(scale)
            self.register_buffer("scale_and_zero", torch.stack([scale.t(), zeros.t()], -1).to(dtype).contiguous(), persistent=False)
            tiles = next(t for t in (8, 4, 2) if in_features % (t * 16) == 0)
            if device.type == "cuda":
                self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack(stored.contiguous(), tiles), persistent=False)
            else:
                self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(stored), tiles), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.dtype)  # [M, K]
        if self.scheme.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)
        elif x2.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.weight, self.group, self.scale_and_zero)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group, self.scale_and_zero)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.scheme.bits}, group={self.scheme.group_size}"


def quantize_state(state: dict[str, torch.Tensor], scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """A float state dict (our key names) with every block linear's weight in the stored format plus its
    `.weight_scale`; the rest unchanged. Quantizes on the tensors' own device, one layer at a time."""
    out = {}
    for key, tensor in state.items():
        layer = key.removesuffix(".weight")
        if key.endswith(".weight") and layer.endswith(QUANTIZED_LINEARS):
            scheme.check_shape(tensor.shape[0], tensor.shape[1], name=layer)
            out[key], out[f"{layer}.weight_scale"] = quantize_weight(tensor, scheme)
        else:
            out[key] = tensor
    return out


def quantized_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name.endswith(QUANTIZED_LINEARS) and isinstance(module, nn.Linear)]


def load_quantized_linears(model: nn.Module, state: dict[str, torch.Tensor], scheme: QuantScheme, dtype: torch.dtype,
                           device: torch.device | str) -> dict[str, torch.Tensor]:
    """Puts QuantizedLinear layers built from a stored checkpoint `state` (our key names, with
    `<layer>.weight_scale` entries) into a meta-built model; returns the rest of the state to load."""
    rest = dict(state)
    for name in quantized_module_names(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear: nn.Linear = getattr(parent, child)
        stored = rest.pop(f"{name}.weight").to(device)
        scale = rest.pop(f"{name}.weight_scale").to(device)
        bias = rest.pop(f"{name}.bias", None)
        bias = None if bias is None else bias.to(device)
        setattr(parent, child, QuantizedLinear(stored, scale, bias, scheme, linear.in_features, dtype))
    return rest


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers held by the model, split into quantized layers and the rest."""
    quantized = sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, QuantizedLinear)
                    for b in m.buffers(recurse=False))
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
                if not _is_cache(t, model))
    return {"total": total, "quantized_layers": quantized, "float": total - quantized}


def _is_cache(tensor: torch.Tensor, model: nn.Module) -> bool:
    """KV caches, rotary and mask tables are run-time buffers, not weights."""
    runtime = [getattr(model, "rope", None), getattr(model, "causal_mask", None)]
    caches = getattr(model, "kv_caches", None) or []
    runtime += [b for c in caches for b in c.buffers()]
    return any(tensor is r for r in runtime if r is not None)


def quantize_model(model: nn.Module, scheme: QuantScheme) -> nn.Module:
    """Quantizes a built float model's block linears in place, on the model's device (benchmarks on
    random weights; checkpoints go through llm_checkpoint.load_llm / write_quantized_llm)."""
    output_weight = model.get_parameter("output.weight")
    dtype, device = output_weight.dtype, output_weight.device
    linears = {f"{name}.{key}": t for name in quantized_module_names(model)
               for key, t in model.get_submodule(name).state_dict().items()}
    load_quantized_linears(model, quantize_state(linears, scheme), scheme, dtype, device)
    return model
