"""Recompression: cold pages stored again with a second, denser codec (zram's `recompress`).

A part of Zcache (it is one of its bases). A page that stays cold, in a
frame not read since the last idle mark, or kept raw in a frame of its own
(a huge page), is decompressed and compressed again with the recompression
codec (compress.get_codec(name, strong=True): zstd level 3 by default).
The result replaces the page only when it puts it in a smaller class of the
allocator (a chunk of zbud less, a smaller size class of dense) or, for a
huge page, when it fits the allocator at all: a smaller payload in the same
class frees nothing.

Where a recompressed page goes, with zbud, best first: into the fullest
half-full frame with room (zbud.match_cold: that frame keeps its LRU place,
so a cold page does not make it recent), which frees the old slot and, with
it, a frame that held only this page; else it shrinks where it is
(zbud.rewrite), so its frame takes a larger buddy later. zbud's two pages a
frame cap what that saves; the dense allocator is where recompression pays:
the object moves to a zspage of its smaller class (dense.match_cold), or a
new one made of free frames at the LRU head (dense.create_cold; never by
evicting anything, so on a full budget it waits for a later pass), and the
holes it leaves are what dense's compaction gives back as frames. A huge
page becomes an ordinary compressed page: beside others, or in its own
frame turned into a zbud frame or the first frame of a zspage, at the head
of the LRU, the coldest place. tmem's slot gets the new pampd (relink);
nothing else about the page changes.

Which codec a page is in is the codec byte of its handle (zbud.py's HANDLE,
the header dense writes too), never a Python object per page:

    0              the node's codec (every put writes 0 with the handle)
    CODEC_IDS[x]   recompressed with codec x (compress.py's numbers)
    TRIED          the node's codec; recompression was tried and did not pay,
                   so a later pass skips it (a put of the page writes 0 again)

The get path reads no byte for that. A recompressed payload is kept only if
the node's own codec refuses it (raises, or yields anything but a page) or
reads it back exactly, checked when it is made; codecs are deterministic,
so a get tries the node's codec as always and only when it refuses looks at
the byte (`_decode_tagged`). A strong variant of the node's own codec is
read by it directly. A payload no such check can make safe (the node's codec
would read it as a wrong page) is not kept.

Pages leave memory in the node's codec only: writeback decompresses through
the get path, and remotify (`take_lru`) re-encodes a recompressed page with
the cluster's codec first, so the wire and the peers never see a codec byte.
Pages of foreign pools are never recompressed: their owner checks what comes
back against the checksum of the bytes it sent, and only those bytes pass. A
page sent raw and re-encoded would come back compressed, and a codec's
output may differ between two builds of its library, so no re-encoding can
promise them.

Candidates are found per pass: the huge frames, then the idle units (zbud
frames, dense zspages) of each class (or, with idle_only=False, every unit on
an LRU), least recently used first, listed once in `_recomp_queue` (unit
ids; huge frames as their pampds) and re-checked one by one as the pass consumes them, because a put,
a get, a writeback or remotify may have changed any of them meanwhile. A new
idle mark starts a new pass. A dedup entry's copy is stored again
like any page (dedup.move points the entry at it; the owners' slots hold the
entry and do not change), and a put that compares a page with a copy reads
it as a get does. Frames off their LRU (zombies: remotify or
writeback has them) and pinned ones are never touched, so a page another
path has taken keeps its pampd. Everything runs on the node's one loop, so a
batch is synchronous and no write can interleave with the page it moves.
"""
from __future__ import annotations

from array import array

from . import compress as _compress
from .handles import page_budget
from .pampd import COLD_GROUP, HUGE_BASE
from .tmem import LOCAL_CLIENT
from .units import PAGE_SIZE
from .zbud import (CLASS_SHIFT, CODEC_OFFSET, EPH, HANDLE_SIZE, LIVE, MAX_BUDDY_SIZE, MAX_SIZE, NSENTINELS, PERS, TRIED,
                   nchunks)

# the recompression counters, "zcache." in stats()
RECOMPRESS_COUNTERS = ("recompressed", "recompress_skipped", "recompress_saved_bytes")
DEFAULT_RECOMPRESSOR = "zstd"


