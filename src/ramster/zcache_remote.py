"""Zcache's door for RAMster (SPEC §5): remotify, pages on peers, foreign pools.

A part of Zcache (it is one of its bases): every operation the remote/
package needs from this node's memory, so that it never touches tmem, zbud or
the arena itself. What RAMster sees of a page is its handle (Pool, oid,
index), an opaque pampd it got from `take_lru`, the compressed payload, and
for a page on peers the number r of its entry in RAMster's remote table
(pampd.py says how r is kept in tmem's slot).

Remotify is a three-step protocol, because the network sits in the middle:

A page a dedup entry shares stays here; a single entry's page travels as
its owner's, its pampd the entry's (zcache_dedup.py).

1. `take_lru` takes LRU frames off their LRU (zbud makes them zombies; huge
   frames move to huge_taken) and returns their local pages' payloads. The
   pages stay readable and may be overwritten or flushed meanwhile.
2. For each page its peers acknowledged, `commit_remote` replaces the pampd
   by the remote one if, and only if, the handle still holds that very page,
   still taken (`still_taken`): a put or flush in the window wins. Freeing the
   old pampd frees a zombie frame with its last page. `write_through` gives a
   persistent page to the writeback sink as well, before it leaves.
3. `release_taken` puts every frame that still holds a page back at the tail
   of its LRU, and says how many frames the batch freed.

As a peer, this node keeps other nodes' pages in foreign pools (tmem client
id = the owner's node number): stored compressed as they came, under the same
budget and policies, counted in foreign_pages, and never remotified again.
"""
from __future__ import annotations

from .pampd import COLD_BASE, DEDUP_BASE, REMOTE_BASE, huge, huge_frame, is_huge, is_remote, remote, remote_entry
from .tmem import LOCAL_CLIENT, Pool
from .units import PAGE_SIZE
from .zbud import EPH, MAX_BUDDY_SIZE, PERS


