"""Evaluation Job: `python -m training.jobs.evaluate --model M --checkpoint DIR --out DIR/eval`.

Measures the checkpoint on held-out data, applies the eval gate (training/eval_gate.yaml) and writes
metrics.json into the checkpoint and into --out. Exit code 0 when the gate passes, 1 when it fails (the
metrics are written either way, so the promoter can show why). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.jobs.train import MODELS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plan", default="tiny", help="held-out data recipe (training.pipeline.PLANS)")
    parser.add_argument("--speech-tokenizer", type=Path,
                        help="tokenizer checkpoint (llm, speech_decoder); default: the one recorded at training")
    parser.add_argument("--asr", action="store_true", help="reconstruction WER with faster-whisper (installed on first use)")
    parser.add_argument("--gate", type=Path, help="thresholds file (default training/eval_gate.yaml)")
    args = parser.parse_args(argv)

    from training import evaluate
    from training.pipeline import recorded_tokenizer

    tokenizer = args.speech_tokenizer
    if tokenizer is None and args.model != "speech_tokenizer":
        tokenizer = recorded_tokenizer(args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    result = evaluate.evaluate_checkpoint(args.model, args.checkpoint, args.plan, tokenizer, args.asr, args.out,
                                          args.gate or evaluate.GATE_FILE)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0 if result["gate"] else 1


if __name__ == "__main__":
    sys.exit(main())
