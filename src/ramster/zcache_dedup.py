"""Zcache's dedup paths: the put that shares a stored copy, and how a shared
copy leaves memory (eviction, writeback, remotify) correctly for every owner.

A part of Zcache (one of its bases), used only by a Zcache built with
dedup=True; dedup.py says what the table holds. The put compresses the page
as without dedup; the payload's xxh3-128 digest and the pool's class make a
key; a key in the index leads to a stored copy, whose payload is compared
with the new one byte for byte, and only an equal payload is shared (the
codec is deterministic: equal pages compress to equal payloads, and a
payload decompresses to one page). Hashing the payload rather than the page
reads a third of the bytes or less, and reads them from the cache. An
entry's copy is shared at once: the slot gets the entry's pampd and the
refcount grows. A plain page (one owner so far) is checked first, since its
index value may have outlived it (dedup.py), and becomes an entry of two
owners. Any other page is stored as without dedup, and the table's `link`
(what `_store` links with on such a node) indexes it. The put is a put_page
of its own, bound at construction, so a node without dedup runs the put
path without a test for it. A write to one owner never changes another: a
put replaces the slot's pampd and drops one reference, as it frees any old
page.

A copy in a frame that leaves memory, by owner kind:

- ephemeral frame eaten (ouroboros, an idle writeback's drop): every
  current owner's slot is unlinked, as an ephemeral page's would be, and
  the entry goes with the frame;
- persistent frame written back: the page is handed to the sink once per
  current owner, and each owner the sink took is flushed (one reference
  each); an owner it refused keeps the copy, and the frame goes back to the
  LRU with it. So every owner's page is either in its own place in the
  backing file or still in memory;
- remotify: a plain page travels as any page; an entry's copy is not
  remotified: it is one page of memory standing for several, and is the last
  thing worth sending away. (An entry left with one owner stays an entry:
  tmem cannot say which slot that is without the owner set.)

A plain page taken off its LRU (remotify or writeback has its frame) is
never made an entry: it leaves as the page of its one owner.

A put that shares a copy taken off its LRU meanwhile is safe: the copy stays
until its last reference goes, whichever path drops the others.
"""
from __future__ import annotations

from xxhash import xxh3_128_intdigest

from .handles import check_index, check_page, normalize_oid
from .pampd import DEDUP_BASE, SAME_FILLED_MAX_CLEN
from .tmem import INDEX_LIMIT, LOCAL_CLIENT, OID_LIMIT, Pool
from .units import PAGE_SIZE


