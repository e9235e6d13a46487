"""ONNX export of the LM's prefill and decode steps, with the KV cache as explicit inputs and outputs.

- prefill.onnx: input_ids [B, T] -> logits [B, V] (last position), present_key / present_value
  [L, B, H_kv, T, D]
- decode.onnx: input_ids [B, T] (usually T = 1), past_key / past_value [L, B, H_kv, P, D] ->
  logits [B, V] (last position), present_key / present_value [L, B, H_kv, P + T, D]

Positions are P .. P + T - 1 (rows share one position), rotary angles are computed in the graph, and
the cache grows by concatenation, the layout TensorRT and onnxruntime attention plugins expect.

    python -m training.export.onnx_llm --checkpoint DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from glmvoice.models.llm import Transformer, rotary_table

OPSET = 17


class _ConcatCache:
    """Stands in for KVCache: the new keys/values are appended to the given past (or start the cache)."""

    def __init__(self, past_k: torch.Tensor | None, past_v: torch.Tensor | None):
        self.past_k, self.past_v = past_k, past_v

    def update(self, input_pos, k, v, rows=None, span=None):
        # k, v: [B, H_kv, T, D] -> [B, H_kv, P + T, D]
        if self.past_k is not None:
            k, v = torch.cat([self.past_k, k], dim=2), torch.cat([self.past_v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class LMStep(nn.Module):
    """One prefill or decode step of `model` with the cache passed in and out."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, past_key: torch.Tensor | None = None, past_value=None):
        m = self.model
        seqlen = input_ids.shape[1]
        past = 0 if past_key is None else past_key.shape[3]
        positions = torch.arange(seqlen, device=input_ids.device) + past  # [T]
        keys = torch.arange(seqlen + past, device=input_ids.device)  # [P + T]
        mask = (keys[None, :] <= positions[:, None])[None, None]  # [1, 1, T, P + T]
        table = rotary_table(m.config, positions)
        x = m.tok_embeddings(input_ids)
        keys_out, values_out = [], []
        for i, layer in enumerate(m.layers):
            cache = _ConcatCache(*((None, None) if past_key is None else (past_key[i], past_value[i])))
            x = layer(x, table, mask, positions, cache)
            keys_out.append(cache.k)
            values_out.append(cache.v)
        logits = m.output(m.norm(x[:, -1])).float()  # [B, V]
        return logits, torch.stack(keys_out), torch.stack(values_out)


def export_llm_onnx(model: Transformer, out_dir: str | Path) -> dict[str, Path]:
    """Writes prefill.onnx and decode.onnx (float32 weights as the model holds them) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    step = LMStep(model.eval())
    c = model.config
    ids = torch.zeros(1, 5, dtype=torch.long)
    past = torch.zeros(c.n_layer, 1, c.n_local_heads, 3, c.head_dim, dtype=model.output.weight.dtype)
    cache_axes = {1: "batch", 3: "past"}
    paths = {"prefill": out_dir / "prefill.onnx", "decode": out_dir / "decode.onnx"}
    # The TorchScript exporter: the torch.export-based one needs onnxscript, which we do not ship.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            step, (ids,), paths["prefill"], dynamo=False, opset_version=OPSET,
            input_names=["input_ids"], output_names=["logits", "present_key", "present_value"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch"},
                          "present_key": {1: "batch", 3: "tokens"}, "present_value": {1: "batch", 3: "tokens"}},
        )
        torch.onnx.export(
            step, (ids[:, :1], past, past.clone()), paths["decode"], dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "past_key", "past_value"],
            output_names=["logits", "present_key", "present_value"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "past_key": cache_axes, "past_value": cache_axes,
                          "logits": {0: "batch"}, "present_key": {1: "batch", 3: "total"},
                          "present_value": {1: "batch", 3: "total"}},
        )
    return paths


def check_against_torch(model: Transformer, paths: dict[str, Path], prompt: torch.Tensor, steps: int) -> dict:
    """Runs greedy prefill + decode in onnxruntime and in torch (our KV cache); returns max logit diffs and ids."""
    import onnxruntime as ort

    prefill = ort.InferenceSession(str(paths["prefill"]), providers=["CPUExecutionProvider"])
    decode = ort.InferenceSession(str(paths["decode"]), providers=["CPUExecutionProvider"])
    batch, length = prompt.shape
    model.setup_caches(batch, length + steps)
    torch_logits = model.prefill(prompt, torch.arange(length))
    logits, key, value = prefill.run(None, {"input_ids": prompt.numpy()})
    diffs, ort_ids, torch_ids = [float(np.abs(logits - torch_logits.numpy()).max())], [], []
    for i in range(steps):
        next_ort = logits.argmax(-1)[:, None]
        next_torch = torch_logits.argmax(-1)[:, None]
        ort_ids.append(next_ort[:, 0].tolist())
        torch_ids.append(next_torch[:, 0].tolist())
        feed = {"input_ids": next_ort.astype(np.int64), "past_key": key, "past_value": value}
        logits, key, value = decode.run(None, feed)
        torch_logits = model.decode_one_token(next_torch, torch.tensor([length + i]))
        diffs.append(float(np.abs(logits - torch_logits.numpy()).max()))
    return {"max_abs_diff": max(diffs), "ort_ids": ort_ids, "torch_ids": torch_ids, "cache_length": key.shape[3]}


def main(argv=None) -> int:
    from glmvoice.models.llm_checkpoint import load_llm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--check-steps", type=int, default=4, help="greedy steps compared with torch (0: skip)")
    args = parser.parse_args(argv)
    model, tokenizer = load_llm(args.checkpoint, dtype=torch.float32)
    paths = export_llm_onnx(model, args.out)
    report = {name: str(path) for name, path in paths.items()}
    if args.check_steps:
        prompt = torch.tensor([tokenizer.encode_prompt("<|user|>\nHello<|assistant|>")])
        report["check"] = check_against_torch(model, paths, prompt, args.check_steps)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
