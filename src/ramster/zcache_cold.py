"""Cold groups: recompression's last step on the dense allocator, pages compressed together.

A part of Zcache (it is one of its bases). A recompression pass over a dense
node's persistent zspages does not store each cold page again on its own: it
queues them (up to COLD_WINDOW), sorts them by slot, and compresses each run
of COLD_GROUP as one input with zstd at COLD_LEVEL. The blob goes to the cold
log (coldlog.py), each page's tmem slot gets the pampd of its place in the
group (pampd.cold), and the page's dense object is freed. A group keeps
0.21 of its pages' bytes where zstd-3 on single pages keeps 0.255 (held-out
corpus pages): what takes the node below nbdkit's zstd allocator. Slot order
makes neighbours share a group: denser (neighbouring pages look alike), and
a swap-in of a page and the ones after it decompresses the group once.

What a group holds, before compression: the 32-byte handle of each member
(the handle its dense object carried: oid, index, pool, client) and then the
members' pages, in order. The handles let writeback and regrouping find each
member's slot without a per-page Python object; a slot still holding the
member's pampd is the proof the member is current.

Which pages: persistent, of a local pool, held by their own slot (a dedup
entry's copy stays where dedup can find it, and a plain page leaves the dedup
index, as when it is freed), in the node's codec, on an idle zspage (the pass
walks those). Ephemeral pages are recompressed one by one as before: they are
dropped, not written back, and a group would pin memory an eviction could not
take a frame at a time.

The paths a member takes:

- get: the group is decompressed and the member's page cut out. The last
  group read is kept decompressed (`_cold_cached`), so the neighbours a
  swap-in reads next cost a slice, not another decompression;
- free (a flush, an overwrite, an exclusive get): the member's bit goes
  (coldlog.free_member); the last member frees the blob;
- writeback (writeback_lru, writeback_idle, a shrunk budget): huge frames
  first, then cold groups from the end of the log, then the LRU (the idle
  verb takes only groups none of whose pages was read since the mark). Each live
  member goes to the sink and is freed only once the sink took it, as every
  other page; a group whose members the sink refused stays;
- remotify never sees them (they are on no LRU); a group's pages stay here
  until they are written back, freed, or regrouped;
- regrouping: groups left with a quarter of their members or fewer are
  merged into new groups at the end of the next pass (two of them at least).

A group is made only when every member's slot is checked just before, the
blob reads back exactly (decompressed and compared), and the log had the
frames for it; otherwise every page stays where it was. The frames come from
the budget like any other (a pass never evicts anything to make room), and
the log compacts at the end of each pass and when a put runs out of frames.
"""
from __future__ import annotations

from array import array

import zstandard

from .coldlog import ColdLog
from .tmem import LOCAL_CLIENT
from .pampd import COLD_BASE, COLD_GROUP, COLD_SHIFT, MAX_COLD, cold
from .units import PAGE_SIZE
from .zbud import CLASS_SHIFT, HANDLE, HANDLE_SIZE, LIVE, PERS, TRIED

# zstd at 9 on 32 pages: 0.215 of the bytes at ~100 us a page (15: 0.202 at ~1 ms)
COLD_LEVEL = 9
# pages a pass queues (their handles, 4 bytes each) before it sorts them by slot and
# cuts them into groups: 64 MiB of pages at a time
COLD_WINDOW = 512 * COLD_GROUP
# a group this empty is regrouped by the next pass
SPARSE = COLD_GROUP // 4
RAW_MAX = COLD_GROUP * (HANDLE_SIZE + PAGE_SIZE)  # a group before compression, at most
_STATE = (1 << CLASS_SHIFT) - 1  # a unit's state bits, less its class
COLD_COUNTERS = ("cold_grouped", "cold_regrouped", "cold_written_back", "cold_refused")


