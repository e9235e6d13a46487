"""Training Job: `python -m training.jobs.train --model M --preset P --out /store/<model>/<runId>`.

Trains one network into --out (published layout + provenance.json + loss.png); the LM and the decoder
need the speech tokenizer whose codes they learn (--speech-tokenizer). --parent continues from an existing
checkpoint (required for presets without a from-scratch recipe, e.g. the real-size LM). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODELS = ("speech_tokenizer", "llm", "speech_decoder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--preset", required=True, help="network preset: tiny, glm-4-voice")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plan", default="tiny", help="data recipe, steps and seed (training.pipeline.PLANS)")
    parser.add_argument("--speech-tokenizer", type=Path, help="tokenizer checkpoint (llm, speech_decoder)")
    parser.add_argument("--parent", type=Path, help="checkpoint to continue from")
    parser.add_argument("--seed", type=int, help="override the plan's seed")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    args = parser.parse_args(argv)

    import dataclasses

    import torch

    from glmvoice.provenance import read_provenance
    from training import pipeline

    if args.plan not in pipeline.PLANS:
        parser.error(f"--plan must be one of {sorted(pipeline.PLANS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = pipeline.PLANS[args.plan]
    if args.seed is not None:
        plan = dataclasses.replace(plan, seed=args.seed)
    if args.model == "speech_tokenizer":
        out = pipeline.train_speech_tokenizer(args.out, args.preset, plan, args.parent, device)
    else:
        if args.speech_tokenizer is None:
            parser.error(f"--speech-tokenizer is required for --model {args.model}")
        trainer = pipeline.train_llm if args.model == "llm" else pipeline.train_speech_decoder
        out = trainer(args.out, args.preset, plan, args.speech_tokenizer, args.parent, device)
    json.dump({"checkpoint": str(out), "provenance": dataclasses.asdict(read_provenance(out))}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
