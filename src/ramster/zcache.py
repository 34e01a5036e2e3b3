"""zcache2: the one-node host (SPEC §4), and the only door to the layers below.

zcache owns the frame arena and zbud, implements tmem's pamops, and decides
what is stored: partial frame first, then a new frame, then "ouroboros" (eat
the LRU ephemeral frame). Persistent puts may eat ephemeral frames, never
persistent ones, so anonymous pages win over clean page-cache pages.

What is kept where, per page: tmem's index holds one pampd (pampd.py says
what its ranges mean); a zbud page's bytes and its 32-byte handle are in a
zbud frame of the arena; a huge page fills an arena frame of its own, and
`huge_lru` / `huge_taken` (frame -> handle) stand in for zbud's LRU and
zombie list for those frames; a same-filled page is an entry of the fill
table (`_fills`, `_fill_refs`), shared by every page with that pattern; a
remote page is an entry of RAMster's remote table. The counters of §4.8 are
plain attributes bumped where the event happens; `check()` states how they
must agree with zbud's and tmem's structures.

Every caller goes through Zcache's public methods: the front-ends by pool id
(or by the Pool handle `pool()` returns, on a block device's read path),
RAMster through the named operations of zcache_remote.py. The class is
written in six files by what the methods are for: this one (the front-ends'
door, the put and get paths, the pamops tmem calls), zcache_reclaim.py
(making room: ouroboros, shrinking, writeback), zcache_recompress.py (cold
pages stored again with a denser codec), zcache_cold.py (cold pages
compressed together in groups, in the cold log), zcache_dedup.py (identical pages
sharing one copy: a node built with dedup=True gets that file's put as its
put_page, so this one's never tests for it) and zcache_remote.py (what RAMster
asks of this node). A page that lives on a peer is an expected
outcome: the synchronous gets return ON_PEER for it (pampd.py). This file
is about 600 lines because the put path is inlined into `put_page` (a call
per page costs more than the engine's whole budget allows), and the dense
allocator's new-zspage path repeats its tail rather than add a call to zbud's.

The allocator behind `self.zbud` is zbud (the default, the seed's) or dense
(dense.py: size classes, zspages of 1-4 frames, compaction), chosen at
construction. Both answer zbud's calls, so eviction, writeback, remotify and
the idle mark are one code; a pampd > 0 is whatever the allocator handed out
(a zbudref, a dense handle), and the allocator's "unit" (unit_of: a zbud
frame, a dense zspage) is what its LRU, eviction and zombies move as one.

Zcache is single-threaded by design (one asyncio loop per node); guard it
with a lock if several threads share one.
"""
from __future__ import annotations

from collections.abc import Callable

from . import compress as _compress
from .frames import FrameArena
from .handles import check_index, check_page, normalize_oid
from .dedup import DEDUP_COUNTERS, DedupTable
from .pampd import (COLD_BASE, COLD_GROUP, DEDUP_BASE, HUGE_BASE, MAX_FILLS, ON_PEER, REMOTE_BASE, SAME_FILLED_BASE,
                    SAME_FILLED_MAX_CLEN, ZERO_FILLED, is_cold, is_frameless, is_huge, is_remote)
from .tmem import INDEX_LIMIT, LOCAL_CLIENT, MAX_POOLS_PER_CLIENT, OID_LIMIT, Pool, Tmem, TmemError
from .units import PAGE_SHIFT, PAGE_SIZE
from .zbud import EPH, HANDLE_SIZE, MAX_BUDDY_SIZE, NSENTINELS, PERS, Zbud
from .zcache_cold import ColdGroups, cold_init
from .zcache_dedup import DedupPaths
from .dense import Dense
from .zcache_reclaim import RECLAIM_COUNTERS, Reclaim
from .zcache_recompress import DEFAULT_RECOMPRESSOR, RECOMPRESS_COUNTERS, Recompress, recompress_init
from .zcache_remote import RemoteDoor

# the codec a node uses unless told otherwise (peers must agree on it)
DEFAULT_COMPRESSOR = _compress.DEFAULT
# where compressed pages are kept: zbud (two per frame, the seed's) or dense (size classes)
ALLOCATORS = ("zbud", "dense")
DEFAULT_ALLOCATOR = "zbud"

