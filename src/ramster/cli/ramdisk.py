"""`ramster ramdisk`: serve plain RAM disks over NBD, with the node's server and limits.

No zcache and no exports of a node: only the NBD server (ramster.nbd.server)
in front of MemoryExports (ramster.nbd.ramdisk). The interop tests start it
as a separate process to put real clients (and hostile ones) against the
protocol and the limits alone. It prints "listening on ADDRESS" for every
bound address, then "ready", and serves until SIGINT or SIGTERM.
"""
from __future__ import annotations

import argparse

from ..units import parse_size
from . import UserError

DESCRIPTION = """\
Serve RAM disks over NBD: each --memory NAME:SIZE is an export of SIZE bytes
of zeroes held in this process, gone when it stops. Useful to try an NBD
client, or to test the server's protocol and limits without a node.
"""

EPILOG = """\
examples:
  ramster ramdisk --memory disk:64M --listen unix:/tmp/nbd.sock
  ramster ramdisk --memory a:1G --memory b:1M --default a --listen 127.0.0.1:10810 -v
"""


def add_parser(sub) -> argparse.ArgumentParser:
    # the limits' defaults are the server's (ramster.nbd.server): None here passes nothing
    p = sub.add_parser("ramdisk", help="serve RAM disks over NBD (no node: for tests and trying clients)",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", action="append", default=[], metavar="NAME:SIZE",
                   help="add a RAM disk export (repeatable), e.g. disk:64M")
    p.add_argument("--listen", action="append", default=[], metavar="ADDR",
                   help="HOST:PORT, [IPV6]:PORT or unix:PATH (repeatable)")
    p.add_argument("--default", metavar="NAME", help="export used for the empty name")
    p.add_argument("--read-only", action="store_true", help="refuse writes")
    p.add_argument("--max-request", metavar="SIZE", help="longest READ or WRITE (default 2M)")
    p.add_argument("--connection-cap", metavar="SIZE", help="bytes one connection may hold (default 16M)")
    p.add_argument("--node-cap", metavar="SIZE", help="bytes all connections may hold (default 64M)")
    p.add_argument("--max-connections", type=int, metavar="N", help="connections served at once (default 32)")
    p.add_argument("--handshake-timeout", type=float, metavar="SEC",
                   help="seconds a handshake may take, 0: no limit (default 10)")
    p.add_argument("--request-timeout", type=float, metavar="SEC",
                   help="seconds a request may take to arrive, 0: no limit (default 30)")
    p.add_argument("--drain-timeout", type=float, metavar="SEC",
                   help="seconds a client may leave its replies unread, 0: no limit (default 60)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log connections (-v) and every step of them (-vv) on stderr")
    p.set_defaults(func=main)
    return p


def _exports(args: argparse.Namespace) -> dict:
    from ..nbd.ramdisk import MemoryExport

    exports = {}
    for spec in args.memory:
        name, sep, size = spec.rpartition(":")
        if not sep:
            raise UserError(f"invalid --memory {spec!r}: expected NAME:SIZE")
        try:
            exports[name] = MemoryExport(name, parse_size(size, "--memory size"), read_only=args.read_only)
        except ValueError as e:
            raise UserError(str(e)) from None
    if not exports:
        raise UserError("nothing to serve: give at least one --memory NAME:SIZE")
    if not args.listen:
        raise UserError("nowhere to listen: give at least one --listen ADDR")
    if args.default is not None and args.default not in exports:
        raise UserError(f"--default {args.default!r} is not an export")
    return exports


_SIZES = ("max_request", "connection_cap", "node_cap")
_LIMITS = _SIZES + ("max_connections", "handshake_timeout", "request_timeout", "drain_timeout")


async def _serve(server, listen: list[str]) -> None:
    import asyncio
    import signal

    await server.start(listen)
    for address in server.addresses:
        print(f"listening on {address}", flush=True)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from ..nbd.server import NbdServer

    exports = _exports(args)
    limits = {}
    try:
        for name in _LIMITS:
            value = getattr(args, name)
            if value is not None:
                limits[name] = parse_size(value, "--" + name.replace("_", "-")) if name in _SIZES else value
        server = NbdServer(exports, default_export=args.default, **limits)
    except ValueError as e:
        raise UserError(str(e)) from None
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(server, args.listen))
    except (ValueError, OSError) as e:  # an address that cannot be parsed or bound
        raise UserError(str(e)) from None
    return 0
