"""A RAMster peer that only stores foreign pages, in a dict: the other end for peer tests.

`MemoryStore` is a request handler for a PeerNetwork that keeps what peers
put, keyed by (node, pool, persistent, oid, index), up to `frames` pages, and
answers gets and flushes as a node's foreign pools would, without zcache.
In-process tests hand it to PeerNetwork.start(); a test that must pause
(SIGSTOP) or kill a peer runs this file as a process:

    python tests/memory_peer.py --config cluster.toml --name m

which prints "listening on ADDR", "boot id N" and "ready", then serves until
SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ramster import compress
from ramster.config import ConfigError
from ramster.remote import wire
from ramster.remote.clusterconf import load_cluster
from ramster.remote.peer import PeerNetwork
from ramster.remote.wire import ErrorReply


class MemoryStore:
    """A request handler that keeps foreign pages in a dict, up to `frames` pages."""

    def __init__(self, frames: int = 1 << 20):
        self.frames = frames
        self.pages: dict[tuple, tuple[int, bytes]] = {}

    def free(self) -> int:
        return max(0, self.frames - len(self.pages))

    async def __call__(self, node: int, m):
        t = type(m)
        if t is wire.PutPages:
            statuses = []
            for p in m.pages:
                key = (node, m.pool_id, m.persistent, p.oid, p.index)
                if key in self.pages or self.free() > 0:
                    self.pages[key] = (p.checksum, p.data)
                    statuses.append(0)
                else:
                    statuses.append(wire.ENOMEM)
            return wire.PutReply(statuses, self.free())
        if t is wire.Get:
            key = (node, m.pool_id, m.persistent, m.oid, m.index)
            hit = self.pages.pop(key, None) if m.free else self.pages.get(key)
            if hit is None:
                return wire.GetReply(False, 0, b"", self.free())
            return wire.GetReply(True, hit[0], hit[1], self.free())
        if t is wire.FlushPage:
            self.pages.pop((node, m.pool_id, m.persistent, m.oid, m.index), None)
        elif t is wire.FlushObject:
            for k in [k for k in self.pages if k[:4] == (node, m.pool_id, m.persistent, m.oid)]:
                del self.pages[k]
        elif t is wire.DestroyPool:
            for k in [k for k in self.pages if k[:3] == (node, m.pool_id, m.persistent)]:
                del self.pages[k]
        else:
            return ErrorReply(wire.ENOPROTOOPT, f"{t.__name__} is not handled here")
        return wire.Ack(self.free())


async def _serve(args) -> None:
    cfg = load_cluster(args.config, args.name)
    store = MemoryStore(args.frames)
    net = PeerNetwork(cfg, compressor=args.compressor)
    await net.start(store, free_frames=store.free)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {cfg.local.address}", flush=True)
    print(f"boot id {net.boot_id}", flush=True)
    print("ready", flush=True)
    await stop.wait()
    await net.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="memory_peer.py",
                                description="Run one RAMster peer that stores foreign pages in memory.")
    p.add_argument("--config", required=True, help="the cluster's TOML file")
    p.add_argument("--name", required=True, help="this node's name in the file")
    p.add_argument("--frames", type=int, default=1 << 20, help="pages it will hold")
    p.add_argument("--compressor", default=compress.DEFAULT,
                   help=f"the compressor it announces (default: {compress.DEFAULT}); peers must use the same")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        asyncio.run(_serve(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
