"""`glmvoice quantize`: a weight-only INT8 / INT4 copy of an LM checkpoint (glmvoice.models.quantize)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="float LM directory in the glm-4-voice-9b layout")
    parser.add_argument("--bits", type=int, choices=(4, 8), required=True)
    parser.add_argument("--group-size", type=int, default=None,
                        help="INT4 only: input columns per scale (32, 64, 128, 256); default one scale per output channel")
    parser.add_argument("--out", required=True, help="directory for the quantized checkpoint")
    parser.add_argument("--max-shard-gb", type=float, default=5.0)


def run(args: argparse.Namespace) -> int:
    from glmvoice.models.llm_checkpoint import write_quantized_llm
    from glmvoice.models.quantize import QuantScheme

    scheme = QuantScheme(bits=args.bits, group_size=args.group_size)
    sizes = write_quantized_llm(args.checkpoint, args.out, scheme, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(json.dumps({"out": args.out, "scheme": scheme.to_json(), **sizes}))
    return 0
