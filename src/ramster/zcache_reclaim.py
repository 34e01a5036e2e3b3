"""How zcache makes room (SPEC §4.4, §4.7, §6.3): ouroboros, shrinking, writeback.

A part of Zcache (it is one of its bases): the methods that take frames away
from pages rather than give frames to them. Three ways, cheapest first:

- evict the LRU ephemeral frame (ouroboros): its pages were only a cache, so
  they are unlinked from tmem all at once and the frame goes back to the put
  that needed it. The pages are not freed one by one through the pamops: the
  frame dies as a whole (zbud marks it DYING), and the evictor does the
  accounting for both its pages in one step;
- write the LRU persistent frames back to the writeback sink (the node's swap
  disk): each page is decompressed and handed to the sink, and only a page the
  sink took is flushed; a frame whose pages it refused goes back to the LRU
  tail with them. Huge frames go first: no decompression, a frame per page;
- shrink the budget (`set_max_pageframes`) or follow the caller's LRU sizes
  (`shrink`, the seed's shrinker) with the two above;
- on the operator's word, as zram's `idle` and `writeback` files: mark every
  page held now idle (`mark_idle`), then send the idle ones, or the huge ones,
  to the sink (`writeback_idle`, `writeback_huge`).

Idleness is kept per frame, not per page, where the LRU already keeps its
order: zbud's frames by their LRU stamp against a mark (zbud.py), huge frames
in a set of the frames marked, left by a get and by a free, cold groups by a
byte each that a read of any member sets (coldlog.py). A zbud frame is
one unit of memory, so a read of either of its pages makes both not idle,
and a frame whose pages the sink refused goes back to the LRU tail and is
idle again only at the next mark. A page shared through the dedup table leaves
for each of its owners, or stays (zcache_dedup.py). Same-filled and zero pages hold no frame,
and pages on a peer hold no memory here: marking them would free nothing,
so they are not counted.

What leaving memory means depends on the pool. A persistent page exists
nowhere else, so it leaves only once the sink has acknowledged it (the trust
contract: a copy is dropped only after its replacement is acknowledged), and
a page the sink refuses or has no place for stays. An ephemeral page is a
clean copy of what a file below already holds (cleancache's contract: it may
vanish at any time), so "writing it back" is dropping it: the same act as
ouroboros, done to idle frames rather than to the LRU frame. zram has no such
pages; dropping them is how the operator's "move the cold pages out of
memory" applies to them.

It works on Zcache's arena, zbud, tmem, huge_lru/huge_taken and counters;
nothing outside Zcache calls the private methods here.
"""
from __future__ import annotations

from .handles import page_budget
from .pampd import HUGE_BASE
from .tmem import LOCAL_CLIENT, Pool
from .zbud import EPH, HANDLE_SIZE, PERS


# the counters of the operator's writeback verbs, "zcache." in stats()
RECLAIM_COUNTERS = ("marked_idle", "written_back_idle", "written_back_huge", "dropped_idle")


