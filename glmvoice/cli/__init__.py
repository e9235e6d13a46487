"""`glmvoice`: one command for the project's offline tools.

Each subcommand is a module in this package with `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `glmvoice --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "info": ("glmvoice.cli.info", "parameter count and vocabulary facts of a checkpoint or preset"),
    "tokenize": ("glmvoice.cli.tokenize", "audio files to speech token codes (JSON lines)"),
    "generate": ("glmvoice.cli.generate", "run the LM on ids, text or audio; print ids, text and speech codes"),
    "synthesize": ("glmvoice.cli.synthesize", "speech codes to a waveform with the speech decoder"),
    "chat": ("glmvoice.cli.chat", "one spoken turn against a running orchestrator (gRPC), reply to a WAV"),
    "promote": ("glmvoice.cli.promote", "make a checkpoint the served Triton version, one replica at a time"),
    "rollback": ("glmvoice.cli.promote", "serve the previously promoted version again"),
    "jobs": ("glmvoice.cli.jobs", "submit and follow training, evaluation and promotion Jobs on Kubernetes"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmvoice", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"glmvoice {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
