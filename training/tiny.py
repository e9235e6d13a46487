"""`python -m training.tiny --out build/checkpoints/tiny`: the three tiny checkpoints, trained here.

Writes glm-4-voice-tokenizer/, glm-4-voice-9b/ and glm-4-voice-decoder/ (the published layouts) under --out,
each with provenance.json, data_recipe.json, loss.png and, unless --no-eval, metrics.json from
training.evaluate. Seeded and deterministic; a checkpoint whose provenance already matches the plan is kept
as it is, and without --plan a complete set from any plan is kept (`make tiny` after `make train-tiny`).
Prints one JSON object: the directories and their metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from glmvoice.provenance import METRICS_NAME, PROVENANCE_NAME, read_metrics
from training import pipeline

LAYOUT = {"speech_tokenizer": "glm-4-voice-tokenizer", "llm": "glm-4-voice-9b", "speech_decoder": "glm-4-voice-decoder"}


def evaluated_since_trained(directory: Path) -> bool:
    """metrics.json written after provenance.json: the evaluation of these very weights (re-runs skip it)."""
    metrics, provenance = directory / METRICS_NAME, directory / PROVENANCE_NAME
    return metrics.exists() and provenance.exists() and metrics.stat().st_mtime >= provenance.stat().st_mtime


def current_plan(out: Path) -> str | None:
    """The plan whose three checkpoints `out` already holds, if any (so `make tiny` keeps a longer run's)."""
    dirs = {network: out / name for network, name in LAYOUT.items()}
    for name, plan in pipeline.PLANS.items():
        if all(pipeline.up_to_date(n, d, plan.preset(n), plan, dirs["speech_tokenizer"]) for n, d in dirs.items()):
            return name
    return None


def build(out: Path, plan_name: str | None, evaluate: bool, asr: bool) -> dict:
    """plan_name None: keep whatever plan's checkpoints are already there, else train the "tiny" plan."""
    from training import evaluate as ev

    plan_name = plan_name or current_plan(out) or "tiny"
    plan = pipeline.PLANS[plan_name]
    dirs = {network: out / name for network, name in LAYOUT.items()}
    timings = {}
    started = time.monotonic()
    pipeline.train_speech_tokenizer(dirs["speech_tokenizer"], plan.preset("speech_tokenizer"), plan)
    timings["speech_tokenizer"] = time.monotonic() - started
    for network, trainer in (("speech_decoder", pipeline.train_speech_decoder), ("llm", pipeline.train_llm)):
        started = time.monotonic()
        trainer(dirs[network], plan.preset(network), plan, dirs["speech_tokenizer"])
        timings[network] = time.monotonic() - started
    report = {"plan": plan_name, "checkpoints": {k: str(v) for k, v in dirs.items()},
              "train_seconds": {k: round(v, 1) for k, v in timings.items()}}
    if evaluate:
        report["metrics"] = {}
        for network, directory in dirs.items():
            if not asr and evaluated_since_trained(directory):
                report["metrics"][network] = read_metrics(directory)["metrics"] | {"gate": read_metrics(directory)["gate"]}
                continue
            report["metrics"][network] = ev.evaluate_checkpoint(
                network, directory, plan=plan_name, tokenizer_dir=dirs["speech_tokenizer"], asr=asr)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plan", choices=sorted(pipeline.PLANS),
                        help="default: keep the plan already built under --out, else tiny")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip evaluation (no metrics.json); checkpoints evaluated since training are not re-evaluated")
    parser.add_argument("--asr", action="store_true",
                        help="also measure reconstruction WER with faster-whisper (installed on first use)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = build(args.out, args.plan, not args.no_eval, args.asr)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
