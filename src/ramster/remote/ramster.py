"""RAMster, the engine side (SPEC §5): one node's part of the cluster's memory.

Every node is client and server. As a client, a background worker moves the
LRU frames of the enabled classes to one or two peers and gives the local
pampds up for remote ones (remotify.py); a get of a remote page fetches it
asynchronously, so the NBD server keeps serving, and repatriates it when
there is room (fetch.py). As a server, it keeps other nodes' pages in foreign
pools under its own budget and policies (host.py). Where each remote page
lives is the remote table (table.py). Ramster is composed of those parts; this
file holds what they share:

- the per-node FIFO: every PutPages, flush and pool destroy for node n goes
  through one queue and one sender task for n, so a flush never overtakes the
  put of the copy it must remove. A flush the peer may have missed (it was
  paused or cut off) is kept and sent again, ahead of anything newer, when the
  peer is back with the same boot, unless a copy placed there since could be
  hit by it;
- the hooks zcache calls when something with remote copies is freed (a page:
  FlushPage to each holder; an object or pool being destroyed: one
  FlushObject or DestroyPool per node that ever held its pages);
- placement: up to `replicas` distinct connected targets, each the emptier of
  two random candidates (the power of two choices);
- the peer-change hook (a restarted peer lost every copy it held; a peer back
  with the same boot gets its missed flushes; either way, pages short of
  copies are repaired), and the "ramster." counters (SPEC §5.11).

What this fixes in the seed (SPEC §5.3–5.6, §7.5): a local pampd is replaced
only after the peer acknowledged the page, and only if the handle still holds
that very zbud (a put or flush in the window no longer orphans or
overwrites); a page may have two copies; targets are chosen by free space;
a freeing remote get deletes the slot; flushes and pool destroys reach every
node that holds pages, in FIFO order with the puts to that node; every page
carries an xxh3 checksum that is verified on every get; requests time out;
foreign pages are never remotified again.
"""
from __future__ import annotations

import asyncio
import logging
import random

from ..zcache import EPH, PERS, Zcache
from . import wire
from .fetch import Fetch, RemoteError
from .host import Host
from .remotify import FRAMES_PER_BATCH, PAGES_PER_MESSAGE, SELFSHRINK_INERTIA, Remotify, RemotifyPolicy
from .table import MAX_COPIES, NO_NODE, RemoteTable

__all__ = [
    "FRAMES_PER_BATCH", "MAX_COPIES", "NO_NODE", "PAGES_PER_MESSAGE",
    "Ramster", "RemoteError", "RemoteTable", "RemotifyPolicy",
]  # fmt: skip

log = logging.getLogger("ramster.remote")

_COUNTERS = (
    "eph_pages_remoted", "pers_pages_remoted", "eph_pages_remote_failed", "pers_pages_remote_failed",
    "remote_eph_pages_succ_get", "remote_pers_pages_succ_get", "remote_eph_pages_unsucc_get",
    "remote_pers_pages_unsucc_get", "pers_pages_remote_nomem", "remote_objects_flushed", "remote_pages_flushed",
    "remote_object_flushes_failed", "remote_page_flushes_failed", "remote_pools_destroyed",
    "remote_pool_destroys_failed", "remote_pers_pages_lost", "remote_checksum_errors", "remote_gets_after_reconnect",
    "pages_rereplicated",
)  # fmt: skip