class RemoteDoor:
    """What RAMster asks of Zcache (see the module comment)."""

    # ---- RAMster: plugging in, and what it asks of this node ------------------------------

    def attach_remote(self, remote) -> None:
        """Plug RAMster in. `remote` is told, by these calls, when something with
        remote copies is freed: free_remote(r, pool, oid, index) for a page (oid
        None: its object or pool is being destroyed), free_obj(pool, oid,
        pool_destroy) after an object's pages, free_pool(pool) for a local pool;
        and its stats() join this node's."""
        if self.remote is not None and self.remote is not remote:
            raise ValueError("a RAMster is attached to this Zcache already")
        self.remote = remote

    def available_pageframes(self) -> int:
        """Frames a put could have now: free ones within the budget plus the
        ephemeral ones ouroboros would eat (what this node tells its peers)."""
        a = self.arena
        return max(0, a.budget - a.in_use) + self.zbud.pageframes[EPH]

    def zpages_in_memory(self, persistent: bool) -> int:
        """Pages of the class held in this node's memory (the seed's eph/pers_zpages)."""
        return self.zpages[PERS if persistent else EPH]

    def local_pool(self, pool_id: int) -> Pool | None:
        """The local pool with this id, or None."""
        return self.tmem.get_pool(LOCAL_CLIENT, pool_id)

    # ---- RAMster: remotify (SPEC §5.3) ---------------------------------------------------

    def take_lru(self, persistent: bool, nframes: int) -> tuple[list[tuple], list[int]]:
        """Take up to `nframes` LRU frames of the class off their LRU for remotify
        (for persistent pages, huge frames first: a frame each, and no codec).

        Returns (pages, taken). pages are (pampd, pool, oid, index, payload) of the
        local pages on those frames, the payload as put_raw takes it; frames that
        hold a foreign page are not taken (foreign pages never travel on). The
        pages stay readable meanwhile. Give `taken` back to `release_taken` when
        the batch is over, whatever happened to it."""
        pages: list[tuple] = []
        taken: list[int] = []
        if persistent:
            for f, h in list(self.huge_lru.items()):
                if len(taken) >= nframes:
                    break
                if h[0].client_id != LOCAL_CLIENT:
                    continue
                del self.huge_lru[f]
                self.huge_taken[f] = h
                p = huge(f)
                taken.append(p)
                pages.append((p, h[0], h[1], h[2], self._huge_page(p)))
        c = PERS if persistent else EPH
        zbud, tmem = self.zbud, self.tmem
        for _ in range(min(nframes - len(taken), zbud.pageframes[c])):
            buds = zbud.make_zombie_lru(c, with_data=True)
            if not buds:
                break
            unit = zbud.unit_of(buds[0][0])
            if any(b[1] != LOCAL_CLIENT for b in buds):
                zbud.revive_zombie(unit)
                continue
            taken.append(unit)
            for p, client_id, pool_id, oid, index, data in buds:
                pool = tmem.get_pool(client_id, pool_id)
                if pool is not None and tmem.lookup(pool, oid, index) == p:
                    q = p
                elif self.dedup is not None:  # a single dedup entry travels; a shared copy stays
                    q = self._dedup_travels(p, pool, oid, index)
                    if not q:
                        continue
                else:
                    continue
                if zbud.codec(p):  # recompressed, perhaps: peers get the cluster's codec
                    data = self._portable(p)
                pages.append((q, pool, oid, index, data))
        return pages, taken

    def still_taken(self, p: int, pool: Pool, oid: int, index: int) -> bool:
        """Whether the handle still holds this very page, and it is still off its LRU
        (no put, flush or writeback replaced it while the batch was on the wire)."""
        return self.tmem.lookup(pool, oid, index) == p and self._is_taken(p)

    def write_through(self, pool: Pool, oid: int, index: int, payload) -> bool:
        """Hand a persistent page leaving for peers to the writeback sink too, so it
        survives its peers; True only if the sink took it."""
        sink = self.writeback_sink
        if sink is None or not pool.persistent:
            return False
        return sink(pool, oid, index, self.decode(payload)) is True

    def commit_remote(self, p: int, pool: Pool, oid: int, index: int, r: int) -> bool:
        """The page of pampd p now lives on peers, in RAMster's remote table entry r:
        the handle gets the remote pampd and the local copy is freed. False (and
        nothing changes) if the handle no longer holds that very page."""
        if not self.still_taken(p, pool, oid, index):
            return False
        return self.tmem.replace(pool, oid, index, remote(r))

    def release_taken(self, taken: list[int]) -> int:
        """End a remotify batch: frames whose pages did not all leave go back to the
        tail of their LRU, with their pages. Returns the frames that were freed."""
        freed = 0
        zbud = self.zbud
        for p in taken:
            if p > 0:  # the allocator's unit: a zbud frame node, a dense zspage
                if zbud.is_zombie(p):
                    zbud.revive_zombie(p)
                else:
                    freed += 1
            elif huge_frame(p) in self.huge_taken:
                self._revive_huge(p)
            else:
                freed += 1
        return freed

    def _is_taken(self, p: int) -> bool:
        """True while the page of pampd p is off its LRU for remotify or writeback."""
        if p > 0:
            return self.zbud.is_taken(p)
        if p <= DEDUP_BASE:
            return self._dedup_taken(p)
        if p <= COLD_BASE:
            return False  # a cold group's page is on no LRU (zcache_cold.py)
        return huge_frame(p) in self.huge_taken

    def decode(self, payload) -> bytes:
        """The page a stored payload (put_raw, get_raw) stands for: a huge page's payload is the page itself."""
        if len(payload) == PAGE_SIZE:
            return bytes(payload)
        data = self._decompress(payload)
        if len(data) != PAGE_SIZE:
            raise RuntimeError(f"decompressed page is {len(data)} bytes, not {PAGE_SIZE}")
        return data

    # ---- RAMster: pages on peers ---------------------------------------------------------

    def remote_entry(self, pool: Pool, oid: int, index: int) -> int:
        """The remote table entry of the page if it lives on a peer, else -1."""
        p = self.tmem.lookup(pool, oid, index)
        return remote_entry(p) if is_remote(p) else -1

    def remote_slots(self, persistent: bool | None = None, pool: Pool | None = None, oid: int | None = None):
        """(pool, oid, index, r) of every page of the local pools (or of one pool,
        or one object) that lives on a peer: a walk of the whole index, for
        repairs, redelivery and selfshrink, never per page."""
        pools = [pool] if pool is not None else self.tmem.clients[LOCAL_CLIENT]
        for q in pools:
            if q is None or (persistent is not None and q.persistent != persistent):
                continue
            for o, index, p in self.tmem.scan_below(q, REMOTE_BASE, oid):
                if p > COLD_BASE:  # not a cold group's or a dedup entry's pampd
                    yield q, o, index, remote_entry(p)

    def drop_page(self, pool: Pool, oid: int, index: int) -> bool:
        """Flush one page of a Pool, not counted as a caller's flush (RAMster: a remote
        page fetched with free, an ephemeral one no peer has any more, a foreign page
        its owner flushed)."""
        return self.tmem.flush_page(pool, oid, index)

    # ---- RAMster: foreign pools, this node as a peer's store (SPEC §5.4) -------------------

    def foreign_pool(self, client_id: int, pool_id: int, persistent: bool) -> Pool | None:
        """The pool that holds node `client_id`'s pages of its pool `pool_id`,
        created on first use; None if an existing pool is of the other kind."""
        pool = self.tmem.get_pool(client_id, pool_id)
        if pool is None:
            pool = self.tmem.new_pool(client_id, persistent, pool_id=pool_id)
        return pool if pool.persistent == persistent else None

    def find_foreign_pool(self, client_id: int, pool_id: int) -> Pool | None:
        """Node `client_id`'s pool `pool_id` here, if it exists (not created)."""
        return self.tmem.get_pool(client_id, pool_id)

    def put_raw(self, pool: Pool, oid: int, index: int, cdata, keep_old: bool = False) -> bool:
        """Store an already compressed payload (a foreign page, a repatriated one)
        under the normal policies, without compressing it again. A payload of
        exactly PAGE_SIZE bytes is a huge page (see decode()): no compressed
        page is that long. With keep_old, a refusal leaves an older copy in
        place (repatriation: the older copy is the remote one, and it must not
        go before the page is home)."""
        clen = len(cdata)
        if clen == PAGE_SIZE and pool.persistent:
            stored = self._store_huge(pool, oid, index, cdata)
        elif not 0 < clen <= MAX_BUDDY_SIZE:
            self.compress_poor += 1
            stored = False
        else:
            stored = self._store(pool, oid, index, cdata, clen, pool.cls)
        if not stored:
            if keep_old:
                self.failed_puts[pool.cls] += 1
                return False
            return self._put_failed(pool, oid, index, pool.cls)
        if pool.client_id != LOCAL_CLIENT:
            c = pool.cls
            self.foreign_pages[c] += 1
            if self.foreign_pages[c] > self.foreign_pages_max[c]:
                self.foreign_pages_max[c] = self.foreign_pages[c]
        return True

    def get_raw(self, pool: Pool, oid: int, index: int, free: bool) -> bytes | None:
        """The stored payload under the handle (see decode()), or None (zbud and huge pages only)."""
        p = self.tmem.lookup(pool, oid, index)
        if p <= DEDUP_BASE:
            p = self.dedup.under[DEDUP_BASE - p]
        if p > 0:
            data = self._portable(p)  # in the cluster's codec, even if recompressed here
        elif is_huge(p):
            data = self._huge_page(p)
        else:
            return None
        if free:
            self.tmem.flush_page(pool, oid, index)
        return data

    def drop_object(self, pool: Pool, oid: int) -> bool:
        """Flush an object of a foreign pool (its owner flushed it)."""
        return self.tmem.flush_object(pool, oid)

    def destroy_foreign_pool(self, pool: Pool) -> bool:
        """Destroy a foreign pool and every page in it (its owner destroyed it)."""
        if pool.client_id == LOCAL_CLIENT:
            raise ValueError("not a foreign pool")
        return self.tmem.destroy_pool(pool)

