"""The `ramster` command line: one program, one subcommand per job.

    ramster node     run a node: compressed memory served as NBD swap/cache exports
    ramster stats    a running node's counters, summarised like zramctl
    ramster ctl      change a running node's settings (memory, remotify, peers) or
                     make it act (selfshrink, mark idle, write back), no restart
    ramster keygen   make a node's key pair, its identity in a RAMster cluster
    ramster bench    measure the engine, the NBD path, a cluster or a guest against
                     a baseline taken in the same run
    ramster ramdisk  serve plain RAM disks over NBD (the server alone: tests, trying clients)

main.py is the dispatcher and nothing else; each subcommand lives in the
module named after it here and provides `add_parser(subparsers)`, which
declares its flags and sets `func` on its parser. The work itself is
imported by `func` when it runs, so `ramster --help` and a mistyped flag
cost no more than argparse, and a subcommand whose optional dependency is
missing cannot break the others.

The convention for mistakes: a subcommand raises UserError with a one-line
message; main prints it as "ramster COMMAND: message" and exits with status
2, with no traceback. A traceback means a bug in ramster, never a bad flag
or an unreadable file. Sizes and addresses on every command line follow the
one grammar in ramster.units.

`ramster`, `python -m ramster` and `python -m ramster.cli` are the same
program.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 2, no traceback."""
