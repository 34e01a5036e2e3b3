"""`ramster`'s dispatcher: builds the parser from the subcommand modules and runs one.

Subcommand modules are imported by name so that one whose imports fail for a
reason of its own surfaces as that error, not as a missing command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import UserError

# subcommand -> module providing add_parser(subparsers)
SUBCOMMANDS = {
    "node": "ramster.cli.node",
    "stats": "ramster.cli.stats",
    "ctl": "ramster.cli.ctl",
    "keygen": "ramster.cli.keygen",
    "bench": "ramster.cli.bench",
    "ramdisk": "ramster.cli.ramdisk",
}

DESCRIPTION = """\
Transcendent memory in userspace: compressed (zcache2/zbud) and remote
(RAMster) memory, served to real programs as NBD swap and cache devices.

Start a node with `ramster node` and point nbd-client, QEMU, nbdcopy or fio
at it; `ramster stats` shows what it holds. A RAMster cluster is several
nodes sharing one cluster file, each with a key pair from `ramster keygen`.
`ramster COMMAND --help` explains each command.
"""

EPILOG = """\
sizes: bytes, or with a K, M, G or T suffix (also KB/KiB, ...; always binary).
addresses: HOST:PORT, [IPV6]:PORT, *:PORT (every interface), and unix:PATH where a
Unix socket makes sense (NBD listen addresses).
exit status: 0 done; 1 it could not be done (e.g. no node answering `ramster stats`);
2 a mistake in the command line or the configuration (one line on stderr); 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="ramster", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ramster {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
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