class Ramster(Remotify, Fetch, Host):
    """The RAMster plug-in of one node's Zcache; `net` is a PeerNetwork-like object:
    `await net.request(node, msg)`, `net.peers()`, and it calls `handle` for requests."""

    def __init__(self, zc: Zcache, net, policy: RemotifyPolicy):
        self.zc = zc
        self.net = net
        self.policy = policy
        self.table = RemoteTable(policy.replicas)
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.remote_pages = [0, 0]  # remote_eph_pages, remote_pers_pages (the seed's sysfs value)
        self._queues: dict[int, asyncio.Queue] = {}
        self._senders: dict[int, asyncio.Task] = {}
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._dying_nodes: set[int] = set()  # nodes holding pages of the object being destroyed
        self._pool_nodes: dict[tuple, set[int]] = {}  # pool key -> nodes that ever held its pages
        self._worker: asyncio.Task | None = None
        self._wake = asyncio.Event()
        # stores waiting for room: resolved True by each batch that freed frames,
        # False by a pass that could free none
        self._room: asyncio.Future | None = None
        self._closing = False
        # selfshrink's memory between passes: the last page count and the countdown
        self._ss_last = 0
        self._ss_inertia = SELFSHRINK_INERTIA
        self._repairing = False
        self._undelivered: dict[int, list] = {}  # node -> flushes that failed, oldest first
        zc.attach_remote(self)

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        tasks = [t for t in (self._worker, *self._senders.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- hooks (called by zcache when tmem frees remote pampds) --------------------------------

    @staticmethod
    def _pool_key(pool) -> tuple[int, bool]:
        return pool.pool_id, pool.persistent

    def free_remote(self, r: int, pool, oid: int | None, index: int) -> None:
        nodes = self.table.nodes(r)
        self.remote_pages[self.table.cls[r]] -= 1
        self.table.release(r)
        if oid is None:
            # an object or pool is being destroyed: one FlushObject per node covers it (free_obj)
            self._dying_nodes.update(nodes)
            return
        for node in nodes:
            self._send(node, wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")

    def free_obj(self, pool, oid: int, pool_destroy: bool) -> None:
        nodes, self._dying_nodes = self._dying_nodes, set()
        if pool_destroy:
            self._pool_nodes.setdefault(self._pool_key(pool), set()).update(nodes)
            return
        for node in nodes:
            self._send(node, wire.FlushObject(pool.pool_id, pool.persistent, oid), "object")

    def free_pool(self, pool) -> None:
        """A local pool was destroyed (zcache calls this for local pools only)."""
        for node in self._pool_nodes.pop(self._pool_key(pool), set()):
            self._send(node, wire.DestroyPool(pool.pool_id, pool.persistent), "pool")

    # ---- per-node FIFO of puts and flushes (SPEC §5.6, but FIFO) -------------------------------

    def _queue(self, node: int) -> asyncio.Queue:
        q = self._queues.get(node)
        if q is None:
            q = self._queues[node] = asyncio.Queue()
            self._senders[node] = asyncio.get_running_loop().create_task(self._sender(node, q))
        return q

    def _send(self, node: int, msg, kind: str) -> None:
        """Queue a flush; its outcome only moves counters."""
        self._queue(node).put_nowait((msg, None, kind))

    def _call(self, node: int, msg) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._queue(node).put_nowait((msg, fut, "put"))
        return fut

    async def _sender(self, node: int, q: asyncio.Queue) -> None:
        while True:
            msg, fut, kind = await q.get()
            try:
                reply = await self.net.request(node, msg)
                ok = not isinstance(reply, wire.ErrorReply)
            except Exception as e:  # PeerUnavailable, PeerTimeout
                reply, ok = e, False
                if fut is None:
                    # a flush the peer may not have had: sent again when it is back (same boot)
                    self._undelivered.setdefault(node, []).append((msg, kind))
            if fut is not None:
                if not fut.done():
                    fut.set_result(reply)
                continue
            if kind == "page":
                if ok:
                    self.remote_pages_flushed += 1
                else:
                    self.remote_page_flushes_failed += 1
            elif kind == "object":
                if ok:
                    self.remote_objects_flushed += 1
                else:
                    self.remote_object_flushes_failed += 1
            elif ok:
                self.remote_pools_destroyed += 1
            else:
                self.remote_pool_destroys_failed += 1

    def _redeliver(self, node: int) -> None:
        """`node` is back with the same boot: send it the flushes it may have missed,
        ahead of anything else queued for it. A flush is sent again only if no copy
        of the same page (object, pool) placed on `node` since could be hit by it: a
        flush that did arrive late on the old connection came before that copy's put."""
        for msg, kind in self._undelivered.pop(node, ()):
            if self._may_flush(node, msg):
                self._send(node, msg, kind)

    def _may_flush(self, node: int, msg) -> bool:
        zc, table = self.zc, self.table
        pool = zc.local_pool(msg.pool_id)
        if pool is None or pool.persistent != msg.persistent:
            return True
        if isinstance(msg, wire.FlushPage):
            r = zc.remote_entry(pool, msg.oid, msg.index)
            return not (r >= 0 and node in table.nodes(r))
        oid = msg.oid if isinstance(msg, wire.FlushObject) else None
        return not any(node in table.nodes(r) for _, _, _, r in zc.remote_slots(pool=pool, oid=oid))

    # ---- choosing targets ----------------------------------------------------------------------

    def _candidates(self) -> list:
        wanted = set(self.policy.targets)
        return [p for p in self.net.peers() if p.number in wanted and p.connected and not p.down]

    def choose_targets(self) -> list[int]:
        """Up to `replicas` distinct connected targets; each pick is the emptier of two
        random candidates (the power of two choices), so load spreads without
        everyone piling onto the one emptiest node. With fewer targets up than
        replicas, a page gets the copies it can (memory must not fill up because a
        peer is down); it is counted short and repaired when a target comes back."""
        cands = self._candidates()
        chosen: list[int] = []
        while len(chosen) < self.policy.replicas:
            left = [p for p in cands if p.number not in chosen]
            if not left:
                break
            two = random.sample(left, min(2, len(left)))
            best = max(two, key=lambda p: p.free_frames or 0)
            chosen.append(best.number)
        return chosen

    def choose_targets_excluding(self, exclude: set[int]) -> list[int]:
        cands = [p for p in self._candidates() if p.number not in exclude]
        cands.sort(key=lambda p: -(p.free_frames or 0))
        return [p.number for p in cands]

    def peer_changed(self, node: int, connected: bool, restarted: bool) -> None:
        """The network's on_peer_change. A restarted peer lost every page it held; a
        peer that reconnects with the same boot still holds its copies. Whenever a
        peer goes or comes, pages short of copies are repaired where possible."""
        if restarted:
            self.node_lost_pages(node)
            self._undelivered.pop(node, None)  # its memory is gone, and the copies with it
        elif connected:
            self._redeliver(node)
        if self.policy.replicas >= 2:
            asyncio.get_running_loop().create_task(self.repair())

    # ---- statistics ---------------------------------------------------------------------------

    def stats(self) -> dict:
        """The "ramster." counters; zcache adds the foreign pool ones it keeps itself."""
        s = {f"ramster.{k}": getattr(self, k) for k in _COUNTERS}
        s["ramster.remote_pages_short"] = self.table.short  # the re-replication backlog
        s["ramster.remote_eph_pages"] = self.remote_pages[EPH]
        s["ramster.remote_pers_pages"] = self.remote_pages[PERS]
        return s