class DedupPaths:
    """Zcache's dedup paths (see the module comment)."""

    # ---- the put -----------------------------------------------------------------------------

    def _put_page_dedup(self, pool_id: int, oid, index: int, page, huge: bool = False, keep_old: bool = False) -> bool:
        """put_page on a node with dedup (bound as its put_page at construction)."""
        pool = self._pools.get(pool_id)
        if pool is None:
            pool = self._pool(pool_id)
        if type(oid) is not int or not 0 <= oid < OID_LIMIT:
            oid = normalize_oid(oid)
        if type(index) is not int or not 0 <= index < INDEX_LIMIT:
            index = check_index(index)
        if type(page) is not bytes or len(page) != PAGE_SIZE:
            page = check_page(page)
        c = pool.cls
        cdata = self._compress(page)
        clen = len(cdata)
        if clen <= SAME_FILLED_MAX_CLEN and page == bytes(page[:8]) * 512:
            return self._put_same_filled(pool, oid, index, page)
        # the compressed payload is hashed and compared: it is in the cache already,
        # and a third of the page's bytes or less (the codec is deterministic, so
        # equal pages have equal payloads, and equal payloads are equal pages)
        key = xxh3_128_intdigest(cdata, c)  # the class seeds it: never a key across classes
        dt = self.dedup
        v = dt.index.get(key)
        if v is not None:
            if v > 0:
                if self._share_plain(v, key, pool, oid, index, cdata, page):
                    return True
            else:
                d = DEDUP_BASE - v
                p = dt.under[d]
                # a recompressed copy (zcache_recompress.py) keeps the key of its first
                # payload: its page is compared instead, decoded as a get decodes it
                # (bytes(): a memoryview compares item by item, twenty times slower)
                if bytes(self.zbud.payload(p)) == cdata or (self.zbud.codec(p) and self.get_data(p, pool) == page):
                    self.dedup_hits += 1
                    if self.tmem.lookup(pool, oid, index) != v:  # else: the same page again
                        self._dedup_share(d, p, (pool, oid, index))
                        self.tmem.put(pool, oid, index, v)
                    self.zbud.touch(p)
                    return True
                self.dedup_collisions += 1
        dt.pending = key  # the table's link takes it
        ok = self._store(pool, oid, index, cdata, clen, c, page if huge else None)
        dt.pending = None  # a refusal, or a huge page: no link took it
        if ok:
            return True
        if keep_old:
            self.failed_puts[c] += 1
            return False
        return self._put_failed(pool, oid, index, c)

    def _share_plain(self, p: int, key: int, pool: Pool, oid: int, index: int, cdata, page) -> bool:
        """A put whose key leads to the plain page p: share it if it is still that
        page (dedup.py: index values are checked when found, not removed when their
        page goes), making it an entry of two owners; False: store the put's own."""
        zbud = self.zbud
        if not zbud.stored_size(p) or zbud.is_taken(p) or zbud.kind_of(p) != pool.cls:
            return False  # freed, or taken by remotify or writeback (it must leave as it is)
        client_id, pool_id, o_oid, o_index = zbud.handle(p)
        opool = self.tmem.get_pool(client_id, pool_id) if client_id == LOCAL_CLIENT else None
        if opool is None or self.tmem.lookup(opool, o_oid, o_index) != p:
            return False  # another page now, or one being replaced
        if not (bytes(zbud.payload(p)) == cdata or (zbud.codec(p) and self.get_data(p, pool) == page)):
            self.dedup_collisions += 1
            return False
        self.dedup_hits += 1
        if opool is not pool or o_oid != oid or o_index != index:  # else: the same page again
            d = self.dedup.promote(p, key, (opool, o_oid, o_index), (pool, oid, index))
            q = DEDUP_BASE - d
            self.tmem.relink(opool, o_oid, o_index, q)
            self.tmem.put(pool, oid, index, q)  # frees what this slot held before
            self.dedup_pages += 1
            self.dedup_saved_pages += 1
        zbud.touch(p)
        return True

    def _dedup_share(self, d: int, p: int, owner: tuple) -> None:
        dt = self.dedup
        first = None
        if d not in dt.owners:
            client_id, pool_id, oid, index = self.zbud.handle(p)
            first = (self.tmem.get_pool(client_id, pool_id), oid, index)
        q = DEDUP_BASE - d
        lookup = self.tmem.lookup
        dt.share(d, first, owner, lambda o: lookup(*o) == q)
        if dt.refs[d] == 2:
            self.dedup_pages += 1
        self.dedup_saved_pages += 1

    # ---- pamops on an entry --------------------------------------------------------------------

    def _free_dedup(self, p: int, pool: Pool, oid: int | None, index: int) -> None:
        """free() on a node with dedup: a plain page's index value goes with it (the
        paths that free whole frames leave theirs to be checked and replaced)."""
        if p > 0:
            self.dedup.forget(p)
        self._free_any(p, pool, oid, index)

    def _dedup_free(self, q: int, pool: Pool) -> None:
        """One reference of entry DEDUP_BASE - q goes; the last frees the copy."""
        dt = self.dedup
        d = DEDUP_BASE - q
        n = dt.refs[d] - 1
        if n:
            dt.refs[d] = n
            self.dedup_saved_pages -= 1
            if n == 1:
                self.dedup_pages -= 1
            return
        self.free(dt.drop(d), pool, None, 0)

    # ---- a copy leaving memory -----------------------------------------------------------------

    def _bud_entry(self, p: int, pool: Pool | None, oid: int, index: int) -> int:
        """The entry whose copy is zbudref p (zbud's handle names (pool, oid, index)), or -1."""
        dt = self.dedup
        d = dt.shared.get(p)
        if d is not None:
            return d
        if pool is not None:
            q = self.tmem.lookup(pool, oid, index)
            if q <= DEDUP_BASE and dt.under[DEDUP_BASE - q] == p:
                return DEDUP_BASE - q
        return -1

    def _entry_owners(self, d: int, pool: Pool, oid: int, index: int) -> list[tuple]:
        """The handles that hold entry d now; (pool, oid, index) is what zbud's handle names."""
        dt = self.dedup
        if d not in dt.owners:
            return [(pool, oid, index)]
        q = DEDUP_BASE - d
        lookup = self.tmem.lookup
        return dt.current_owners(d, lambda o: lookup(*o) == q)

    def _drop_dedup_bud(self, p: int, pool: Pool | None, oid: int, index: int) -> None:
        """The ephemeral frame holding zbudref p dies: if p is an entry's copy,
        unlink every owner (the frame's accounting covers the copy) and free the entry."""
        d = self._bud_entry(p, pool, oid, index)
        if d < 0:
            return
        tmem = self.tmem
        for o in self._entry_owners(d, pool, oid, index):
            tmem.delete(*o)
        dt = self.dedup
        refs = dt.refs[d]
        if refs > 1:
            self.dedup_pages -= 1
            self.dedup_saved_pages -= refs - 1
        dt.drop(d)

    def _write_back_dedup_bud(self, p: int, pool: Pool | None, oid: int, index: int,
                              sink, accepts, limit: int) -> tuple[int, bool] | None:
        """Write the page of an entry's copy p to the sink for each of its owners
        (at most `limit`); None if p is not an entry's copy. Returns (pages
        written, whether an owner kept the copy)."""
        d = self._bud_entry(p, pool, oid, index)
        if d < 0:
            return None
        written = 0
        kept = False
        for o in self._entry_owners(d, pool, oid, index):
            if written >= limit or (accepts is not None and not accepts(*o)):
                kept = True
            elif self._write_back_page(sink, p, *o):  # flushes the owner: one reference
                written += 1
            else:
                kept = True
        return written, kept

    def _dedup_travels(self, p: int, pool: Pool | None, oid: int, index: int) -> int:
        """The pampd a remotify batch sends for zbudref p if it is the copy of a
        single entry (its owner's page); 0 for a shared copy or no entry."""
        d = self._bud_entry(p, pool, oid, index)
        if d < 0 or d in self.dedup.owners:
            return 0
        return DEDUP_BASE - d

    def _dedup_taken(self, q: int) -> bool:
        return self.zbud.is_taken(self.dedup.under[DEDUP_BASE - q])

    # ---- checking (tests) ----------------------------------------------------------------------

    def _check_dedup(self) -> None:
        """Entries against tmem's slots and zbud's copies: every reference is a slot."""
        dt = self.dedup
        if dt is None:
            return
        dt.check()
        slots: dict[int, list[tuple]] = {}
        for pool in self.tmem.pools():
            for oid, index, q in self.tmem.scan_below(pool, DEDUP_BASE):
                slots.setdefault(DEDUP_BASE - q, []).append((pool, oid, index))
        pages = saved = 0
        for d, p in enumerate(dt.under):
            if not p:
                assert d not in slots, f"free dedup entry {d} still linked"
                continue
            held = slots.get(d, [])
            assert len(held) == dt.refs[d], f"entry {d}: {dt.refs[d]} refs, {len(held)} slots"
            assert self.zbud.stored_size(p), f"entry {d}: copy {p} freed"
            for pool, _, _ in held:
                assert pool.cls == self.zbud.kind_of(p) and pool.client_id == 0xFFFF, f"entry {d}: an owner of the other class"
            if d in dt.owners:
                assert set(held) <= set(dt.owners[d]), f"entry {d}: an owner not written down"
            else:
                client_id, pool_id, oid, index = self.zbud.handle(p)
                assert held == [(self.tmem.get_pool(client_id, pool_id), oid, index)]
            pages += dt.refs[d] > 1
            saved += dt.refs[d] - 1
        assert self.dedup_pages == pages and self.dedup_saved_pages == saved
        assert saved == dt.saved_pages()
