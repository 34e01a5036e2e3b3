"""`ramster` command line: one subcommand per job, each in the module that does it.

Each subcommand module provides `add_parser(subparsers)` (which sets
`func` on its parser) so this file stays a thin dispatcher.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module providing add_parser()
SUBCOMMANDS = {
    "node": "ramster.node_cli",
    "stats": "ramster.stats_cli",
    "keygen": "ramster.keygen_cli",
    "bench": "ramster.bench.cli",
}


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ramster",
        description="Transcendent memory in userspace: compressed (zcache2/zbud) and remote (RAMster) "
        "memory, served to real programs as NBD swap and cache devices.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # a subcommand not built yet
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"ramster {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # run through the package's module so subcommands raise the same UserError class
    from ramster.cli import main as _main

    sys.exit(_main())