class Reclaim:
    """Zcache's ways of making room (see the module comment)."""

    # ---- the budget (SPEC §4.7) ----------------------------------------------------------

    def set_max_pageframes(self, n: int) -> int:
        """Change the budget. Shrinking evicts ephemeral frames down to `n`;
        returns how many frames above `n` are still in use (persistent ones,
        until a writeback tier takes them)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"max_pageframes must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"max_pageframes must be >= 0, got {n}")
        self.arena.set_budget(n)
        self.zbud.ensure_frames(n)
        over = self.arena.in_use - n
        over -= self._reclaim(over)
        if over > 0 and self.writeback_sink is not None:
            self.writeback_lru(over, self.writeback_sink)
        self.arena.release_free_frames()
        return max(0, self.arena.in_use - n)

    def shrink(self, active_file: int = 0, inactive_file: int = 0, active_anon: int = 0, inactive_anon: int = 0) -> int:
        """The seed's shrinker (SPEC §4.7) with caller-supplied LRU sizes (in pages).

        Keeps ephemeral frames near the file LRU size and, through the writeback
        tier, persistent frames near the anon LRU size. Uses the 3.9 arithmetic
        (max(0, frames - (active + inactive))): the seed's `- active + inactive`
        was a typo. Returns the reclaimable estimate.
        """
        self.last_active_file_pageframes = active_file
        self.last_inactive_file_pageframes = inactive_file
        self.last_active_anon_pageframes = active_anon
        self.last_inactive_anon_pageframes = inactive_anon
        for _ in range(max(0, self.zbud.pageframes[EPH] - (active_file + inactive_file))):
            f = self._evict_eph_frame()
            if f < 0:
                break
            self.arena.free(f)
        nr_writeback = max(0, self.zbud.pageframes[PERS] + self.huge_pages - (active_anon + inactive_anon))
        if nr_writeback and self.writeback_sink is not None:
            self.writeback_lru(nr_writeback, self.writeback_sink)
        return max(0, self.zbud.pageframes[EPH] - (active_file + inactive_file))

    # ---- zram's verbs: idle, writeback ---------------------------------------------------------

    def mark_idle(self) -> int:
        """Mark every page held now idle, as zram's `echo all > idle`; a later get
        or put of the page or of its frame's buddy, or a hit, makes it not idle.
        Returns the pages marked."""
        marked = self.zbud.mark_idle()
        self._huge_idle = set(self.huge_lru)
        marked += len(self._huge_idle)
        self._cold.clear_seen()
        marked += self._cold.pages
        self._idle_marked = True
        self._idle_epoch += 1
        self.marked_idle += marked
        return marked

    def idle_pages(self) -> int:
        """Pages still idle since the last mark (walks the marked part of the LRUs)."""
        if not self._idle_marked:
            return 0
        zbud = self.zbud
        n = sum(zbud.frame_zpages(f) for c in (EPH, PERS) for f in zbud.idle_frames(c))
        return n + sum(1 for f in self._huge_idle if f in self.huge_lru) + self._cold.idle_pages()

    def writeback_idle(self, max_pages: int | None = None) -> int:
        """Move the idle pages out of memory, as zram's `echo idle > writeback`:
        ephemeral frames are dropped (cheapest: no I/O), then huge persistent
        pages and then zbud ones are written to the sink, least recently used
        first. Returns the pages that left memory, at most `max_pages`; an
        ephemeral frame goes whole or not at all."""
        left = page_budget(max_pages)
        done = 0
        zbud = self.zbud
        for n in zbud.idle_frames(EPH):
            k = zbud.frame_zpages(n)
            if k > left - done:
                break
            if not zbud.idle_and_evictable(n):
                continue
            self.arena.free(self._drop_eph_frame(*zbud.evict_pageframe(n)))
            self.dropped_idle += k
            done += k
        sink = self.writeback_sink
        if sink is None:
            return done
        huge = [f for f in self.huge_lru if f in self._huge_idle]
        n = self._write_back_huge_frames(huge, sink, left - done)
        self.written_back_idle += n
        done += n
        accepts = getattr(sink, "accepts", None)
        n = self._write_back_cold(sink, accepts, left - done, idle_only=True)[0]
        self.written_back_idle += n
        done += n
        for f in zbud.idle_frames(PERS):
            if done >= left:
                break
            if not zbud.idle_and_evictable(f):
                continue
            n, kept = self._write_back_buds(zbud.make_zombie(f, with_data=False), sink, accepts, left - done)
            if kept:
                zbud.revive_zombie(f)
            self.written_back_idle += n
            done += n
        self.arena.release_free_frames()
        return done

    def writeback_huge(self, max_pages: int | None = None) -> int:
        """Write the huge pages (stored raw, a frame each) to the sink, least recently
        stored first, as zram's `echo huge > writeback`. Returns pages written."""
        limit = page_budget(max_pages)
        if self.writeback_sink is None:
            return 0
        n = self._write_back_huge_frames(list(self.huge_lru), self.writeback_sink, limit)
        self.written_back_huge += n
        self.arena.release_free_frames()
        return n

    def _write_back_huge_frames(self, frames: list[int], sink, limit: int) -> int:
        """Write the huge frames given (on huge_lru) to the sink, at most `limit`; a
        frame the sink refuses goes to the tail of huge_lru. Returns pages written."""
        accepts = getattr(sink, "accepts", None)
        written = 0
        for f in frames:
            if written >= limit:
                break
            h = self.huge_lru.get(f)
            if h is None:
                continue
            pool, oid, index = h
            if pool.client_id != LOCAL_CLIENT or (accepts is not None and not accepts(pool, oid, index)):
                continue
            self.huge_taken[f] = self.huge_lru.pop(f)
            if self._write_back_page(sink, HUGE_BASE - f, pool, oid, index):
                written += 1
            else:  # to the tail, like a refused zbud frame; the read for the sink
                # made it not idle, so it is idle again only at the next mark
                self._revive_huge(HUGE_BASE - f)
        return written

    # ---- ouroboros (SPEC §4.4) --------------------------------------------------------------

    def _ouroboros(self, c: int) -> int:
        """No frame left: eat the LRU ephemeral frame. Its arena frame, or -1."""
        self.failed_get_free_pages += 1
        f = -1
        if self._cold.groups and self._cold_compact():  # holes in the cold log: frames at no loss
            f = self.arena.alloc()
        if f < 0:
            f = self._evict_eph_frame()
        if f < 0 and c and self.writeback_sink is not None:
            # no ephemeral frame left to eat: make room by writing back the LRU persistent frame
            if self.writeback_lru(1, self.writeback_sink):
                f = self.arena.alloc()
        if c:
            if f < 0:
                self.pers_ate_eph_failed += 1
            else:
                self.pers_ate_eph += 1
        elif f < 0:
            self.eph_ate_tail_failed += 1
        else:
            self.eph_ate_tail += 1
        return f

    # ---- eviction and writeback -----------------------------------------------------------

    def _evict_eph_frame(self) -> int:
        """Evict the LRU ephemeral frame; its arena frame, or -1. Its pages are
        unlinked from tmem, not freed one by one: the frame goes as a whole, and
        the evictor does the accounting for all its pages at once."""
        n, buds, stored, zpages = self.zbud.evict_pageframe_lru()
        if not n:
            return -1
        return self._drop_eph_frame(n, buds, stored, zpages)

    def _drop_eph_frame(self, n: int, buds: list[tuple], stored: int, zpages: int) -> int:
        """Unlink the pages of the dying ephemeral frame n from tmem; its arena frame."""
        tmem = self.tmem
        for p, client_id, pool_id, oid, index, _ in buds:
            pool = tmem.get_pool(client_id, pool_id)
            if pool is not None and tmem.lookup(pool, oid, index) == p:
                tmem.delete(pool, oid, index)
                if client_id != LOCAL_CLIENT:
                    self.foreign_pages[EPH] -= 1
            elif self.dedup is not None:  # the copy of a dedup entry: every owner goes
                self._drop_dedup_bud(p, pool, oid, index)
        self.zbytes[EPH] -= stored - HANDLE_SIZE * zpages
        self.zpages[EPH] -= zpages
        self.evicted_eph_pageframes += self.zbud.unit_frames(n)
        # the seed commit added 1 per frame here; 3.9 fixed it to count zpages
        self.evicted_eph_zpages += zpages
        return self.zbud.finish_evict(n)

    def writeback_lru(self, nframes: int, sink) -> int:
        """Ouroboros writeback (SPEC §6.3): move up to `nframes` LRU persistent
        frames out of memory. Each page is decompressed and handed to
        `sink(pool, oid, index, page)`; only when the sink returns True is the
        tmem copy dropped. A frame whose pages the sink refuses goes back to the
        LRU tail instead of leaking as a zombie. A sink with an `accepts(pool,
        oid, index)` method is asked first, so pages it has no place for are not
        decompressed. At most 2 * nframes + 64 frames are looked at: a call made
        for one store must not walk (and decompress) the whole budget when most
        pages have nowhere to go. Returns frames freed."""
        freed = 0
        accepts = getattr(sink, "accepts", None)
        window = 2 * nframes + 64
        # Huge frames first: each frees a frame per page written and costs no
        # decompression (zram too writes back huge pages first).
        tries = min(len(self.huge_lru), window)
        while freed < nframes and tries > 0 and self.huge_lru:
            tries -= 1
            f, (pool, oid, index) = next(iter(self.huge_lru.items()))
            if pool.client_id != LOCAL_CLIENT or (accepts is not None and not accepts(pool, oid, index)):
                self.huge_lru[f] = self.huge_lru.pop(f)  # to the tail: not ours to move
                continue
            p = HUGE_BASE - f
            self.huge_taken[f] = self.huge_lru.pop(f)
            if self._write_back_page(sink, p, pool, oid, index):
                freed += 1
            else:
                self._revive_huge(p)
        if freed < nframes and self._cold.groups:
            # cold groups next: the coldest pages, and those at the end of the log
            # give their frames back as soon as they are written
            freed += self._cold_compact()
            if freed < nframes:
                freed += self._write_back_cold(sink, accepts, 1 << 62, nframes - freed)[1]
        tries = min(self.zbud.pageframes[PERS], window)
        while freed < nframes and tries > 0:
            tries -= 1
            buds = self.zbud.make_zombie_lru(PERS, with_data=False)
            if not buds:
                break
            unit = self.zbud.unit_of(buds[0][0])
            _, kept = self._write_back_buds(buds, sink, accepts, 1 << 62)  # every page (a shared one: each owner)
            if kept:
                self.zbud.revive_zombie(unit)
            else:
                freed += 1
        return freed

    def _write_back_buds(self, buds: list[tuple], sink, accepts, limit: int) -> tuple[int, bool]:
        """Write up to `limit` pages of a zombie frame's buds to the sink.
        Returns (pages written, whether any page stayed behind)."""
        written = 0
        kept = False
        for p, client_id, pool_id, oid, index, _ in buds:
            pool = self.tmem.get_pool(client_id, pool_id)
            if self.dedup is not None and client_id == LOCAL_CLIENT:
                # the copy of a dedup entry goes to each owner's place, or stays
                done = self._write_back_dedup_bud(p, pool, oid, index, sink, accepts, limit - written)
                if done is not None:
                    written += done[0]
                    kept |= done[1]
                    continue
            if (written >= limit or pool is None or client_id != LOCAL_CLIENT
                    or self.tmem.lookup(pool, oid, index) != p
                    or (accepts is not None and not accepts(pool, oid, index))):
                # not ours to move (a foreign page is compressed with its owner's codec,
                # and no sink of ours could take it), or nowhere to go: leave the frame
                kept = True
                continue
            if self._write_back_page(sink, p, pool, oid, index):
                written += 1
            else:
                kept = True
        return written, kept

    def _write_back_page(self, sink, p: int, pool: Pool, oid: int, index: int) -> bool:
        # Not a read of the page: it must not make anything look recently used.
        marked, self._idle_marked = self._idle_marked, False
        try:
            page = self.get_data(p, pool)
        finally:
            self._idle_marked = marked
        return self._hand_to_sink(sink, pool, oid, index, page)

    def _hand_to_sink(self, sink, pool: Pool, oid: int, index: int, page: bytes) -> bool:
        """The page to the sink; only once it took it is the tmem copy freed."""
        self.outstanding_writeback_pages += 1
        try:
            ok = sink(pool, oid, index, page)
        finally:
            self.outstanding_writeback_pages -= 1
        if ok:
            self.writtenback_pages += 1
            self.tmem.flush_page(pool, oid, index)  # frees the page (and a zombie frame with its last page)
        return ok

    def _reclaim(self, frames: int) -> int:
        """Free up to `frames` frames by evicting ephemeral ones; returns how many
        (a dense zspage gives back all of its frames at once)."""
        arena = self.arena
        start = arena.in_use
        while start - arena.in_use < frames:
            f = self._evict_eph_frame()
            if f < 0:
                break
            arena.free(f)
        return start - arena.in_use
