"""zcache2: the one-node host (SPEC §4). Policy, compression, accounting.

zcache owns the frame arena and zbud, implements tmem's pamops, and decides
what is stored: partial frame first, then a new frame, then "ouroboros" (eat
the LRU ephemeral frame). Persistent puts may eat ephemeral frames, never
persistent ones, so anonymous pages win over clean page-cache pages.

A zbudref pampd is positive. The rest are negative:
- ZERO_FILLED, or SAME_FILLED_BASE - k for the k-th distinct fill pattern
  (no frame at all);
- HUGE_BASE - f: a page kept as it is in arena frame f, for a caller with no
  lower tier (zram's "huge" pages): a page that zbud would refuse is not
  refused for its content when nothing else could take it;
- REMOTE_BASE - r: a page RAMster moved to peers (remote/ramster.py).

Zcache is single-threaded by design (one asyncio loop per node); guard it
with a lock if several threads share one.
"""
from __future__ import annotations

from . import compress as _compress
from .frames import FrameArena
from .tmem import (
    INDEX_LIMIT,
    LOCAL_CLIENT,
    MAX_POOLS_PER_CLIENT,
    OID_LIMIT,
    Pool,
    Tmem,
    TmemError,
)
from .zbud import EPH, HANDLE_SIZE, MAX_BUDDY_SIZE, NSENTINELS, PERS, ZOMBIE, Zbud
from .units import PAGE_SHIFT, PAGE_SIZE

ZERO_PAGE = bytes(PAGE_SIZE)
ZERO_FILLED = -1
SAME_FILLED_BASE = -2
# huge pages: HUGE_BASE - frame; fill patterns stay above it
HUGE_BASE = -(1 << 24)
MAX_FILLS = (1 << 24) - 2
# RAMster's remote pages: REMOTE_BASE - r, r indexing the cluster's remote table
REMOTE_BASE = HUGE_BASE - (1 << 30)
# lz4, lzo, zstd and zlib all shrink a same-filled page below this
SAME_FILLED_MAX_CLEN = 64
# persistent policy (SPEC §4.5)
PERS_MAX_ZSIZE = PAGE_SIZE // 8 * 7  # 3584
PERS_MAX_MEAN_ZSIZE = PAGE_SIZE // 8 * 5  # 2560
_U64 = (1 << 64) - 1

# the §4.8 counters that are plain event counts (the rest are derived in stats())
_EVENT_COUNTERS = (
    "flush_total", "flush_found", "flobj_total", "flobj_found",
    "failed_get_free_pages", "failed_alloc", "put_to_flush",
    "compress_poor", "mean_compress_poor",
    "eph_ate_tail", "eph_ate_tail_failed", "pers_ate_eph", "pers_ate_eph_failed",
    "evicted_eph_zpages", "evicted_eph_pageframes",
    "last_active_file_pageframes", "last_inactive_file_pageframes",
    "last_active_anon_pageframes", "last_inactive_anon_pageframes",
    "eph_nonactive_puts_ignored", "pers_nonactive_puts_ignored",
    "outstanding_writeback_pages", "writtenback_pages",
)  # fmt: skip


def normalize_oid(oid) -> int:
    """An oid as one int in [0, 2**192); a 3-tuple of u64 (oid[0] least significant) is accepted."""
    if type(oid) is int:
        if 0 <= oid < OID_LIMIT:
            return oid
        raise ValueError(f"oid must be in [0, 2**192), got {oid}")
    if isinstance(oid, tuple):
        if len(oid) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= _U64 for w in oid):
            raise ValueError("oid tuple must be three ints in [0, 2**64)")
        return oid[0] | oid[1] << 64 | oid[2] << 128
    if isinstance(oid, int) and not isinstance(oid, bool):
        return normalize_oid(int(oid))
    raise TypeError(f"oid must be an int or a 3-tuple of ints, not {type(oid).__name__}")