class ColdGroups:
    """Zcache's cold groups (see the module comment)."""

    def cold_stats(self) -> dict[str, int]:
        """The cold groups' numbers, "dense." in stats() (counters.py says what each is)."""
        log = self._cold
        s = {"cold_groups": log.groups, "cold_pages": log.pages, "cold_zbytes": log.zbytes,
             "cold_pageframes": len(log.frames), "cold_hole_bytes": log.hole_bytes(),
             "cold_compactions": log.compactions}
        s.update((k, getattr(self, k)) for k in COLD_COUNTERS)
        return s

    # ---- reading and freeing a member ---------------------------------------------------------

    def _cold_raw(self, g: int) -> bytes:
        if self._cold_cached_g == g:
            return self._cold_cached
        raw = self._cold_d.decompress(self._cold.blob(g), max_output_size=RAW_MAX)
        self._cold_cached_g = g
        self._cold_cached = raw
        return raw

    def _cold_get(self, p: int) -> bytes:
        k = COLD_BASE - p
        g = k >> COLD_SHIFT
        if self._idle_marked:
            self._cold.seen[g] = 1
        m = k & (COLD_GROUP - 1)
        return _member_page(self._cold_raw(g), m)

    def _cold_free(self, p: int) -> None:
        k = COLD_BASE - p
        g = k >> COLD_SHIFT
        log = self._cold
        before = log.zbytes
        if log.free_member(g, k & (COLD_GROUP - 1)):
            if self._cold_cached_g == g:
                self._cold_cached_g = -1
                self._cold_cached = b""
        self.zpages[PERS] -= 1
        self.zbytes[PERS] -= before - log.zbytes

    # ---- making groups (called by the recompression pass) ---------------------------------------

    def _cold_take(self, h: int) -> None:
        """Queue the page of dense handle h, held by its own slot, for a group.

        The queue is a window of up to COLD_WINDOW pages, sorted by slot before it
        is cut into groups (`_cold_stage`), so a group holds neighbouring pages (a
        swap area's slots), and a swap-in that reads a page and its neighbours
        decompresses one group, not one per page. The window and the sorted
        queue wait across calls of the pass, while puts and frees run, so they
        keep no bytes and no owner: a page is grouped as its handle holds it when
        the group is made, and only if the slot its handle names still holds that
        handle (a page freed, replaced or moved since is left alone). They are
        arrays of handles: no Python object a page (see coldlog.py on arenas)."""
        batch = self._cold_batch
        batch.append(h)
        if len(batch) >= COLD_WINDOW and self._cold_ready_pos >= len(self._cold_ready):
            self._cold_stage()

    def _cold_stage(self) -> None:
        """The window, sorted, becomes the queue groups are cut from."""
        batch, self._cold_batch = self._cold_batch, array("i")
        self._cold_ready = self._cold_sorted(batch)
        self._cold_ready_pos = 0

    def _cold_pending(self) -> int:
        """Pages queued for groups, and 1 while sparse groups may still merge."""
        return len(self._cold_batch) + len(self._cold_ready) - self._cold_ready_pos + self._cold_more

    def _cold_work(self, groups: int, finishing: bool) -> tuple[int, bool]:
        """Make at most `groups` groups from the queue; with `finishing` (the pass
        has looked at every page), the window's rest too, and then merge sparse
        groups. A call's work is bounded so a pass at a CPU share never holds the
        node's loop for long. Returns (pages grouped or moved, whether work is left)."""
        ready = self._cold_ready
        if self._cold_ready_pos >= len(ready) and (finishing or len(self._cold_batch) >= COLD_WINDOW):
            if self._cold_batch:
                self._cold_stage()
                ready = self._cold_ready
        done = 0
        while groups > 0 and self._cold_ready_pos < len(ready):
            pos = self._cold_ready_pos
            self._cold_ready_pos = pos + COLD_GROUP
            groups -= 1
            members = []
            for h in ready[pos:pos + COLD_GROUP]:
                owner = self._cold_fit(h)
                if owner is not None:
                    members.append((owner, h))
            n = self._cold_group(members) if members else 0
            if n < 0:  # no frames for the blob now: these pages wait for a later pass
                self._cold_ready_pos = len(ready)
                break
            done += n
        if self._cold_ready_pos >= len(ready):
            self._cold_ready, self._cold_ready_pos = array("i"), 0
        if not finishing or self._cold_ready or self._cold_batch:
            return done, bool(self._cold_ready or (finishing and self._cold_batch))
        if groups <= 0:
            self._cold_more = 1  # the sparse groups, at the next call
            return done, True
        n, more = self._cold_regroup(groups)
        self._cold_more = int(more)
        return done + n, more

    def _cold_sorted(self, handles) -> array:
        """The handles still fit for a group, each once (a new pass may look at a page
        the last one queued), in slot order. One int a page is made here, its sort
        key with the handle in its low bits, and all are gone before any group is:
        a tuple or two a page, kept until the sort, grew the process by a megabyte
        the allocator's arenas kept (see coldlog.py)."""
        keys = []
        for h in handles:
            owner = self._cold_fit(h)
            if owner is not None:
                pool, oid, index = owner
                keys.append(_slot_key(pool.pool_id, oid, index) << 32 | h)
        keys.sort()
        out = array("i")
        last = -1
        for k in keys:
            h = k & 0xFFFFFFFF
            if h != last:  # a handle queued twice: the same key, side by side
                out.append(h)
                last = h
        return out

    def _cold_fit(self, h: int):
        """(pool, oid, index) of the slot dense handle h's header names, if h holds a
        page in the node's codec on a live unit, and that slot is a local persistent
        pool's and still holds h; else None (a handle queued, freed and handed to
        another page meanwhile, perhaps a peer's, fails one of those)."""
        dense = self.zbud
        if not dense.hsize[h] or dense.state[dense.unit_of(h)] & _STATE != LIVE or dense.codec(h):
            return None
        client_id, pool_id, oid, index = dense.handle(h)
        if client_id != LOCAL_CLIENT:
            return None
        pool = self.tmem.get_pool(client_id, pool_id)
        if pool is None or not pool.persistent or self.tmem.lookup(pool, oid, index) != h:
            return None
        return pool, oid, index

    def _cold_group(self, members: list) -> int:
        """One group of `members` (owner, dense handle); the pages grouped, 0 when
        compressing them together saves nothing, -1 when the log has no room."""
        dense = self.zbud
        decompress = self._decompress
        raw = (b"".join(dense.handle_bytes(h) for _, h in members)
               + b"".join(decompress(dense.payload(h)) for _, h in members))
        blob = self._cold_compressor().compress(raw)
        payloads = sum(dense.hsize[h] - HANDLE_SIZE for _, h in members)
        if len(raw) != len(members) * (HANDLE_SIZE + PAGE_SIZE) or len(blob) >= payloads:
            for _, h in members:
                dense.set_codec(h, TRIED)  # a later pass skips the page
            self.recompress_skipped += len(members)
            return 0
        g = self._cold_add(raw, blob, len(members))
        if g < 0:
            return g if g == -1 else 0
        dedup = self.dedup
        relink = self.tmem.relink
        for m, (owner, h) in enumerate(members):
            relink(*owner, cold(g, m))
            if dedup is not None:
                dedup.forget(h)
            dense.free_and_delist(h)
        self.zbytes[PERS] += len(blob) - payloads
        self.recompress_saved_bytes += payloads - len(blob)
        self.recompressed += len(members)
        self.cold_grouped += len(members)
        return len(members)

    def _cold_add(self, raw: bytes, blob: bytes, members: int) -> int:
        """Keep `blob` (the compressed `raw`) as a group of `members` pages: its id;
        -1 when the log has no frame or no id for it, -2 when the blob does not
        read back exactly (never kept)."""
        if self._cold_d.decompress(blob, max_output_size=RAW_MAX) != raw:
            return -2
        g = self._cold.add(blob, members)
        if g >= 0 and self._cold_cached_g == g:
            self._cold_cached_g = -1  # an id freed and given again: not the group cached
        return g

    def _cold_regroup(self, groups: int) -> tuple[int, bool]:
        """Put the live members of sparse groups (a quarter full or less) into new
        groups, when there are two sparse groups or more to merge, at most `groups`
        new ones a call; (the pages moved, whether sparse groups are left). A
        member's old place is freed once the new group holds it."""
        log = self._cold
        sparse = [g for g in log.newest() if bin(log.mask[g]).count("1") <= SPARSE]
        if len(sparse) < 2:
            return 0, False
        take, pages = [], 0
        for g in sparse:
            if pages >= groups * COLD_GROUP:
                break
            take.append(g)
            pages += bin(log.mask[g]).count("1")
        more = len(sparse) - len(take) >= 2
        if len(take) < 2:
            return 0, more
        batch = sorted(((owner, cold(g, m), page) for g in take for owner, m, page in self._cold_members(g)),
                       key=lambda entry: _slot_key(entry[0][0].pool_id, *entry[0][1:]))
        done = 0
        lookup = self.tmem.lookup
        for i in range(0, len(batch), COLD_GROUP):
            part = [(o, p, page) for o, p, page in batch[i:i + COLD_GROUP] if lookup(*o) == p]
            if not part:
                continue
            raw = b"".join(_handle(o) for o, _, _ in part) + b"".join(pg for _, _, pg in part)
            blob = self._cold_compressor().compress(raw)
            g = self._cold_add(raw, blob, len(part))
            if g == -1:
                break
            if g < 0:
                continue
            self.zpages[PERS] += len(part)
            self.zbytes[PERS] += len(blob)
            for m, (owner, p, _) in enumerate(part):
                self.tmem.relink(*owner, cold(g, m))
                self._cold_free(p)
            self.cold_regrouped += len(part)
            done += len(part)
        return done, more

    def _cold_members(self, g: int):
        """(owner, m, page) of every live member of group g whose slot still holds it."""
        log = self._cold
        raw = self._cold_raw(g)
        n = len(raw) // (HANDLE_SIZE + PAGE_SIZE)
        mask = log.mask[g]
        get_pool = self.tmem.get_pool
        lookup = self.tmem.lookup
        out = []
        for m in range(n):
            if not mask >> m & 1:
                continue
            oid, index, pool_id, client_id = _owner(raw, m)
            pool = get_pool(client_id, pool_id)
            if pool is None or lookup(pool, oid, index) != cold(g, m):
                continue
            out.append(((pool, oid, index), m, _member_page(raw, m)))
        return out

    # ---- leaving memory ----------------------------------------------------------------------------

    def _write_back_cold(self, sink, accepts, limit: int, frames_wanted: int = 1 << 62,
                         idle_only: bool = False) -> tuple[int, int]:
        """Write the cold groups' pages to the sink, the end of the log first, whole
        groups only, at most `limit` pages, until `frames_wanted` frames came back;
        with idle_only, only groups none of whose pages was read since the idle
        mark. Returns (pages written, frames given back)."""
        log = self._cold
        frames = len(log.frames)
        written = 0
        for g in log.newest():
            if idle_only and log.seen[g]:
                continue
            # what compaction will give back once these pages are gone: a group the sink
            # refused may keep the end of the log where it is
            if frames - -(-log.zbytes // PAGE_SIZE) >= frames_wanted:
                break
            members = self._cold_members(g)
            if written + len(members) > limit:
                break
            for (pool, oid, index), m, page in members:
                if accepts is not None and not accepts(pool, oid, index):
                    self.cold_refused += 1
                    continue
                if self._hand_to_sink(sink, pool, oid, index, page):
                    written += 1
                    self.cold_written_back += 1
                else:
                    self.cold_refused += 1
        if log.hole_bytes() >= PAGE_SIZE:
            log.compact()
        return written, frames - len(log.frames)

    def _cold_frames(self, n: int) -> None:
        """The log holds n frames now: they are persistent pages' frames, in zcache's
        pers_pageframes and its high-water mark (the allocator counts its own)."""
        dense = self.zbud
        dense.extra_frames[PERS] = n
        total = dense.pageframes[PERS] + n
        if total > dense.pageframes_max[PERS]:
            dense.pageframes_max[PERS] = total

    def _cold_compressor(self):
        """The group compressor, made when a pass first needs it: its context holds
        about 3.5 MB at level 9 (hash and chain tables sized for a group), so the
        pass drops it at its end (`_cold_release`) rather than keep it between passes."""
        c = self._cold_c
        if c is None:
            # the content size (3 bytes) lets a read decode straight into its output: without
            # it the decompression context keeps a window buffer, 750 KB instead of 96 KB
            c = self._cold_c = zstandard.ZstdCompressor(level=COLD_LEVEL, write_content_size=True,
                                                        write_checksum=False, write_dict_id=False)
        return c

    def _cold_release(self) -> None:
        self._cold_c = None
        self._cold_cached_g = -1  # and the group the pass read last: 132 KB
        self._cold_cached = b""

    def _cold_compact(self) -> int:
        return self._cold.compact()


def _slot_key(pool_id: int, oid: int, index: int) -> int:
    # index before oid: frontswap (the one local persistent pool) spreads a swap area's
    # consecutive offsets over 256 oids at one index (its swizzle), so this is slot order
    return (pool_id << 32 | index) << 192 | oid


def _member_page(raw: bytes, m: int) -> bytes:
    """Member m's page in a decompressed group: the members' handles come first."""
    off = len(raw) // (HANDLE_SIZE + PAGE_SIZE) * HANDLE_SIZE + m * PAGE_SIZE
    return raw[off:off + PAGE_SIZE]


def _owner(raw: bytes, m: int) -> tuple[int, int, int, int]:
    """(oid, index, pool_id, client_id) of member m's handle."""
    oidb, index, pool_id, _codec, client_id = HANDLE.unpack_from(raw, m * HANDLE_SIZE)
    return int.from_bytes(oidb, "little"), index, pool_id, client_id


def _handle(owner: tuple) -> bytes:
    pool, oid, index = owner
    return oid.to_bytes(24, "little") + (index | pool.handle_tag).to_bytes(8, "little")


def cold_init(zc, on: bool) -> None:
    """The state a Zcache keeps for cold groups (called from its __init__); `on`: the
    recompression pass makes them."""
    zc.cold_groups = on
    zc._cold = ColdLog(zc.arena, zc._cold_frames if zc._dense else None, MAX_COLD >> COLD_SHIFT)
    zc._cold_c = None
    zc._cold_d = zstandard.ZstdDecompressor()
    zc._cold_batch = array("i")  # the window: handles queued, unsorted
    zc._cold_ready = array("i")  # the window sorted, groups cut from _cold_ready_pos on
    zc._cold_ready_pos = 0
    zc._cold_more = 0  # 1: sparse groups may still merge (the pass is not over)
    zc._cold_cached_g = -1
    zc._cold_cached = b""
    for name in COLD_COUNTERS:
        setattr(zc, name, 0)
