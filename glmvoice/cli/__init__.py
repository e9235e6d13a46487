"""`glmvoice`: one command for the project's offline tools.

Each subcommand is a module with `add_arguments(parser)` and `run(args) -> int`. The offline tools live in
this package; commands that drive a service or a training Job live with that code and register themselves
as entry points in the `glmvoice.commands` group (pyproject.toml), so glmvoice/ never imports services/ or
training/. A module is imported only when the parser is built or its command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

COMMANDS = {
    "info": ("glmvoice.cli.info", "parameter count and vocabulary facts of a checkpoint or preset"),
    "tokenize": ("glmvoice.cli.tokenize", "audio files to speech token codes (JSON lines)"),
    "generate": ("glmvoice.cli.generate", "run the LM on ids, text or audio; print ids, text and speech codes"),
    "quantize": ("glmvoice.cli.quantize", "a weight-only INT8 / INT4 copy of an LM checkpoint"),
    "synthesize": ("glmvoice.cli.synthesize", "speech codes to a waveform with the speech decoder"),
    "chat": ("glmvoice.cli.chat", "one spoken turn against a running stack (gRPC, or /v1/realtime with --ws), reply to a WAV"),
}
ENTRY_POINT_GROUP = "glmvoice.commands"


def commands() -> dict[str, tuple[str, str]]:
    """name -> (module, help): the built-in commands, then those registered by services and training."""
    found = dict(COMMANDS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        module = importlib.import_module(entry.module)
        found[entry.name] = (entry.module, module.HELP[entry.name])
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmvoice", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in commands().items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(commands()[args.command][0])
    try:
        return module.run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"glmvoice {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