class Recompress:
    """Zcache's recompression (see the module comment)."""

    # counters (stats() has them as "zcache.NAME"); saved bytes are stored bytes, handles
    # included: what the frames gain from them shows in the pageframes gauges
    recompressed: int
    recompress_skipped: int
    recompress_saved_bytes: int

    @property
    def idle_marks(self) -> int:
        """How many times pages were marked idle (mark_idle) since the start."""
        return self._idle_epoch

    def recompress(self, max_pages: int | None = None, idle_only: bool = True) -> int:
        """Recompress cold pages with the recompression codec: the huge ones, then
        the zbud ones idle since the last mark (every one with idle_only=False).
        Looks at no more than `max_pages` pages (each costs a decompression and a
        compression, kept or not); returns the pages recompressed. Resumes where
        the last call stopped, until a pass is over (`recompress_pending`)."""
        limit = page_budget(max_pages)
        # a pass is over once every page was looked at and its cold groups are made
        if (not self._recomp_queue or self._recomp_pass != (self._idle_epoch, idle_only)
                or (self._recomp_pos >= len(self._recomp_queue) and not self._cold_pending())):
            # an array: ints kept in a list through the pass would pin the arenas of the
            # many small objects a pass makes and drops (coldlog.py)
            self._recomp_queue = array("i", self._recompress_candidates(idle_only))
            self._recomp_pass = (self._idle_epoch, idle_only)
            self._recomp_pos = 0
            self._recomp_slot = 0
        queue = self._recomp_queue
        done = tried = 0
        while tried < limit and self._recomp_pos < len(queue):
            item = queue[self._recomp_pos]
            self._recomp_pos += 1
            if item < 0:
                t, d = self._recompress_huge(HUGE_BASE - item)
            elif self._dense:
                t, d = self._recompress_zspage(item, idle_only, limit - tried)
            else:
                t, d = self._recompress_frame(item, idle_only)
            tried += t
            done += d
        if self._dense:
            # cold groups: a group for each 32 pages the call may still look at, one at
            # least; at the end of the pass the window's rest and the sparse groups,
            # and then the holes the pass left in the log and in the zspages are packed
            finishing = self._recomp_pos >= len(queue)
            n, left = self._cold_work(max(1, (limit - tried) // COLD_GROUP), finishing)
            done += n
            if finishing and not left:
                self._cold_release()
                self._cold_compact()
                self.zbud.compact()
        self.arena.release_free_frames()
        return done

    def recompress_pending(self) -> int:
        """Frames and huge pages left in the current pass, and pages queued for cold
        groups (0: the pass is over; the next recompress() starts another, which
        finds nothing new until pages are marked idle again or new huge pages arrive)."""
        return len(self._recomp_queue) - self._recomp_pos + self._cold_pending()

    def recompress_waiting(self) -> bool:
        """Whether a new pass would find what the last one did not: pages marked idle
        since it began, or huge pages it has not tried (cheap: no walk)."""
        return (self._recomp_pass is None or self._recomp_pass[0] != self._idle_epoch
                or self.huge_pages > len(self._huge_tried))

    @property
    def recompressor(self) -> str:
        return self._recomp_name

    # ---- the pass --------------------------------------------------------------------

    def _recompress_candidates(self, idle_only: bool) -> list[int]:
        zbud = self.zbud
        out = [HUGE_BASE - f for f in self.huge_lru if f not in self._huge_tried]
        for c in (PERS, EPH):
            if idle_only:
                if self._idle_marked:
                    out += zbud.idle_frames(c)
            else:
                out += zbud.lru_frames(c)
        return out

    def _recomp_codec(self):
        if self._recomp is None:
            self._recomp = _compress.get_codec(self._recomp_name, strong=True)
            self._recomp_tag = _compress.CODEC_IDS[self._recomp.name]
        return self._recomp

    def _recode(self, page: bytes, old: int):
        """The page in the recompression codec if that puts it in a smaller class of
        the allocator than `old` stored bytes (0: a huge page, which only has to fit)
        and a get will read it back exactly (module comment); else None."""
        cdata = self._recomp_codec().compress(page)
        stored = len(cdata) + HANDLE_SIZE
        if stored > MAX_SIZE:
            return None
        if old:
            cost = self.zbud.size_class if self._dense else nchunks
            if cost(stored) >= cost(old):
                return None
        try:
            mine = self._decompress(cdata)
        except Exception:
            mine = None
        if mine is not None and len(mine) == PAGE_SIZE:
            return cdata if mine == page else None  # the node's codec reads it: right, or never safe
        if self._recomp.decompress(cdata) != page:
            return None
        return cdata

    def _recompress_frame(self, n: int, idle_only: bool) -> tuple[int, int]:
        zbud = self.zbud
        if n >= zbud.nodes:
            return 0, 0
        st = zbud.state[n]
        c = st >> CLASS_SHIFT
        if st != LIVE | c << CLASS_SHIFT or zbud.unevictable[n]:
            return 0, 0  # free, a zombie (remotify or writeback has it) or pinned
        if idle_only and not zbud.idle_and_evictable(n):
            return 0, 0
        tried = done = 0
        for p in (n << 1, n << 1 | 1):
            if not zbud.sizes[p] or zbud.state[n] != st or zbud.codec(p):
                continue
            d = self._whose(p, *zbud.handle(p))
            if d is None:
                continue
            tried += 1
            old = zbud.sizes[p]
            page = self._decompress(zbud.payload(p))
            cdata = self._recode(page, old)
            if cdata is None:
                zbud.set_codec(p, TRIED)
                self.recompress_skipped += 1
                continue
            handle = self._tagged_handle(zbud.handle_bytes(p))
            q = zbud.match_cold(c, len(cdata) + HANDLE_SIZE, cdata, handle)
            if q:
                self._relink(d, p, q)
                s = zbud.free_and_delist(p)
                if s < 0:
                    self.arena.free((p >> 1) - NSENTINELS)
            else:
                zbud.rewrite(p, cdata, handle)
            saved = old - HANDLE_SIZE - len(cdata)
            self.zbytes[c] -= saved
            self.recompress_saved_bytes += saved
            self.recompressed += 1
            done += 1
        return tried, done

    def _recompress_huge(self, f: int) -> tuple[int, int]:
        h = self.huge_lru.get(f)
        if h is None or f in self._huge_tried:
            return 0, 0  # freed, or taken by writeback or remotify
        pool, oid, index = h
        p = HUGE_BASE - f
        if self.tmem.lookup(pool, oid, index) != p:
            return 0, 0
        if pool.client_id != LOCAL_CLIENT:  # goes back as it came (module comment)
            self._huge_tried.add(f)
            return 0, 0
        page = self._huge_page(p)
        cdata = self._recode(page, 0)
        if cdata is None:
            self._huge_tried.add(f)
            self.recompress_skipped += 1
            return 1, 0
        c = pool.cls
        handle = self._tagged_handle(oid.to_bytes(24, "little") + (index | pool.handle_tag).to_bytes(8, "little"))
        q = self._place_cold(c, cdata, handle, f)
        if not q:  # no frames for it now: tried, until the page is stored again
            self._huge_tried.add(f)
            return 1, 0
        del self.huge_lru[f]
        self._huge_idle.discard(f)
        self.huge_pages -= 1
        self.tmem.relink(pool, oid, index, q)
        n = self.zpages[c] + 1
        self.zpages[c] = n
        if n > self.zpages_max[c]:
            self.zpages_max[c] = n
        self.zbytes[c] += len(cdata)
        if self.zbytes[c] > self.zbytes_max[c]:
            self.zbytes_max[c] = self.zbytes[c]
        self.recompress_saved_bytes += PAGE_SIZE - HANDLE_SIZE - len(cdata)
        self.recompressed += 1
        return 1, 1

    def _recompress_zspage(self, z: int, idle_only: bool, limit: int) -> tuple[int, int]:
        """_recompress_frame for a zspage of the dense allocator: each object that a
        smaller class takes moves there (its old slot is freed, and compaction
        gives back the frames such holes add up to). A zspage holds up to a few
        hundred objects: at most `limit` are looked at, and the next call goes on
        from the next slot (`_recomp_slot`)."""
        dense = self.zbud
        j = self._recomp_slot
        self._recomp_slot = 0
        if z >= len(dense.state):
            return 0, 0
        st = dense.state[z]
        c = st >> CLASS_SHIFT
        live = LIVE | c << CLASS_SHIFT
        if st != live or (idle_only and not dense.idle_and_evictable(z)):
            return 0, 0
        tried = done = 0
        handles = list(dense.slots[z])
        for j in range(j, len(handles)):
            if tried >= limit:
                self._recomp_pos -= 1  # this zspage again, from slot j
                self._recomp_slot = j
                break
            h = handles[j]
            if not h or not dense.hsize[h] or dense.state[dense.unit_of(h)] != live or dense.codec(h):
                continue
            d = self._whose(h, *dense.handle(h))
            if d is None:
                continue
            tried += 1
            if c == PERS and self.cold_groups and type(d) is tuple:  # its own slot's: into a cold group (zcache_cold.py)
                self._cold_take(h)
                continue
            old = dense.hsize[h]
            page = self._decompress(dense.payload(h))
            cdata = self._recode(page, old)
            if cdata is None:
                dense.set_codec(h, TRIED)
                self.recompress_skipped += 1
                continue
            q = self._place_cold(c, cdata, self._tagged_handle(dense.handle_bytes(h)))
            if not q:
                continue  # no frame for a new zspage of its class now: a later pass tries again
            self._relink(d, h, q)
            dense.free_and_delist(h)
            saved = old - HANDLE_SIZE - len(cdata)
            self.zbytes[c] -= saved
            self.recompress_saved_bytes += saved
            self.recompressed += 1
            done += 1
        return tried, done

    def _whose(self, p: int, client_id: int, pool_id: int, oid: int, index: int):
        """Who holds the stored page p: (pool, oid, index) when that handle's slot holds
        p itself, the dedup entry d (an int) whose copy it is, or None (a page being
        replaced or freed: not to be touched)."""
        if client_id != LOCAL_CLIENT:
            return None  # a foreign page goes back as it came (module comment)
        pool = self.tmem.get_pool(client_id, pool_id)
        if pool is not None and self.tmem.lookup(pool, oid, index) == p:
            return pool, oid, index
        if self.dedup is not None:
            d = self._bud_entry(p, pool, oid, index)
            if d >= 0:
                return d
        return None

    def _relink(self, owner, p: int, q: int) -> None:
        """Point the page's one holder (see _whose) at q, its new place instead of p."""
        if type(owner) is int:
            self.dedup.move(owner, q)  # every owner's slot holds the entry, not the copy
        else:
            self.tmem.relink(*owner, q)
            if self.dedup is not None:
                self.dedup.moved(p, q)  # its key leads to the new place

    def _place_cold(self, c: int, cdata, handle: bytes, spare: int = -1) -> int:
        """Store a recompressed payload without making anything recent: in a unit of
        its class with room, else in a new one at the LRU head, made of the frame
        `spare` (a huge page's, >= 0) and free frames within the budget (never by
        evicting: recompression makes room, it does not take it). 0 if there are
        not enough free frames; `spare` is then left as it was."""
        zbud = self.zbud
        stored = len(cdata) + HANDLE_SIZE
        q = zbud.match_cold(c, stored, cdata, handle)
        if q:
            if spare >= 0:
                self.arena.free(spare)
            return q
        if not self._dense:
            if spare < 0:
                return 0
            q = zbud.create_cold(c, spare, cdata, handle)
        else:
            frames = [spare] if spare >= 0 else []
            while len(frames) < zbud.frames_for(stored):
                f = self.arena.alloc()
                if f < 0:
                    for f in frames:
                        if f != spare:
                            self.arena.free(f)
                    return 0
                frames.append(f)
            q = zbud.create_cold(c, frames, stored, cdata, handle)
        if zbud.pageframes[c] > self.pageframes_max[c]:
            self.pageframes_max[c] = zbud.pageframes[c]
        return q

    def _tagged_handle(self, handle: bytes) -> bytes:
        self._recomp_codec()
        return handle[:CODEC_OFFSET] + bytes((self._recomp_tag,)) + handle[CODEC_OFFSET + 1:]

    # ---- reading a recompressed page -------------------------------------------------------

    def _decode_tagged(self, p: int) -> bytes:
        """The page of zbudref p, whose payload the node's codec refused: in the codec
        its handle names, or RuntimeError (a payload nothing here can read)."""
        k = self.zbud.codec(p)
        codec = self._decoders.get(k)
        if codec is None:
            name = next((x for x, i in _compress.CODEC_IDS.items() if i == k), None)
            if name is None:
                raise RuntimeError(f"compressed page {p} is in no codec this node knows (codec byte {k})")
            codec = self._decoders[k] = _compress.get_codec(name).decompress
        data = codec(self.zbud.payload(p))
        if len(data) != PAGE_SIZE:
            raise RuntimeError(f"decompressed page is {len(data)} bytes, not {PAGE_SIZE}")
        return data

    def _portable(self, p: int) -> bytes:
        """The payload of zbudref p in the node's (the cluster's) codec, for a page
        leaving this node: re-encoded if it was recompressed, else as stored. A page
        the node's codec cannot fit in a buddy leaves raw (a huge page's payload)."""
        k = self.zbud.codec(p)
        if not k or k == TRIED:
            return bytes(self.zbud.payload(p))
        page = self.get_data(p, None)
        cdata = self._compress(page)
        return cdata if len(cdata) <= MAX_BUDDY_SIZE else page


def recompress_init(zc, recompressor: str) -> None:
    """The state a Zcache keeps for recompression (called from its __init__)."""
    _compress.get_codec(recompressor)  # ValueError now, not at the first pass
    zc._recomp_name = recompressor.lower()
    zc._recomp = None
    zc._recomp_tag = 0
    zc._decoders = {}
    zc._recomp_queue = []
    zc._recomp_pos = 0
    zc._recomp_slot = 0
    zc._recomp_pass = None
    zc._huge_tried = set()
    for name in RECOMPRESS_COUNTERS:
        setattr(zc, name, 0)