def check_index(index) -> int:
    if type(index) is not int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        index = int(index)
    if not 0 <= index < INDEX_LIMIT:
        raise ValueError(f"index must be in [0, 2**32), got {index}")
    return index


def check_page(page):
    """A PAGE_SIZE bytes-like page, as bytes or a flat byte memoryview."""
    if type(page) is bytes:
        if len(page) == PAGE_SIZE:
            return page
        raise ValueError(f"page must be exactly {PAGE_SIZE} bytes, got {len(page)}")
    try:
        mv = memoryview(page)
    except TypeError:
        raise TypeError(f"page must be a bytes-like object, not {type(page).__name__}") from None
    if mv.nbytes != PAGE_SIZE:
        raise ValueError(f"page must be exactly {PAGE_SIZE} bytes, got {mv.nbytes}")
    if not mv.c_contiguous:
        return mv.tobytes()
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


class Zcache:
    """Compressed transcendent memory in a fixed budget of page frames."""

    def __init__(self, max_pageframes: int, compressor: str = _compress.DEFAULT, *, reserve_pageframes: int | None = None):
        if isinstance(max_pageframes, bool) or not isinstance(max_pageframes, int):
            raise TypeError(f"max_pageframes must be an int, not {type(max_pageframes).__name__}")
        if max_pageframes < 0:
            raise ValueError(f"max_pageframes must be >= 0, got {max_pageframes}")
        self.codec = _compress.get_codec(compressor)
        self._compress = self.codec.compress
        self._decompress = self.codec.decompress
        self.arena = FrameArena(max_pageframes, reserve_pageframes)
        self.zbud = Zbud(self.arena.buf, max_pageframes)
        self.tmem = Tmem(self)
        self._pools: dict[int, Pool] = {}  # local client's pools by id
        for name in _EVENT_COUNTERS:
            setattr(self, name, 0)
        # per class [eph, pers]
        self.failed_puts = [0, 0]
        self.pageframes_max = [0, 0]
        self.zpages = [0, 0]
        self.zpages_max = [0, 0]
        self.zbytes = [0, 0]  # payload bytes, handles not counted
        self.zbytes_max = [0, 0]
        self.zero_filled_pages = 0
        self.same_filled_pages = 0
        # huge pages: frame -> (pool, oid, index), least recently stored first;
        # frames that writeback or remotify took off that LRU wait in huge_taken
        # (their data stays valid and readable until the page is freed)
        self.huge_lru: dict[int, tuple[Pool, int, int]] = {}
        self.huge_taken: dict[int, tuple[Pool, int, int]] = {}
        self.huge_pages = 0
        self.huge_pages_max = 0
        self._fill_ids: dict[bytes, int] = {}
        self._fills: list[bytes | None] = []
        self._fill_refs: list[int] = []
        # The writeback tier (SPEC §6.3) plugs in here: called as
        # sink(pool, oid, index, page) -> bool for each page leaving memory.
        self.writeback_sink = None
        # RAMster plugs in here (remote/ramster.py): it is told when a remote
        # pampd, object or pool is freed so the remote copies go too.
        self.remote = None
        self.foreign_pages = [0, 0]  # pages this node holds for other nodes
        self.foreign_pages_max = [0, 0]

    # ---- public API (DESIGN.md) ----------------------------------------------------

    @property
    def max_pageframes(self) -> int:
        return self.arena.budget

    def new_pool(self, persistent: bool = False, shared: bool = False) -> int:
        """Create a local pool; returns its id. TmemError when all 16 ids are in use.

        Shared pools are not supported (as in the seed): `shared=True` makes an
        ordinary private pool.
        """
        pool = self.tmem.new_pool(LOCAL_CLIENT, bool(persistent), False)
        if pool is None:
            raise TmemError(f"all {MAX_POOLS_PER_CLIENT} pools are in use")
        self._pools[pool.pool_id] = pool
        return pool.pool_id

    def destroy_pool(self, pool_id: int) -> bool:
        if type(pool_id) is not int:
            pool_id = self._pool(pool_id).pool_id  # an int-like id; TypeError for anything else
        pool = self._pools.pop(pool_id, None)
        if pool is None:
            return False
        return self.tmem.destroy_pool(pool)

    def put_page(self, pool_id: int, oid, index: int, page, huge: bool = False, keep_old: bool = False) -> bool:
        """Store a page. False: rejected, nothing stored, any older copy flushed.

        huge=True is for a caller with no lower tier to send a refused page to
        (a swap device without a swap disk): a persistent page that compresses
        too poorly for zbud is then kept as it is in a frame of its own instead
        of being refused, so only a full budget refuses it.
        keep_old=True leaves an older copy in place on a refusal, for a caller
        that will try again (it must flush the old copy itself if it gives up).
        """
        pool = self._pools.get(pool_id)
        if pool is None:
            pool = self._pool(pool_id)
        if type(oid) is not int or not 0 <= oid < OID_LIMIT:
            oid = normalize_oid(oid)
        if type(index) is not int or not 0 <= index < INDEX_LIMIT:
            index = check_index(index)
        if type(page) is not bytes or len(page) != PAGE_SIZE:
            page = check_page(page)
        # the put path (SPEC §4.3–4.5): the hottest path of the project
        c = pool.cls
        cdata = self._compress(page)
        clen = len(cdata)
        # A same-filled page compresses to a few bytes: test only those, so the
        # common path pays nothing for the check (zswap tests before compressing).
        if clen <= SAME_FILLED_MAX_CLEN and page == bytes(page[:8]) * 512:
            return self._put_same_filled(pool, oid, index, page)
        if self._store(pool, oid, index, cdata, clen, c, page if huge else None):
            return True
        if keep_old:
            self.failed_puts[c] += 1
            return False
        return self._put_failed(pool, oid, index, c)

    def _store(self, pool: Pool, oid: int, index: int, cdata, clen: int, c: int, huge_page=None) -> bool:
        """Policy, then zbud placement (partial frame first, then a new frame,
        then ouroboros), then the tmem link, for a compressed payload. A refusal
        leaves the handle as it was: the callers decide what happens to an older copy.
        With `huge_page` (the uncompressed page) a persistent page the policy
        would refuse is stored anyway: raw when zbud cannot hold it, else in zbud
        (the mean-size rule only exists to send poor pages to a swap disk)."""
        if c:
            if clen > PERS_MAX_ZSIZE:
                if huge_page is not None:
                    return self._store_huge(pool, oid, index, huge_page)
                self.compress_poor += 1
                return False
            # poorly compressing pages are taken only while the running mean stays low
            if (clen > PERS_MAX_MEAN_ZSIZE and huge_page is None and self.zpages[PERS]
                    and self.zbytes[PERS] > PERS_MAX_MEAN_ZSIZE * self.zpages[PERS]):
                self.mean_compress_poor += 1
                return False
        elif clen > MAX_BUDDY_SIZE:
            self.compress_poor += 1
            return False
        zbud = self.zbud
        oidb = oid.to_bytes(24, "little")
        tag = index | pool.handle_tag
        p = zbud.match_prep(c, clen + HANDLE_SIZE, cdata, oidb, tag)
        if not p:
            f = self.arena.alloc()
            if f < 0:
                f = self._ouroboros(c)
                if f < 0:
                    return False
            p = zbud.create_prep(c, f, clen + HANDLE_SIZE, cdata, oidb, tag)
            if zbud.pageframes[c] > self.pageframes_max[c]:
                self.pageframes_max[c] = zbud.pageframes[c]
        n = self.zpages[c] + 1
        self.zpages[c] = n
        if n > self.zpages_max[c]:
            self.zpages_max[c] = n
        n = self.zbytes[c] + clen
        self.zbytes[c] = n
        if n > self.zbytes_max[c]:
            self.zbytes_max[c] = n
        self.tmem.put(pool, oid, index, p)
        return True

    # ---- RAMster host paths (SPEC §5.4, §5.5) ----------------------------------------------

    def foreign_pool(self, client_id: int, pool_id: int, persistent: bool) -> Pool | None:
        """The pool that holds node `client_id`'s pages of its pool `pool_id`,
        created on first use; None if an existing pool is of the other kind."""
        pool = self.tmem.get_pool(client_id, pool_id)
        if pool is None:
            pool = self.tmem.new_pool(client_id, persistent, pool_id=pool_id)
        return pool if pool.persistent == persistent else None

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
        if p > 0:
            data = bytes(self.zbud.payload(p))
        elif REMOTE_BASE < p <= HUGE_BASE:
            data = self._huge_page(p)
        else:
            return None
        if free:
            self.tmem.delete(pool, oid, index)
            self.free(p, pool, oid, index)
        return data

    def get_page(self, pool_id: int, oid, index: int, free: bool = False) -> bytes | None:
        """The page, or None. Ephemeral gets always remove it; persistent ones only with free=True."""
        pool = self._pools.get(pool_id)
        if pool is None:
            pool = self._pool(pool_id)
        if type(oid) is not int or not 0 <= oid < OID_LIMIT:
            oid = normalize_oid(oid)
        if type(index) is not int or not 0 <= index < INDEX_LIMIT:
            index = check_index(index)
        return self.tmem.get(pool, oid, index, free or not pool.persistent)

    def get_pool_page(self, pool: Pool, oid: int, index: int, free: bool) -> bytes | None:
        """get_page for a front-end that holds its Pool (`pool(pool_id)`) and has checked
        oid and index already: the read path of a block device, where re-checking costs
        a measurable share of a 4 KiB read."""
        return self.tmem.get(pool, oid, index, free or not pool.persistent)

    def flush_page(self, pool_id: int, oid, index: int) -> bool:
        pool = self._pools.get(pool_id)
        if pool is None:
            pool = self._pool(pool_id)
        oid = normalize_oid(oid)
        index = check_index(index)
        self.flush_total += 1
        if self.tmem.flush_page(pool, oid, index):
            self.flush_found += 1
            return True
        return False

    def flush_object(self, pool_id: int, oid) -> bool:
        pool = self._pools.get(pool_id)
        if pool is None:
            pool = self._pool(pool_id)
        oid = normalize_oid(oid)
        self.flobj_total += 1
        if self.tmem.flush_object(pool, oid):
            self.flobj_found += 1
            return True
        return False

    def is_persistent(self, pool_id: int) -> bool:
        return self._pool(pool_id).persistent

    def pool(self, pool_id: int) -> Pool:
        """The tmem Pool behind a local pool id (front-ends call the host paths with it)."""
        return self._pool(pool_id)

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

    def stats(self) -> dict[str, int]:
        s = {f"zcache.{k}": getattr(self, k) for k in _EVENT_COUNTERS}
        s["zcache.obj_count"] = self.tmem.obj_count
        s["zcache.obj_count_max"] = self.tmem.obj_count_max
        s["zcache.objnode_count"] = self.tmem.objnode_count
        s["zcache.objnode_count_max"] = self.tmem.objnode_count_max
        for c, name in ((EPH, "eph"), (PERS, "pers")):
            s[f"zcache.failed_{name}_puts"] = self.failed_puts[c]
            s[f"zcache.{name}_pageframes"] = self.zbud.pageframes[c]
            s[f"zcache.{name}_pageframes_max"] = self.pageframes_max[c]
            s[f"zcache.{name}_zpages"] = self.zpages[c]
            s[f"zcache.{name}_zpages_max"] = self.zpages_max[c]
            s[f"zcache.{name}_zbytes"] = self.zbytes[c]
            s[f"zcache.{name}_zbytes_max"] = self.zbytes_max[c]
        s["zcache.zero_filled_pages"] = self.zero_filled_pages
        s["zcache.same_filled_pages"] = self.same_filled_pages
        s["zcache.huge_pages"] = self.huge_pages
        s["zcache.huge_pages_max"] = self.huge_pages_max
        s["zcache.pageframes_alloced"] = self.arena.pageframes_alloced
        s["zcache.pageframes_freed"] = self.arena.pageframes_freed
        s["zcache.max_pageframes"] = self.arena.budget
        s.update((f"zbud.{k}", v) for k, v in self.zbud.stats().items())
        if self.remote is not None:
            s.update(self.remote.stats())  # the "ramster." counters (SPEC §5.11)
        return s

    # ---- the put path (§4.3–4.5) -------------------------------------------------------

    def _ouroboros(self, c: int) -> int:
        """No frame left: eat the LRU ephemeral frame. Its arena frame, or -1."""
        self.failed_get_free_pages += 1
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

    def _put_failed(self, pool: Pool, oid: int, index: int, c: int) -> bool:
        self.failed_puts[c] += 1
        # The seed left the old copy in place when a duplicate put failed; the
        # tmem contract is "overwrite, or fail and invalidate", so flush it.
        self.tmem.flush_page(pool, oid, index)
        return False

    def _put_same_filled(self, pool: Pool, oid: int, index: int, page) -> bool:
        # zswap's same-filled pages and zcache 3.10's ZERO_FILLED: no frame, no zbud.
        c = pool.cls
        word = bytes(page[:8])
        if word == b"\0" * 8:
            p = ZERO_FILLED
            self.zero_filled_pages += 1
        else:
            k = self._fill_ids.get(word)
            if k is None:
                if len(self._fill_ids) >= MAX_FILLS:  # the pampd range is full: a zbud it is
                    cdata = self._compress(page)
                    return (self._store(pool, oid, index, cdata, len(cdata), c)
                            or self._put_failed(pool, oid, index, c))
                k = self._fill_slot(word)
            self._fill_refs[k] += 1
            p = SAME_FILLED_BASE - k
            self.same_filled_pages += 1
        n = self.zpages[c] + 1
        self.zpages[c] = n
        if n > self.zpages_max[c]:
            self.zpages_max[c] = n
        self.tmem.put(pool, oid, index, p)
        return True

    def _fill_slot(self, word: bytes) -> int:
        try:
            k = self._fills.index(None)
            self._fills[k] = word
        except ValueError:
            k = len(self._fills)
            self._fills.append(word)
            self._fill_refs.append(0)
        self._fill_ids[word] = k
        return k

    # ---- huge pages ---------------------------------------------------------------------

    def _store_huge(self, pool: Pool, oid: int, index: int, page) -> bool:
        """Keep a persistent page as it is, in a frame of its own."""
        f = self.arena.alloc()
        if f < 0:
            f = self._ouroboros(PERS)
            if f < 0:
                return False
        off = f << PAGE_SHIFT
        self.arena.buf[off:off + PAGE_SIZE] = page
        self.huge_lru[f] = (pool, oid, index)
        n = self.huge_pages + 1
        self.huge_pages = n
        if n > self.huge_pages_max:
            self.huge_pages_max = n
        self.tmem.put(pool, oid, index, HUGE_BASE - f)
        return True

    def _huge_page(self, p: int) -> bytes:
        off = (HUGE_BASE - p) << PAGE_SHIFT
        return bytes(self.arena.buf[off:off + PAGE_SIZE])

    def _free_huge(self, p: int, pool: Pool) -> None:
        f = HUGE_BASE - p
        if self.huge_lru.pop(f, None) is None:
            del self.huge_taken[f]
        self.arena.free(f)
        self.huge_pages -= 1
        if pool.client_id != LOCAL_CLIENT:
            self.foreign_pages[pool.cls] -= 1

    def take_huge_lru(self, n: int) -> list[tuple[int, Pool, int, int, bytes]]:
        """Take up to `n` of the least recently stored local huge pages off their
        LRU for remotify: (pampd, pool, oid, index, page). They stay readable;
        the frame is freed when the page's pampd is replaced or freed, and
        `revive_huge` puts one that could not leave back at the LRU tail."""
        out = []
        for f, h in list(self.huge_lru.items()):
            if len(out) >= n:
                break
            if h[0].client_id != LOCAL_CLIENT:
                continue  # foreign pages never travel on
            del self.huge_lru[f]
            self.huge_taken[f] = h
            out.append((HUGE_BASE - f, h[0], h[1], h[2], self._huge_page(HUGE_BASE - f)))
        return out

    def revive_huge(self, p: int) -> None:
        h = self.huge_taken.pop(HUGE_BASE - p, None)
        if h is not None:
            self.huge_lru[HUGE_BASE - p] = h

    def is_taken(self, p: int) -> bool:
        """True while the page of pampd p is off its LRU for remotify or writeback."""
        if p > 0:
            return bool(self.zbud.state[p >> 1] & ZOMBIE)
        return (HUGE_BASE - p) in self.huge_taken

    def decode(self, payload) -> bytes:
        """The page a stored payload stands for: a huge page's payload is the page itself."""
        if len(payload) == PAGE_SIZE:
            return bytes(payload)
        data = self._decompress(payload)
        if len(data) != PAGE_SIZE:
            raise RuntimeError(f"decompressed page is {len(data)} bytes, not {PAGE_SIZE}")
        return data

    # ---- eviction ---------------------------------------------------------------------

    def _evict_eph_frame(self) -> int:
        """Evict the LRU ephemeral frame (flushing its tmem entries); its arena frame, or -1."""
        n, buds, stored, zpages = self.zbud.evict_pageframe_lru()
        if not n:
            return -1
        tmem = self.tmem
        for p, client_id, pool_id, oid, index, _ in buds:
            pool = tmem.get_pool(client_id, pool_id)
            # the zbud is dying, so the free this flush triggers is a no-op
            if pool is not None and tmem.lookup(pool, oid, index) == p:
                tmem.flush_page(pool, oid, index)
                if client_id != LOCAL_CLIENT:
                    self.foreign_pages[EPH] -= 1
        self.zbytes[EPH] -= stored - HANDLE_SIZE * zpages
        self.zpages[EPH] -= zpages
        self.evicted_eph_pageframes += 1
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
                self.revive_huge(p)
        tries = min(self.zbud.pageframes[PERS], window)
        while freed < nframes and tries > 0:
            tries -= 1
            buds = self.zbud.make_zombie_lru(PERS, with_data=False)
            if not buds:
                break
            kept = False
            for p, client_id, pool_id, oid, index, _ in buds:
                pool = self.tmem.get_pool(client_id, pool_id)
                if (pool is None or client_id != LOCAL_CLIENT or self.tmem.lookup(pool, oid, index) != p
                        or (accepts is not None and not accepts(pool, oid, index))):
                    # not ours to move (a foreign page is compressed with its owner's codec,
                    # and no sink of ours could take it), or nowhere to go: leave the frame
                    kept = True
                    continue
                if not self._write_back_page(sink, p, pool, oid, index):
                    kept = True
            if kept:
                self.zbud.revive_zombie(buds[0][0] >> 1)
            else:
                freed += 1
        return freed

    def _write_back_page(self, sink, p: int, pool: Pool, oid: int, index: int) -> bool:
        page = self.get_data(p, pool)
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
        """Free up to `frames` frames by evicting ephemeral ones; returns how many."""
        done = 0
        while done < frames:
            f = self._evict_eph_frame()
            if f < 0:
                break
            self.arena.free(f)
            done += 1
        return done

    # ---- pamops (called by tmem) ------------------------------------------------------------

    def get_data(self, p: int, pool: Pool) -> bytes:
        if p > 0:
            data = self._decompress(self.zbud.payload(p))
            if len(data) != PAGE_SIZE:
                raise RuntimeError(f"decompressed page is {len(data)} bytes, not {PAGE_SIZE}")
            return data
        if p == ZERO_FILLED:
            return ZERO_PAGE
        if p > HUGE_BASE:
            return self._fills[SAME_FILLED_BASE - p] * 512
        return self._huge_page(p)

    def get_data_and_free(self, p: int, pool: Pool) -> bytes:
        data = self.get_data(p, pool)
        self.free(p, pool, None, 0)
        return data

    def free(self, p: int, pool: Pool, oid: int | None, index: int) -> None:
        c = pool.cls
        if p > 0:
            s = self.zbud.free_and_delist(p)
            if not s:  # dying: the evictor accounts for it
                return
            if s < 0:
                s = -s
                self.arena.free((p >> 1) - NSENTINELS)
            self.zpages[c] -= 1
            self.zbytes[c] -= s - HANDLE_SIZE
            if pool.client_id != LOCAL_CLIENT:
                self.foreign_pages[c] -= 1
            return
        if p <= HUGE_BASE:
            if p <= REMOTE_BASE:
                self.remote.free_remote(p, pool, oid, index)
            else:
                self._free_huge(p, pool)
            return
        self.zpages[c] -= 1
        if p == ZERO_FILLED:
            self.zero_filled_pages -= 1
            return
        k = SAME_FILLED_BASE - p
        self.same_filled_pages -= 1
        self._fill_refs[k] -= 1
        if not self._fill_refs[k]:
            del self._fill_ids[self._fills[k]]
            self._fills[k] = None

    def free_obj(self, pool: Pool, oid: int, pool_destroy: bool) -> None:
        if self.remote is not None:
            self.remote.free_obj(pool, oid, pool_destroy)

    def free_pool(self, pool: Pool) -> None:
        if self.remote is not None:
            self.remote.free_pool(pool)

    def is_remote(self, p: int) -> bool:
        return p <= REMOTE_BASE

    # ---- helpers -------------------------------------------------------------------------------

    def _pool(self, pool_id) -> Pool:
        if isinstance(pool_id, bool) or not isinstance(pool_id, int):
            raise TypeError(f"pool_id must be an int, not {type(pool_id).__name__}")
        pool = self._pools.get(int(pool_id))
        if pool is None:
            raise TmemError(f"no pool {pool_id}")
        return pool

    def check(self) -> None:
        """Assert the accounting invariants (tests): SPEC §4.6 and zbud's structure."""
        self.zbud.check()
        a = self.arena
        pf = self.zbud.pageframes
        assert a.pageframes_alloced - a.pageframes_freed == pf[EPH] + pf[PERS] + self.huge_pages == a.in_use
        assert self.huge_pages == len(self.huge_lru) + len(self.huge_taken)
        assert not set(self.huge_lru) & set(self.huge_taken)
        for c in (EPH, PERS):
            assert self.zbytes[c] == self.zbud.zbytes(c) - HANDLE_SIZE * self.zbud.zpages(c)
            assert self.pageframes_max[c] >= pf[c]
        specials = [0, 0]
        huge = 0
        for pool in self.tmem.pools():
            c = pool.cls
            for obj in pool.objs.values():
                assert obj, "empty object kept"
                for leaf in obj.values():
                    used = [x for x in leaf if x]
                    assert used and len(leaf) == 64, "empty leaf kept"
                    specials[c] += sum(1 for x in used if HUGE_BASE < x < 0)
                    huge += sum(1 for x in used if REMOTE_BASE < x <= HUGE_BASE)
        for c in (EPH, PERS):
            assert self.zpages[c] == self.zbud.zpages(c) + specials[c]
        assert self.zero_filled_pages + self.same_filled_pages == specials[EPH] + specials[PERS]
        assert huge == self.huge_pages