__all__ = ["ALLOCATORS", "DEFAULT_ALLOCATOR", "DEFAULT_COMPRESSOR", "DEFAULT_RECOMPRESSOR", "EPH", "PERS", "INDEX_LIMIT", "OID_LIMIT", "ON_PEER", "TmemError", "Zcache", "check_index", "check_page", "normalize_oid"]

ZERO_PAGE = bytes(PAGE_SIZE)
# persistent policy (SPEC §4.5)
PERS_MAX_ZSIZE = PAGE_SIZE // 8 * 7  # 3584
PERS_MAX_MEAN_ZSIZE = PAGE_SIZE // 8 * 5  # 2560

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


class Zcache(Reclaim, Recompress, ColdGroups, RemoteDoor, DedupPaths):
    """Compressed transcendent memory in a fixed budget of page frames."""

    # The pampd under a handle of a Pool (0: none; pampd.py says what it means):
    # tmem's own lookup, bound in __init__ so a front-end's per-page scan (block
    # status) pays no extra call.
    lookup: Callable[[Pool, int, int], int]

    def __init__(self, max_pageframes: int, compressor: str = _compress.DEFAULT, *,
                 reserve_pageframes: int | None = None, writeback_sink=None, dedup: bool = False,
                 recompressor: str = DEFAULT_RECOMPRESSOR, allocator: str = DEFAULT_ALLOCATOR,
                 cold_groups: bool = True):
        if isinstance(max_pageframes, bool) or not isinstance(max_pageframes, int):
            raise TypeError(f"max_pageframes must be an int, not {type(max_pageframes).__name__}")
        if max_pageframes < 0:
            raise ValueError(f"max_pageframes must be >= 0, got {max_pageframes}")
        self.codec = _compress.get_codec(compressor)
        self._compress = self.codec.compress
        self._decompress = self.codec.decompress
        if allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {allocator!r}; choose one of: {', '.join(ALLOCATORS)}")
        self.arena = FrameArena(max_pageframes, reserve_pageframes)
        # The allocator of compressed pages. Both have zbud's interface (match_prep,
        # payload, free_and_delist, the LRU, eviction and zombie calls), so the code
        # below is the same for both but where a new zspage needs several frames.
        # A pampd > 0 is whatever the allocator hands out (a zbudref, a dense handle).
        self.allocator = allocator
        self._dense = allocator == "dense"
        if self._dense:
            self.zbud = Dense(self.arena, max_pageframes)
        else:
            self.zbud = Zbud(self.arena.buf, max_pageframes)
        self.tmem = Tmem(self)
        self.lookup = self.tmem.lookup
        # identical pages stored once (dedup.py, zcache_dedup.py); _store links
        # what it placed through _link, which on a node with dedup also indexes it
        self.dedup = DedupTable(self.tmem.put) if dedup else None
        self._link = self.dedup.link if dedup else self.tmem.put
        if dedup:  # its own put path; without dedup put_page runs as it always has
            self.put_page = self._put_page_dedup
            self._free_any = self.free
            self.free = self._free_dedup  # tmem's pamops too: an overwrite or a flush unindexes
        for name in DEDUP_COUNTERS:
            setattr(self, name, 0)
        self._pools: dict[int, Pool] = {}  # local client's pools by id
        for name in _EVENT_COUNTERS:
            setattr(self, name, 0)
        # per class [eph, pers]
        self.failed_puts = [0, 0]
        # dense keeps it up to date itself: its zspages also grow inside match_prep
        self.pageframes_max = self.zbud.pageframes_max if self._dense else [0, 0]
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
        # zram's idle mark (zcache_reclaim.py): zbud frames keep theirs in zbud's
        # stamps and `seen`, which a get sets only while a mark is in force; huge
        # frames marked and not read since are in _huge_idle
        self._idle_marked = False
        self._seen = self.zbud.seen
        self._seen_shift = self.zbud.SEEN_SHIFT  # zbud: a byte per frame; dense: per handle
        self._huge_idle: set[int] = set()
        self._idle_epoch = 0  # how many marks so far: a new one starts a new recompression pass
        for name in RECLAIM_COUNTERS:
            setattr(self, name, 0)
        self._fill_ids: dict[bytes, int] = {}
        self._fills: list[bytes | None] = []
        self._fill_refs: list[int] = []
        # The writeback tier (SPEC §6.3): called as sink(pool, oid, index, page) -> bool
        # for each page leaving memory. None: no lower tier.
        self.writeback_sink = writeback_sink
        # RAMster, once attach_remote() plugged it in: told when a remote pampd,
        # object or pool is freed so the remote copies go too.
        self.remote = None
        self.foreign_pages = [0, 0]  # pages this node holds for other nodes
        self.foreign_pages_max = [0, 0]
        # the second codec cold pages are recompressed with (zcache_recompress.py)
        recompress_init(self, recompressor)
        # the cold groups recompression makes on a dense node recompressing with zstd
        # (zcache_cold.py); without them it recompresses persistent pages one by one,
        # as it does ephemeral ones
        cold_init(self, cold_groups and self._dense and recompressor.lower() == "zstd")

    # ---- public API (DESIGN.md) ----------------------------------------------------

    @property
    def max_pageframes(self) -> int:
        return self.arena.budget

    @property
    def pageframes_in_use(self) -> int:
        """Arena frames holding pages now (zbud and huge frames); above the budget
        only after a shrink that persistent pages could not follow."""
        return self.arena.in_use

    def close(self) -> None:
        """Release the frame arena. The Zcache must not be used afterwards."""
        self.arena.close()

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

    def nonactive_put(self, pool_id: int, oid, index: int) -> None:
        """A put the front-end's WasActive filter (SPEC §6.1) dropped: counted, and
        an older copy is flushed (the caller's page is newer than ours)."""
        if self._pool(pool_id).persistent:
            self.pers_nonactive_puts_ignored += 1
        else:
            self.eph_nonactive_puts_ignored += 1
        self.flush_page(pool_id, oid, index)

    def get_page(self, pool_id: int, oid, index: int, free: bool = False):
        """The page (bytes), None, or ON_PEER when it lives on a peer (RAMster's
        asynchronous get fetches it; it is left in place). Ephemeral gets always
        remove the page; persistent ones only with free=True."""
        pool = self._pools.get(pool_id)
        if pool is None:
            pool = self._pool(pool_id)
        if type(oid) is not int or not 0 <= oid < OID_LIMIT:
            oid = normalize_oid(oid)
        if type(index) is not int or not 0 <= index < INDEX_LIMIT:
            index = check_index(index)
        return self.tmem.get(pool, oid, index, free or not pool.persistent)

    def get_pool_page(self, pool: Pool, oid: int, index: int, free: bool):
        """get_page for a front-end that holds its Pool (`pool(pool_id)`) and has checked
        oid and index already: the read path of a block device, where re-checking costs
        a measurable share of a 4 KiB read."""
        return self.tmem.get(pool, oid, index, free or not pool.persistent)

    def peek_page(self, pool_id: int, oid, index: int) -> bytes | None:
        """A copy of the page, left where it is even in an ephemeral pool (a block
        device's cache hit), or None when this node's memory does not hold it
        (a miss, or a page that lives on a peer)."""
        pool = self._pool(pool_id)
        oid = normalize_oid(oid)
        index = check_index(index)
        p = self.tmem.lookup(pool, oid, index)
        if p <= DEDUP_BASE:
            p = self.dedup.under[DEDUP_BASE - p]
        if not p or (p <= REMOTE_BASE and p > COLD_BASE):
            return None
        if p > 0:
            self.zbud.touch(p)  # a hit: the frame becomes the most recently used
        return self.get_data(p, pool)

    def contains(self, pool_id: int, oid, index: int) -> bool:
        """Whether the page is present in any form (here, huge, or on a peer); no side effects."""
        return self.tmem.lookup(self._pool(pool_id), normalize_oid(oid), check_index(index)) != 0

    def on_peer(self, pool_id: int, oid, index: int) -> bool:
        """Whether the page lives on a peer (RAMster), so only the asynchronous get can read it."""
        return is_remote(self.tmem.lookup(self._pool(pool_id), normalize_oid(oid), check_index(index)))

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
        """The tmem Pool behind a local pool id: an opaque handle for get_pool_page and lookup."""
        return self._pool(pool_id)

    def stats(self) -> dict[str, int]:
        s = {f"zcache.{k}": getattr(self, k) for k in _EVENT_COUNTERS}
        s["zcache.obj_count"] = self.tmem.obj_count
        s["zcache.obj_count_max"] = self.tmem.obj_count_max
        s["zcache.objnode_count"] = self.tmem.objnode_count
        s["zcache.objnode_count_max"] = self.tmem.objnode_count_max
        for c, name in ((EPH, "eph"), (PERS, "pers")):
            s[f"zcache.failed_{name}_puts"] = self.failed_puts[c]
            s[f"zcache.{name}_pageframes"] = self.zbud.pageframes[c] + (len(self._cold.frames) if c else 0)
            s[f"zcache.{name}_pageframes_max"] = self.pageframes_max[c]
            s[f"zcache.{name}_zpages"] = self.zpages[c]
            s[f"zcache.{name}_zpages_max"] = self.zpages_max[c]
            s[f"zcache.{name}_zbytes"] = self.zbytes[c]
            s[f"zcache.{name}_zbytes_max"] = self.zbytes_max[c]
        s["zcache.zero_filled_pages"] = self.zero_filled_pages
        s["zcache.same_filled_pages"] = self.same_filled_pages
        s["zcache.huge_pages"] = self.huge_pages
        s["zcache.huge_pages_max"] = self.huge_pages_max
        s.update((f"zcache.{k}", getattr(self, k)) for k in DEDUP_COUNTERS)
        s.update((f"zcache.{k}", getattr(self, k)) for k in RECLAIM_COUNTERS)
        s.update((f"zcache.{k}", getattr(self, k)) for k in RECOMPRESS_COUNTERS)
        if self._dense:
            s.update((f"dense.{k}", v) for k, v in self.cold_stats().items())
        s["zcache.idle_pages"] = self.idle_pages()
        s["zcache.pageframes_alloced"] = self.arena.pageframes_alloced
        s["zcache.pageframes_freed"] = self.arena.pageframes_freed
        s["zcache.max_pageframes"] = self.arena.budget
        s.update((f"{self.allocator}.{k}", v) for k, v in self.zbud.stats().items())
        if self.remote is not None:
            s.update(self.remote.stats())  # the "ramster." counters (SPEC §5.11)
            for c, name in ((EPH, "eph"), (PERS, "pers")):
                s[f"ramster.foreign_{name}_pages"] = self.foreign_pages[c]
                s[f"ramster.foreign_{name}_pages_max"] = self.foreign_pages_max[c]
        return s

    # ---- the put path (§4.3–4.5) -------------------------------------------------------

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
        if p <= 0:  # dense says -1 when its zspage needs a frame the arena lacks
            if self._dense:
                return self._store_new_zspage(pool, oid, index, cdata, clen, c, oidb, tag)
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
        self._link(pool, oid, index, p)
        return True

    def _store_new_zspage(self, pool: Pool, oid: int, index: int, cdata, clen: int, c: int,
                          oidb: bytes, tag: int) -> bool:
        """The rest of _store for the dense allocator when no zspage of the class has
        room without another frame: one frame, from the arena or else from ouroboros,
        to grow the class's zspage or to start a new one (Dense.grow_prep)."""
        f = self.arena.alloc()
        if f < 0:
            f = self._ouroboros(c)
            if f < 0:
                return False
        p = self.zbud.grow_prep(c, clen + HANDLE_SIZE, f, cdata, oidb, tag)
        if self.zbud.pageframes[c] > self.pageframes_max[c]:
            self.pageframes_max[c] = self.zbud.pageframes[c]
        n = self.zpages[c] + 1
        self.zpages[c] = n
        if n > self.zpages_max[c]:
            self.zpages_max[c] = n
        n = self.zbytes[c] + clen
        self.zbytes[c] = n
        if n > self.zbytes_max[c]:
            self.zbytes_max[c] = n
        self._link(pool, oid, index, p)
        return True

    def class_stats(self) -> list[dict]:
        """The dense allocator's size classes in use (Dense.class_stats); [] with zbud."""
        return self.zbud.class_stats() if self._dense else []

    def compact(self) -> int:
        """Move pages out of sparse zspages and free them (the dense allocator; zbud
        never moves a page). Returns the frames given back."""
        if not self._dense:
            return 0
        freed = self.zbud.compact()
        self.arena.release_free_frames()
        return freed

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
        self._huge_idle.discard(f)
        if self._huge_tried:
            self._huge_tried.discard(f)
        self.arena.free(f)
        self.huge_pages -= 1
        if pool.client_id != LOCAL_CLIENT:
            self.foreign_pages[pool.cls] -= 1

    def _revive_huge(self, p: int) -> None:
        h = self.huge_taken.pop(HUGE_BASE - p, None)
        if h is not None:
            self.huge_lru[HUGE_BASE - p] = h

    # ---- pamops (called by tmem) ------------------------------------------------------------

    def get_data(self, p: int, pool: Pool):
        if p > 0:
            if self._idle_marked:
                self._seen[p >> self._seen_shift] = 1
            # A payload the codec refuses is a recompressed one (zcache_recompress.py):
            # only then is the codec byte of its handle read.
            try:
                data = self._decompress(self.zbud.payload(p))
            except Exception:
                return self._decode_tagged(p)
            if len(data) != PAGE_SIZE:
                return self._decode_tagged(p)
            return data
        if p == ZERO_FILLED:
            return ZERO_PAGE
        if p > HUGE_BASE:
            return self._fills[SAME_FILLED_BASE - p] * 512
        if p > REMOTE_BASE:
            if self._huge_idle:
                self._huge_idle.discard(HUGE_BASE - p)
            return self._huge_page(p)
        if p > COLD_BASE:
            return ON_PEER
        if p > DEDUP_BASE:
            return self._cold_get(p)
        return self.get_data(self.dedup.under[DEDUP_BASE - p], pool)

    def get_data_and_free(self, p: int, pool: Pool):
        """The page, freed; ON_PEER (falsy: tmem then leaves the slot) for a page on a peer."""
        if p > 0:
            try:
                data = self._decompress(self.zbud.payload(p))
            except Exception:
                data = self._decode_tagged(p)
            if len(data) != PAGE_SIZE:
                data = self._decode_tagged(p)
        elif p > REMOTE_BASE or p <= COLD_BASE:
            data = self.get_data(p, pool)
        else:
            return ON_PEER
        self.free(p, pool, None, 0)
        return data

    def free(self, p: int, pool: Pool, oid: int | None, index: int) -> None:
        c = pool.cls
        if p > 0:
            s = self.zbud.free_and_delist(p)
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
                if p <= DEDUP_BASE:
                    self._dedup_free(p, pool)
                elif p <= COLD_BASE:
                    self._cold_free(p)
                else:
                    self.remote.free_remote(REMOTE_BASE - p, pool, oid, index)
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
        # a foreign pool: its owner keeps no remote copies of it here
        if self.remote is not None and pool.client_id == LOCAL_CLIENT:
            self.remote.free_pool(pool)

    # ---- helpers -------------------------------------------------------------------------------

    def _pool(self, pool_id) -> Pool:
        if isinstance(pool_id, bool) or not isinstance(pool_id, int):
            raise TypeError(f"pool_id must be an int, not {type(pool_id).__name__}")
        pool = self._pools.get(int(pool_id))
        if pool is None:
            raise TmemError(f"no pool {pool_id}")
        return pool

    def check(self) -> None:
        """Assert the accounting invariants (tests): SPEC §4.6, zbud's and tmem's structure."""
        self.zbud.check()
        self.tmem.check()
        a = self.arena
        pf = self.zbud.pageframes
        cl = self._cold
        cl.check()
        assert a.pageframes_alloced - a.pageframes_freed == pf[EPH] + pf[PERS] + self.huge_pages + len(cl.frames) == a.in_use
        assert self.huge_pages == len(self.huge_lru) + len(self.huge_taken)
        assert not set(self.huge_lru) & set(self.huge_taken)
        cold_pages = [0, cl.pages]
        for c in (EPH, PERS):
            assert self.zbytes[c] == self.zbud.zbytes(c) - HANDLE_SIZE * self.zbud.zpages(c) + (cl.zbytes if c else 0)
            assert self.pageframes_max[c] >= pf[c]
        specials = [0, 0]
        huge = 0
        for pool in self.tmem.pools():
            c = pool.cls
            for _, _, p in self.tmem.scan_below(pool, -1):
                if is_frameless(p):
                    specials[c] += 1
                elif is_huge(p):
                    huge += 1
                elif is_cold(p):
                    cold_pages[c] -= 1
                    assert pool.persistent and pool.client_id == LOCAL_CLIENT
                    assert self._cold.live(*divmod(COLD_BASE - p, COLD_GROUP)), p
        for c in (EPH, PERS):
            assert self.zpages[c] == self.zbud.zpages(c) + specials[c] + (cl.pages if c else 0)
            assert not cold_pages[c], "a cold member no slot holds, or a slot holding a freed one"
        assert self.zero_filled_pages + self.same_filled_pages == specials[EPH] + specials[PERS]
        assert huge == self.huge_pages
        self._check_dedup()
