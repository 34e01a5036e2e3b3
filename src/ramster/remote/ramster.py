"""RAMster, the engine side (SPEC §5): remote pampds, remotify, remote gets, foreign pools.

Every node is client and server. As a client, a background worker takes the
LRU frames of the enabled classes, sends their compressed zbuds to one or two
peers (PutPages) and, once every chosen peer acknowledged a page, replaces
the local pampd with a remote one, freeing the frame. A get of a remote page
fetches it (asynchronously, so the NBD server keeps serving), checks its
checksum and repatriates it when there is room. As a server, it stores other
nodes' pages in foreign pools under its own budget and policies.

What this fixes in the seed (SPEC §5.3–5.6, §7.5): a local pampd is replaced
only after the peer acknowledged the page, and only if the handle still holds
that very zbud (a put or flush in the window no longer orphans or
overwrites); a page may have two copies; targets are chosen by free space;
a freeing remote get deletes the slot; flushes and pool destroys reach every
node that holds pages, in FIFO order with the puts to that node; every page
carries an xxh3 checksum that is verified on every get; requests time out;
foreign pages are never remotified again.

A remote pampd is REMOTE_BASE - r; r indexes the remote table below.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import random
from array import array
from dataclasses import dataclass

import xxhash

from ..tmem import LOCAL_CLIENT, Pool
from ..zbud import EPH, PERS, ZOMBIE
from ..units import PAGE_SIZE
from ..zcache import REMOTE_BASE, Zcache
from . import wire

log = logging.getLogger("ramster.remote")

PAGES_PER_MESSAGE = 64
MAX_COPIES = 2  # copies of one remote page the table tracks (replicas = 1 or 2)
FRAMES_PER_BATCH = 32
NO_NODE = -1
# the seed's frontswap_inertia and frontswap_hysteresis (SPEC §5.7)
SELFSHRINK_INERTIA = 3
SELFSHRINK_HYSTERESIS = 20

checksum = xxhash.xxh3_64_intdigest


class RemoteError(Exception):
    """A remote page could not be read: `lost` if no copy exists any more."""

    def __init__(self, message: str, lost: bool):
        super().__init__(message)
        self.lost = lost
        self.errno = errno.EIO


class RemoteTable:
    """Where each remote page lives: the nodes holding a copy (at most MAX_COPIES), its
    compressed size and checksum, and whether the swap disk holds it too."""

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas
        self.node_a = array("b")
        self.node_b = array("b")
        self.size = array("H")
        self.cksum = array("Q")
        self.cls = bytearray()
        self.on_disk = bytearray()  # 1: written through to the swap disk as well
        self._free = array("i")
        self.live = 0
        # kept as entries change, for stats and repairs: pages each node holds, pages
        # whose only copy a node holds, pages with a copy but fewer than `replicas`
        self.held = [0] * 16
        self.alone = [0] * 16
        self.short = 0

    def alloc(self, nodes: list[int], size: int, cksum: int, c: int, on_disk: bool = False) -> int:
        if self._free:
            r = self._free.pop()
        else:
            r = len(self.size)
            self.node_a.append(NO_NODE)
            self.node_b.append(NO_NODE)
            self.size.append(0)
            self.cksum.append(0)
            self.cls.append(0)
            self.on_disk.append(0)
        # a new or released entry holds no node: nothing to uncount
        self._count(nodes, 1)
        self.node_a[r] = nodes[0] if nodes else NO_NODE
        self.node_b[r] = nodes[1] if len(nodes) > 1 else NO_NODE
        self.size[r] = size
        self.cksum[r] = cksum
        self.cls[r] = c
        self.on_disk[r] = on_disk
        self.live += 1
        return r

    def nodes(self, r: int) -> list[int]:
        return [n for n in (self.node_a[r], self.node_b[r]) if n != NO_NODE]

    def set_nodes(self, r: int, nodes: list[int]) -> None:
        if len(nodes) > MAX_COPIES:
            raise ValueError(f"at most {MAX_COPIES} copies of a page are tracked")
        self._count(self.nodes(r), -1)
        self._count(nodes, 1)
        self.node_a[r] = nodes[0] if nodes else NO_NODE
        self.node_b[r] = nodes[1] if len(nodes) > 1 else NO_NODE

    def _count(self, nodes: list[int], d: int) -> None:
        for n in nodes:
            self.held[n] += d
        if len(nodes) == 1:
            self.alone[nodes[0]] += d
        if 0 < len(nodes) < self.replicas:
            self.short += d

    def release(self, r: int) -> None:
        self.set_nodes(r, [])
        self.size[r] = 0
        self._free.append(r)
        self.live -= 1


@dataclass
class RemotifyPolicy:
    persistent: bool = True  # pers_remotify_enable
    ephemeral: bool = True  # eph_remotify_enable
    targets: tuple[int, ...] = ()  # node numbers pages may go to
    replicas: int = 1
    interval: float = 1.0  # seconds between remotify passes (the seed: 1 s)
    # remotify only while fewer than this share of the budget is free
    low_water: float = 0.25
    selfshrink: bool = True
    selfshrink_interval: float = 5.0  # the seed's selfshrink_interval


_COUNTERS = (
    "eph_pages_remoted", "pers_pages_remoted", "eph_pages_remote_failed", "pers_pages_remote_failed",
    "remote_eph_pages_succ_get", "remote_pers_pages_succ_get", "remote_eph_pages_unsucc_get",
    "remote_pers_pages_unsucc_get", "pers_pages_remote_nomem", "remote_objects_flushed", "remote_pages_flushed",
    "remote_object_flushes_failed", "remote_page_flushes_failed", "remote_pools_destroyed",
    "remote_pool_destroys_failed", "remote_pers_pages_lost", "remote_checksum_errors", "pages_rereplicated",
)  # fmt: skip


class Ramster:
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
        zc.remote = self

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

    def free_frames(self) -> int:
        a = self.zc.arena
        return max(0, a.budget - a.in_use) + self.zc.zbud.pageframes[EPH]

    # ---- pamops hooks (called by zcache when tmem frees remote pampds) ------------------------

    @staticmethod
    def _pool_key(pool: Pool) -> tuple[int, bool]:
        return pool.pool_id, pool.persistent

    def free_remote(self, p: int, pool: Pool, oid: int | None, index: int) -> None:
        r = REMOTE_BASE - p
        nodes = self.table.nodes(r)
        self.remote_pages[self.table.cls[r]] -= 1
        self.table.release(r)
        if oid is None:
            # an object or pool is being destroyed: one FlushObject per node covers it (free_obj)
            self._dying_nodes.update(nodes)
            return
        for node in nodes:
            self._send(node, wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")

    def free_obj(self, pool: Pool, oid: int, pool_destroy: bool) -> None:
        nodes, self._dying_nodes = self._dying_nodes, set()
        if pool_destroy:
            self._pool_nodes.setdefault(self._pool_key(pool), set()).update(nodes)
            return
        for node in nodes:
            self._send(node, wire.FlushObject(pool.pool_id, pool.persistent, oid), "object")

    def free_pool(self, pool: Pool) -> None:
        if pool.client_id != LOCAL_CLIENT:
            return  # a foreign pool: its owner keeps no remote copies of it here
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
        pool = zc.tmem.get_pool(LOCAL_CLIENT, msg.pool_id)
        if pool is None or pool.persistent != msg.persistent:
            return True

        def placed(oid: int, index: int) -> bool:
            p = zc.tmem.lookup(pool, oid, index)
            return p <= REMOTE_BASE and node in table.nodes(REMOTE_BASE - p)

        if isinstance(msg, wire.FlushPage):
            return not placed(msg.oid, msg.index)
        if isinstance(msg, wire.FlushObject):
            return not any(placed(msg.oid, i) for i in zc.tmem.indexes(pool, msg.oid))
        return not any(node in table.nodes(r) for q, _, _, r in self._remote_slots() if q is pool)

    # ---- choosing targets ----------------------------------------------------------------------

    def _candidates(self) -> list:
        wanted = set(self.policy.targets)
        return [p for p in self.net.peers() if p.number in wanted and p.connected]

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

    # ---- remotify (SPEC §5.3) ----------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_shrink = loop.time() + self.policy.selfshrink_interval
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.policy.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                moved = 0
                while not self._closing and self._wants_room():
                    n = await self.remotify_batch()
                    if not n:
                        break
                    moved += n
                    self._room_made(True)  # waiting stores retry now, not at the end of the pass
                self._room_made(moved > 0)
                if self.policy.selfshrink and loop.time() >= next_shrink:
                    next_shrink = loop.time() + self.policy.selfshrink_interval
                    await self.selfshrink_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("remotify pass failed")

    # ---- frontswap selfshrinking (SPEC §5.7) ------------------------------------------------

    async def selfshrink_pass(self) -> int:
        """When the persistent pages stopped growing for `inertia` passes, bring
        remote ones home (all of them up to the hysteresis of 20, else 5 %), so
        the exposure to a peer's crash shrinks while the node is idle. Only into
        frames that are free: it never makes room by evicting."""
        cur = self.zc.zpages[PERS] + self.remote_pages[PERS]
        if not self.remote_pages[PERS]:
            return 0
        if cur > self._ss_last:
            self._ss_last, self._ss_inertia = cur, SELFSHRINK_INERTIA
            return 0
        self._ss_last = cur
        self._ss_inertia -= 1
        if self._ss_inertia > 0:
            return 0
        self._ss_inertia = SELFSHRINK_INERTIA
        remote = self.remote_pages[PERS]
        want = remote if remote <= SELFSHRINK_HYSTERESIS else remote // 20
        done = 0
        for pool, oid, index, _ in self._remote_slots(persistent=True):
            if done >= want or not self._has_room() or self._wants_room():
                break
            try:
                await self.get(pool, oid, index)  # a non-freeing get repatriates
            except RemoteError:
                continue
            done += 1
        return done

    def _remote_slots(self, persistent: bool | None = None, node: int | None = None):
        """(pool, oid, index, r) of every remote page of the local pools (a slow walk)."""
        zc = self.zc
        for pool in zc.tmem.clients[LOCAL_CLIENT]:
            if pool is None or (persistent is not None and pool.persistent != persistent):
                continue
            for oid, obj in list(pool.objs.items()):
                for key, leaf in list(obj.items()):
                    if min(leaf) > REMOTE_BASE:  # C-speed skip of leaves with no remote page
                        continue
                    for slot in range(64):
                        p = leaf[slot]
                        if p <= REMOTE_BASE:
                            r = REMOTE_BASE - p
                            if node is None or node in self.table.nodes(r):
                                yield pool, oid, (key << 6) | slot, r

    def _wants_room(self) -> bool:
        a = self.zc.arena
        return a.budget - a.in_use < self.policy.low_water * a.budget

    def _classes(self) -> list[int]:
        out = []
        if self.policy.persistent:
            out.append(PERS)
        if self.policy.ephemeral:
            out.append(EPH)
        return out

    async def remotify_batch(self, frames: int = FRAMES_PER_BATCH) -> int:
        """Move up to `frames` LRU frames (persistent first) to peers; frames freed."""
        freed = 0
        for c in self._classes():
            freed += await self._remotify_class(c, frames)
            if freed:
                break
        return freed

    async def make_room(self, timeout: float) -> bool:
        """For a store that found the budget full: wake the remotify worker and
        wait (at most `timeout`) until its next batch frees frames (True) or its
        pass ends without freeing any (False)."""
        if self._worker is None or not self._candidates():
            return False
        if self._room is None:
            self._room = asyncio.get_running_loop().create_future()
        room = self._room
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(room), timeout)
        except asyncio.TimeoutError:
            return False

    def _room_made(self, made: bool) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(made)

    async def _remotify_class(self, c: int, frames: int) -> int:
        zc, zbud = self.zc, self.zc.zbud
        targets = self.choose_targets()
        if not targets:
            return 0
        nodes: list[int] = []
        # (p, pool, oid, index, data); huge pages first: a frame each, sent raw
        pages: list[tuple] = zc.take_huge_lru(frames) if c else []
        huge = [pg[0] for pg in pages]
        for _ in range(min(frames - len(huge), zbud.pageframes[c])):
            buds = zbud.make_zombie_lru(c, with_data=True)
            if not buds:
                break
            n = buds[0][0] >> 1
            if any(b[1] != LOCAL_CLIENT for b in buds):
                zbud.revive_zombie(n)  # foreign pages never travel on
                continue
            nodes.append(n)
            for p, client_id, pool_id, oid, index, data in buds:
                pool = zc.tmem.get_pool(client_id, pool_id)
                if pool is not None and zc.tmem.lookup(pool, oid, index) == p:
                    pages.append((p, pool, oid, index, data))
        if not pages:
            for n in nodes:
                self._revive(c, n)
            for p in huge:
                zc.revive_huge(p)
            return 0
        by_pool: dict[Pool, list[tuple]] = {}
        for page in pages:
            by_pool.setdefault(page[1], []).append(page)
        sums = {id(page): checksum(page[4]) for page in pages}
        acks: dict[int, set[int]] = {id(page): set() for page in pages}
        calls = []
        for pool, group in by_pool.items():
            for i in range(0, len(group), PAGES_PER_MESSAGE):
                chunk = group[i : i + PAGES_PER_MESSAGE]
                msg = wire.PutPages(pool.pool_id, pool.persistent,
                                    [wire.PutPage(pg[2], pg[3], sums[id(pg)], pg[4]) for pg in chunk])
                for node in targets:
                    calls.append((node, chunk, self._call(node, msg)))
        for node, chunk, fut in calls:
            reply = await fut
            if isinstance(reply, wire.PutReply):  # (the network notes its free_frames)
                for pg, st in zip(chunk, reply.statuses):
                    if st == 0:
                        acks[id(pg)].add(node)
        for pg in pages:
            p, pool, oid, index, data = pg
            got = acks[id(pg)]
            # the handle must still hold this very page, taken off its LRU by us
            current = zc.tmem.lookup(pool, oid, index) == p and (
                zbud.state[p >> 1] & ZOMBIE if p > 0 else zc.is_taken(p))
            complete = len(got) == len(targets)
            on_disk = False
            if complete and current and c and zc.writeback_sink is not None:
                # write-through: with a swap disk the page survives its peers too. A disk
                # that refuses it (full, failing) leaves the page on its peers only: its
                # state map keeps saying the file is stale, so losing them reads EIO, not old bytes
                on_disk = zc.writeback_sink(pool, oid, index, zc.decode(data)) is True
            if complete and current:
                r = self.table.alloc(sorted(got), len(data), sums[id(pg)], c, bool(on_disk))
                self._pool_nodes.setdefault(self._pool_key(pool), set()).update(got)
                zc.tmem.replace(pool, oid, index, REMOTE_BASE - r)
                self.remote_pages[c] += 1
                if c:
                    self.pers_pages_remoted += 1
                else:
                    self.eph_pages_remoted += 1
                continue
            if not current or not complete:
                for node in got:  # copies nobody will ask for
                    self._send(node, wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")
            if current:
                if c:
                    self.pers_pages_remote_failed += 1
                else:
                    self.eph_pages_remote_failed += 1
        moved = sum(1 for n in nodes if not zbud.state[n] & ZOMBIE)
        moved += sum(1 for p in huge if not zc.is_taken(p))
        for n in nodes:
            self._revive(c, n)
        for p in huge:
            zc.revive_huge(p)
        return moved

    def _revive(self, c: int, n: int) -> None:
        """A frame still zombie after its batch keeps its pages locally."""
        if self.zc.zbud.state[n] & ZOMBIE:
            self.zc.zbud.revive_zombie(n)

    # ---- remote get (SPEC §5.5) ------------------------------------------------------------------

    async def get(self, pool: Pool, oid: int, index: int, free: bool = False) -> bytes | None:
        """The page, wherever it is. Raises RemoteError when a remote page cannot be read."""
        zc = self.zc
        free = free or not pool.persistent
        while True:
            p = zc.tmem.lookup(pool, oid, index)
            if p > REMOTE_BASE:
                return zc.tmem.get(pool, oid, index, free)
            key = (pool.client_id, pool.pool_id, oid, index)
            pending = self._inflight.get(key)
            if pending is None:
                break
            await pending  # concurrent gets of one page share one fetch, then look again
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            return await self._fetch(pool, oid, index, p, free)
        finally:
            del self._inflight[key]
            fut.set_result(None)

    async def _fetch(self, pool: Pool, oid: int, index: int, p: int, free: bool) -> bytes | None:
        zc, table = self.zc, self.table
        r = REMOTE_BASE - p
        c = pool.cls
        want = table.cksum[r]
        nodes = table.nodes(r)
        data = None
        source = NO_NODE
        unreachable = 0
        # connected holders first: a paused one costs a whole request timeout
        for node in sorted(nodes, key=lambda n: not self.net.connected(n)):
            try:
                reply = await self.net.request(node, wire.Get(pool.pool_id, pool.persistent, oid, index, free))
            except Exception as e:
                log.debug("get from node %d failed: %s", node, e)
                unreachable += 1
                continue
            if not isinstance(reply, wire.GetReply) or not reply.found:
                continue
            if checksum(reply.data) != want:
                self.remote_checksum_errors += 1
                log.error("page %s/%d from node %d failed its checksum", oid, index, node)
                continue
            data, source = reply.data, node
            break
        still = zc.tmem.lookup(pool, oid, index) == p
        if data is None:
            if c:
                self.remote_pers_pages_unsucc_get += 1
            else:
                self.remote_eph_pages_unsucc_get += 1
            if not c:
                if still:  # an ephemeral page may vanish: a miss
                    zc.tmem.flush_page(pool, oid, index)
                return None
            if unreachable:
                raise RemoteError(f"no node holding page {oid}/{index} answered", lost=False)
            if still and nodes:
                # every holder answered that it has no copy: forget them, count the loss once
                table.set_nodes(r, [])
                if not table.on_disk[r]:
                    self.remote_pers_pages_lost += 1
            raise RemoteError(f"page {oid}/{index} is lost: no node holds it any more", lost=True)
        if still:
            if free:
                # the source dropped its copy with the get; other replicas are flushed
                table.set_nodes(r, [n for n in nodes if n != source])
                zc.tmem.flush_page(pool, oid, index)
            elif self._has_room():
                # repatriate: the page comes home; the dup put frees the remote pampd,
                # which flushes the remote copies in order with later puts
                if not zc.put_raw(pool, oid, index, data, keep_old=True):
                    self.pers_pages_remote_nomem += 1
            else:
                self.pers_pages_remote_nomem += 1
        if c:
            self.remote_pers_pages_succ_get += 1
        else:
            self.remote_eph_pages_succ_get += 1
        try:
            return zc.decode(data)
        except Exception as e:  # a codec error: the bytes passed their checksum, so the codec differs
            raise RemoteError(f"page {oid}/{index} could not be decoded: {e}", lost=False) from None

    def _has_room(self) -> bool:
        a = self.zc.arena
        return a.in_use < a.budget

    # ---- failures ------------------------------------------------------------------------------

    def node_lost_pages(self, node: int) -> int:
        """`node` restarted (its pages are gone): forget its copies. Returns pages left
        with no copy on any peer; those not on the swap disk either are counted lost."""
        table = self.table
        orphaned = lost = 0
        for r in range(len(table.size)):
            if not table.size[r]:
                continue
            nodes = table.nodes(r)
            if node in nodes:
                left = [n for n in nodes if n != node]
                table.set_nodes(r, left)
                if not left:
                    orphaned += 1
                    if table.cls[r] and not table.on_disk[r]:
                        lost += 1
        self.remote_pers_pages_lost += lost
        if orphaned:
            log.warning("node %d restarted: %d remote page(s) had no other copy (%d not on the swap disk either)",
                        node, orphaned, lost)
        return orphaned

    def pages_on(self, node: int) -> int:
        """Remote pages of this node that `node` holds."""
        return self.table.held[node]

    def pages_only_on(self, node: int) -> int:
        """Remote pages whose only copy `node` holds."""
        return self.table.alone[node]

    async def repair(self) -> int:
        """Give every remote page fewer than `replicas` copies on connected nodes a new
        copy, read from a connected holder. The new copy is added to the page's
        holders once acknowledged; only then may a holder that is not connected be
        dropped from the list (its copy is flushed when it can be). Returns pages copied."""
        if self.policy.replicas < 2 or self._repairing:
            return 0
        self._repairing = True
        try:
            return await self._repair()
        finally:
            self._repairing = False

    async def _repair(self) -> int:
        zc, table, net = self.zc, self.table, self.net
        want = self.policy.replicas
        todo = []
        for pool, oid, index, r in self._remote_slots():
            nodes = table.nodes(r)
            live = [n for n in nodes if net.connected(n)]
            if live and len(live) < want:
                todo.append((pool, oid, index, r))
        done = 0
        for pool, oid, index, r in todo:
            p = REMOTE_BASE - r
            if zc.tmem.lookup(pool, oid, index) != p:
                continue  # flushed or rewritten meanwhile
            nodes = table.nodes(r)
            live = [n for n in nodes if net.connected(n)]
            spare = self.choose_targets_excluding(set(nodes))
            if not live or not spare:
                continue
            try:
                reply = await net.request(live[0], wire.Get(pool.pool_id, pool.persistent, oid, index, False))
            except Exception:
                continue
            if not isinstance(reply, wire.GetReply) or not reply.found or checksum(reply.data) != table.cksum[r]:
                continue
            put = wire.PutPages(pool.pool_id, pool.persistent, [wire.PutPage(oid, index, table.cksum[r], reply.data)])
            ack = await self._call(spare[0], put)
            if not (isinstance(ack, wire.PutReply) and ack.statuses == [0]):
                continue
            if zc.tmem.lookup(pool, oid, index) != p:
                self._send(spare[0], wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")
                continue
            nodes = table.nodes(r) + [spare[0]]
            while len(nodes) > MAX_COPIES:  # the replacement is in: a holder that is down may go
                gone = next(n for n in nodes if not net.connected(n))
                nodes.remove(gone)
                self._send(gone, wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")
            table.set_nodes(r, nodes)
            self._pool_nodes.setdefault(self._pool_key(pool), set()).add(spare[0])
            self.pages_rereplicated += 1
            done += 1
        if done:
            log.info("%d remote page(s) copied to other nodes", done)
        return done

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

    # ---- server side (SPEC §5.4) -----------------------------------------------------------------

    async def handle(self, from_node: int, msg):
        zc = self.zc
        if isinstance(msg, wire.PutPages):
            pool = zc.foreign_pool(from_node, msg.pool_id, msg.persistent)
            if pool is None:  # the pool exists here with the other persistence
                statuses = [wire.EINVAL] * len(msg.pages)
            else:
                statuses = [0 if zc.put_raw(pool, pg.oid, pg.index, pg.data) else wire.ENOMEM for pg in msg.pages]
            return wire.PutReply(statuses, self.free_frames())
        if isinstance(msg, wire.Get):
            pool = zc.tmem.get_pool(from_node, msg.pool_id)
            data = zc.get_raw(pool, msg.oid, msg.index, msg.free) if pool is not None else None
            if data is None:
                return wire.GetReply(False, 0, b"", self.free_frames())
            return wire.GetReply(True, checksum(data), data, self.free_frames())
        pool = zc.tmem.get_pool(from_node, msg.pool_id) if hasattr(msg, "pool_id") else None
        if isinstance(msg, wire.FlushPage):
            if pool is not None:
                zc.tmem.flush_page(pool, msg.oid, msg.index)
        elif isinstance(msg, wire.FlushObject):
            if pool is not None:
                zc.tmem.flush_object(pool, msg.oid)
        elif isinstance(msg, wire.DestroyPool):
            if pool is not None:
                zc.tmem.destroy_pool(pool)
        else:
            return wire.ErrorReply(wire.ENOPROTOOPT, f"unexpected {type(msg).__name__}")
        return wire.Ack(self.free_frames())

    # ---- statistics ---------------------------------------------------------------------------

    def stats(self) -> dict:
        s = {f"ramster.{k}": getattr(self, k) for k in _COUNTERS}
        s["ramster.remote_pages_short"] = self.table.short  # the re-replication backlog
        s["ramster.remote_eph_pages"] = self.remote_pages[EPH]
        s["ramster.remote_pers_pages"] = self.remote_pages[PERS]
        s["ramster.foreign_eph_pages"] = self.zc.foreign_pages[EPH]
        s["ramster.foreign_eph_pages_max"] = self.zc.foreign_pages_max[EPH]
        s["ramster.foreign_pers_pages"] = self.zc.foreign_pages[PERS]
        s["ramster.foreign_pers_pages_max"] = self.zc.foreign_pages_max[PERS]
        return s
