"""Remotify (SPEC §5.3) and selfshrink (§5.7): moving this node's pages to peers and back.

A part of Ramster (one of its bases). A background worker wakes every
`interval` seconds, or at once when a store found memory full (`make_room`),
and while less than `low_water` of the budget is free it moves batches of LRU
frames to peers, persistent class first:

1. zcache takes up to FRAMES_PER_BATCH frames off their LRU (`take_lru`) and
   hands over their local pages' compressed payloads; the pages stay readable
   and writable meanwhile.
2. The pages go to `replicas` targets (the emptier of two random peers each
   time), grouped by pool in PutPages of at most PAGES_PER_MESSAGE pages, each
   with its xxh3 checksum, through each target's FIFO (ramster.py), so a flush
   queued later cannot overtake them.
3. A page every target acknowledged, whose handle still holds that very page,
   is committed: an entry in the remote table, and zcache swaps the local pampd
   for the remote one, freeing the frame with its last page. A page some target
   refused, or that was overwritten or flushed in the window, keeps its local
   copy (or its newer one) and the copies that did arrive are flushed. With a
   swap disk, a persistent page is written through to it before it leaves.
4. zcache puts the frames that still hold pages back at their LRU tail.

Stores waiting in `make_room` are woken after every batch that freed frames,
and told "no" by a pass that freed none. Selfshrink is the way back: once
the persistent page count stopped growing for SELFSHRINK_INERTIA passes,
remote pages are fetched home into free frames (all of them up to
SELFSHRINK_HYSTERESIS, else 5 % a pass), never by evicting anything.

The policy can change while the node runs (ramster.control, the seed's
sysfs switches): a pool kind's remotify on or off, the targets, selfshrink
on or off, and a selfshrink now. A change replaces the policy object (the
worker reads it afresh each batch) and wakes the worker; pages already on
a peer stay there.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

import xxhash

from ..zcache import EPH, PERS
from . import wire
from .fetch import RemoteError

log = logging.getLogger("ramster.remote")

PAGES_PER_MESSAGE = 64
FRAMES_PER_BATCH = 32
# the seed's frontswap_inertia and frontswap_hysteresis (SPEC §5.7)
SELFSHRINK_INERTIA = 3
SELFSHRINK_HYSTERESIS = 20

checksum = xxhash.xxh3_64_intdigest


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


class Remotify:
    """Ramster's remotify worker, its batches and selfshrink."""

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
        cur = self.zc.zpages_in_memory(True) + self.remote_pages[PERS]
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
        for pool, oid, index, _ in self.zc.remote_slots(persistent=True):
            if done >= want or not self._has_room() or self._wants_room():
                break
            try:
                await self.get(pool, oid, index)  # a non-freeing get repatriates
            except RemoteError:
                continue
            done += 1
        return done

    async def selfshrink_now(self, max_pages: int | None = None) -> int:
        """Bring up to `max_pages` (default: every) remote persistent pages home now,
        without waiting for the inertia: `ramster ctl selfshrink`. Like a pass, only
        into free frames and only while the budget is not short; returns pages moved."""
        done = 0
        for pool, oid, index, _ in self.zc.remote_slots(persistent=True):
            if (max_pages is not None and done >= max_pages) or not self._has_room() or self._wants_room():
                break
            try:
                await self.get(pool, oid, index)  # a non-freeing get repatriates
            except RemoteError:
                continue
            done += 1
        return done

    # ---- runtime settings (ramster.control) -------------------------------------------------

    def set_remotify(self, persistent: bool, on: bool) -> None:
        """Turn remotify of one pool kind on or off (pages already remote stay there)."""
        field = "persistent" if persistent else "ephemeral"
        self.policy = dataclasses.replace(self.policy, **{field: on})
        self.wake()

    def set_targets(self, targets: tuple[int, ...]) -> None:
        """The peers new pages may go to; pages already on others stay there."""
        self.policy = dataclasses.replace(self.policy, targets=tuple(targets))
        self.wake()

    def set_selfshrink(self, on: bool) -> None:
        self.policy = dataclasses.replace(self.policy, selfshrink=on)

    def wake(self) -> None:
        """Run a remotify pass now (the budget or the policy changed)."""
        self._wake.set()

    def _wants_room(self) -> bool:
        zc = self.zc
        budget = zc.max_pageframes
        return budget - zc.pageframes_in_use < self.policy.low_water * budget

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
        zc = self.zc
        targets = self.choose_targets()
        if not targets:
            return 0
        # (p, pool, oid, index, data); huge pages first: a frame each, sent raw
        pages, taken = zc.take_lru(c == PERS, frames)
        if not pages:
            return zc.release_taken(taken)
        by_pool: dict = {}
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
            current = zc.still_taken(p, pool, oid, index)
            complete = len(got) == len(targets)
            if complete and current:
                # write-through: with a swap disk the page survives its peers too. A disk
                # that refuses it (full, failing) leaves the page on its peers only: its
                # state map keeps saying the file is stale, so losing them reads EIO, not old bytes
                on_disk = bool(c) and zc.write_through(pool, oid, index, data)
                r = self.table.alloc(sorted(got), len(data), sums[id(pg)], c, on_disk)
                if zc.commit_remote(p, pool, oid, index, r):
                    self._pool_nodes.setdefault(self._pool_key(pool), set()).update(got)
                    self.remote_pages[c] += 1
                    if c:
                        self.pers_pages_remoted += 1
                    else:
                        self.eph_pages_remoted += 1
                    continue
                self.table.release(r)
                current = False
            if not current or not complete:
                for node in got:  # copies nobody will ask for
                    self._send(node, wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")
            if current:
                if c:
                    self.pers_pages_remote_failed += 1
                else:
                    self.eph_pages_remote_failed += 1
        return zc.release_taken(taken)
