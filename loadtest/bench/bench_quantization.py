"""Weight-only quantization of the LM, measured: weight bytes, peak memory, logits KL and greedy agreement
against the float model, and on the real hidden sizes (random weights, one block) bytes and the packing
round trip. Prints one JSON object.

    python -m loadtest.bench.bench_quantization --checkpoint build/checkpoints/tiny/glm-4-voice-9b \
        --task-tokenizer build/checkpoints/tiny/glm-4-voice-tokenizer
    python -m loadtest.bench.bench_quantization --real-layer          # glm-4-voice sizes, one block

Each scheme runs in its own process, so peak RSS is that scheme's alone. With --task-tokenizer, the LM's own
evaluation set (training.evaluate: spoken arithmetic questions in a voice the LM was not trained on, and unseen
questions) is asked too: task accuracy per scheme, and greedy agreement over those prompts with the float
model. The random prompts measure logits KL over the whole vocabulary; the task prompts what users hear.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch

SCHEMES = ("float", "int8", "int4", "int4-g64", "int4-g128")


def prompts(vocab: int, count: int, length: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randint(0, vocab, (length,), generator=generator).tolist() for _ in range(count)]


def task_prompts(tokenizer_dir: str, plan_name: str, checkpoint: str) -> list[dict]:
    """The LM evaluation's questions as prompt ids with their expected answer text (training.evaluate's set)."""
    from glmvoice.models.text_tokenizer import TextTokenizer
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from training.pipeline import PLANS, lm_pairs, speech_data

    data = speech_data(PLANS[plan_name])
    text_tokenizer, speech_tokenizer = TextTokenizer.from_directory(checkpoint), load_speech_tokenizer(tokenizer_dir)
    examples = data.arithmetic_new_voice + data.arithmetic_held
    pairs = lm_pairs(text_tokenizer, speech_tokenizer, examples)
    return [{"prompt": prompt, "budget": len(completion) + 16, "answer": example.answer}
            for example, (prompt, completion) in zip(examples, pairs)]


def answer_task(model, tokenizer, tasks: list[dict]) -> dict:
    from glmvoice.runtime.generate import generate
    from training.data.corpus import normalize_text

    ids, correct = [], 0
    for task in tasks:
        result = generate(model, task["prompt"], task["budget"], stop_ids=tokenizer.stop_ids)
        ids.append(result.ids)
        text = tokenizer.decode([i for i in result.ids if tokenizer.is_text(i)])
        correct += normalize_text(text) == normalize_text(task["answer"])
    return {"task_ids": ids, "task_accuracy": correct / len(tasks), "task_questions": len(tasks)}


def measure_one(checkpoint: str, scheme_name: str, count: int, length: int, new_tokens: int,
                task_file: str | None = None) -> dict:
    """In this process: load with one scheme -> bytes, peak RSS, logits of every prompt position, greedy ids."""
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.models.quantize import QuantScheme, weight_bytes
    from glmvoice.runtime.generate import generate
    from glmvoice.sampling import SamplingParams

    scheme = None if scheme_name == "float" else QuantScheme.parse(scheme_name)
    model, tokenizer = load_llm(checkpoint, quantize=scheme)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = prompts(model.config.vocab_size, count, length)
    with torch.inference_mode():
        logits = model(torch.tensor(batch)).log_softmax(-1)  # [P, T, V]
    greedy = [generate(model, p, new_tokens, params=SamplingParams(temperature=0.0)).ids for p in batch]
    report = {"scheme": scheme_name, "weight_bytes": weight_bytes(model), "peak_rss_mb_after_load": round(rss_mb, 1),
              "logprobs": logits.tolist(), "greedy": greedy}
    if task_file:
        with open(task_file) as f, torch.inference_mode():
            report |= answer_task(model, tokenizer, json.load(f))
    return report


def compare(reference: dict, other: dict) -> dict:
    ref, out = torch.tensor(reference["logprobs"]), torch.tensor(other["logprobs"])
    kl = (ref.exp() * (ref - out)).sum(-1)  # KL(float || quantized) per position
    tokens = [(a == b) for r, o in zip(reference["greedy"], other["greedy"]) for a, b in zip(r, o)]
    task = {}
    if "task_ids" in reference:
        task = {"task_greedy_sequences_equal": sum(r == o for r, o in zip(reference["task_ids"], other["task_ids"]))
                / len(reference["task_ids"])}
    return task | {
        "logits_kl_mean": kl.mean().item(), "logits_kl_max": kl.max().item(),
        "next_token_top1_agreement": (ref.argmax(-1) == out.argmax(-1)).float().mean().item(),
        "greedy_sequences_equal": sum(r == o for r, o in zip(reference["greedy"], other["greedy"])) / len(reference["greedy"]),
        "greedy_token_agreement": sum(tokens) / len(tokens),
    }


def real_layer(group: int) -> dict:
    """One glm-4-voice block's linears with random bf16 weights: bytes per scheme and the packing round trip."""
    from glmvoice.models.llm import GLMConfig
    from glmvoice.models.quantize import QuantizedLinear, QuantScheme, dequantize_weight, quantize_weight, unpack_int4

    c = GLMConfig.from_name("glm-4-voice")
    shapes = {"wqkv": ((c.n_head + 2 * c.n_local_heads) * c.head_dim, c.dim), "wo": (c.dim, c.n_head * c.head_dim),
              "w13": (2 * c.intermediate_size, c.dim), "w2": (c.dim, c.intermediate_size)}
    generator = torch.Generator().manual_seed(0)
    report = {"note": "one block of 40, random N(0, 0.02) bf16 weights; embedding and output layer stay bf16"}
    float_bytes = sum(n * k * 2 for n, k in shapes.values())
    report["bf16_bytes_per_block"] = float_bytes
    for scheme in (QuantScheme(8), QuantScheme(4), QuantScheme(4, group)):
        nbytes, worst_step, exact_packing, kernel_error = 0, 0.0, True, 0.0
        for n, k in shapes.values():
            weight = (0.02 * torch.randn(n, k, generator=generator)).to(torch.bfloat16)
            stored, scale = quantize_weight(weight, scheme)
            nbytes += stored.numel() * stored.element_size() + scale.numel() * scale.element_size()
            back = dequantize_weight(stored, scale, scheme.bits)
            step = scale.float()[:, None] if scheme.bits == 8 else scale.float().repeat_interleave(k // scale.shape[1], 1)
            worst_step = max(worst_step, ((back - weight.float()).abs() / step).max().item())
            if scheme.bits == 4:
                q = unpack_int4(stored)
                exact_packing &= torch.equal(unpack_int4((q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8)), q)
            x = torch.randn(1, k, generator=generator, dtype=torch.bfloat16)
            y = QuantizedLinear(stored, scale, None, scheme, k, torch.bfloat16)(x).float()
            ref = x.float() @ back.t()
            kernel_error = max(kernel_error, ((y - ref).abs().max() / ref.abs().max()).item())
            del weight, stored, scale, back
        per_block = {"bytes_per_block": nbytes, "ratio_to_bf16": nbytes / float_bytes,
                     "max_error_in_quantization_steps": worst_step, "kernel_vs_dequantized_max_rel_error": kernel_error}
        if scheme.bits == 4:
            per_block["int4_packing_lossless"] = exact_packing
        embed_and_output = 2 * c.vocab_size * c.dim * 2
        per_block["model_weight_gb_at_40_blocks"] = round((40 * nbytes + embed_and_output) / 1e9, 2)
        report[str(scheme.bits) + ("" if scheme.group_size is None else f"-g{scheme.group_size}")] = per_block
    report["bf16_model_weight_gb_at_40_blocks"] = round((40 * float_bytes + 2 * c.vocab_size * c.dim * 2) / 1e9, 2)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="float LM directory (glm-4-voice-9b layout)")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--real-layer", action="store_true", help="also the glm-4-voice block sizes")
    parser.add_argument("--group", type=int, default=128, help="INT4 group size for --real-layer")
    parser.add_argument("--task-tokenizer", help="speech tokenizer directory: also ask the LM's evaluation questions")
    parser.add_argument("--task-plan", default="tiny", help="training plan whose evaluation questions to ask")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one scheme in this process
    parser.add_argument("--task-file", help=argparse.SUPPRESS)  # internal: the task prompts, made once
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(measure_one(args.checkpoint, args.one, args.prompts, args.prompt_len, args.new_tokens,
                                     args.task_file)))
        return 0
    report = {}
    if args.checkpoint:
        runs = {}
        task_args = []
        if args.task_tokenizer:
            task_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
            json.dump(task_prompts(args.task_tokenizer, args.task_plan, args.checkpoint), task_file)
            task_file.close()
            task_args = ["--task-file", task_file.name]
        for name in args.schemes.split(","):
            cmd = [sys.executable, "-m", "loadtest.bench.bench_quantization", "--checkpoint", args.checkpoint,
                   "--one", name, "--prompts", str(args.prompts), "--prompt-len", str(args.prompt_len),
                   "--new-tokens", str(args.new_tokens), *task_args]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                runs[name] = {"error": proc.stderr.strip().splitlines()[-1]}
                continue
            runs[name] = json.loads(proc.stdout)
        reference = runs["float"]
        report["checkpoint"] = {
            name: {"weight_bytes": r["weight_bytes"], "peak_rss_mb_after_load": r["peak_rss_mb_after_load"],
                   **({"task_accuracy": r["task_accuracy"], "task_questions": r["task_questions"]}
                      if "task_accuracy" in r else {}),
                   **({} if name == "float" else compare(reference, r))} if "error" not in r else r
            for name, r in runs.items()
        }
    if args.real_layer:
        report["glm-4-voice_one_block"] = real_layer(args.group)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
