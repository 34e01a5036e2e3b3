"""zbud: the compression-buddies allocator (SPEC §3).

A page frame holds zero, one or two zbuds. A zbud is the 32-byte tmem handle
followed by the compressed payload; buddy 0 starts at the start of the frame,
buddy 1 ends at its end. zbud never allocates frames: zcache hands it frames
(`create_prep`) and takes back the ones it empties.

All per-frame metadata lives in flat arrays indexed by a frame's *node id*
(`n = NSENTINELS + arena frame number`); a zbudref (the pampd zcache stores in
tmem) is `n << 1 | budnum`, never 0. Per-page Python objects would cost more
than the page's whole metadata budget.

Lists, per class (EPH, PERS):
- unbuddied[1..63]: doubly linked lists threaded through `bprev`/`bnext`, whose
  first NSENTINELS nodes are the list heads, plus a bitmap of non-empty lists
  so match_prep finds the best fit in O(1).
- buddied: implicit. Nothing walks it, so a count is all it needs.
- LRU: an append-only queue of node ids with a per-frame stamp; an entry is live
  only while `stamp[n]` names its position, so "move to the tail" is one append
  and removal is one store. Stale entries are skipped at the head and the queue
  is compacted when they outnumber the live ones.
- zombie: a dict used as an ordered set (rare: remotify and writeback only).

This allocator is single-threaded: the seed's try-locks become plain checks.
"""
from __future__ import annotations

import struct
from array import array

PAGE_SIZE = 4096
PAGE_SHIFT = 12
CHUNK_SHIFT = 6
CHUNK_SIZE = 1 << CHUNK_SHIFT
NCHUNKS = PAGE_SIZE >> CHUNK_SHIFT  # 64
MAX_CHUNK = NCHUNKS - 1
HANDLE_SIZE = 32
MAX_SIZE = MAX_CHUNK * CHUNK_SIZE  # 4032, includes the handle
MAX_BUDDY_SIZE = MAX_SIZE - HANDLE_SIZE  # 4000, the largest payload

EPH, PERS = 0, 1
CLASS_NAMES = ("eph", "pers")
NSENTINELS = 2 * NCHUNKS  # unbuddied list heads: (class << 6) | nchunks

# frame state bits
LIVE = 1
ZOMBIE = 2
DYING = 4

# oid (24 bytes, little-endian: oid[0] first), index u32, pool_id u16, client_id u16
HANDLE = struct.Struct("<24sIHH")
_pack_handle = HANDLE.pack_into
_unpack_handle = HANDLE.unpack_from


def nchunks(stored_size: int) -> int:
    return (stored_size + CHUNK_SIZE - 1) >> CHUNK_SHIFT


class Zbud:
    """The zbud lists and metadata for every frame of one arena."""

    def __init__(self, buf: memoryview, nframes: int):
        self.buf = buf
        self._base = NSENTINELS << PAGE_SHIFT  # byte offset of node n is (n << 12) - _base
        self.sizes = array("H")  # stored size of zbudref p is sizes[p]; 0 = empty slot
        self.cls = bytearray()
        self.state = bytearray()
        self.unevictable = bytearray()
        self.bprev = array("i")
        self.bnext = array("i")
        self.stamp = array("q")
        self.nodes = 0
        self._grow(NSENTINELS + nframes)
        self.bitmap = [0, 0]  # bit i set: unbuddied[i] of that class is not empty
        self.lru = [array("i"), array("i")]
        self.lru_head = [0, 0]  # index of the first possibly-live entry
        self.lru_base = [0, 0]  # absolute position of lru[c][0]
        self.zombies: list[dict[int, None]] = [{}, {}]
        # statistics (SPEC §3.9), indexed by class
        # Only cumulative and freed totals move on the hot paths; the current
        # zbytes/zpages are their difference (see zbytes()/zpages()).
        self.cumul_zbytes = [0, 0]  # handles included
        self.freed_zbytes = [0, 0]
        self.freed_zpages = [0, 0]
        self.pageframes = [0, 0]
        self.evicted_pageframes = [0, 0]
        self.unbuddied_count = [0, 0]
        self.cumul_chunk_counts = [array("q", bytes(8 * NCHUNKS)), array("q", bytes(8 * NCHUNKS))]

    # ---- sizing -------------------------------------------------------------

    def _grow(self, nodes: int) -> None:
        extra = nodes - self.nodes
        if extra <= 0:
            return
        start = self.nodes
        self.sizes.frombytes(bytes(4 * extra))
        self.cls.extend(bytes(extra))
        self.state.extend(bytes(extra))
        self.unevictable.extend(bytes(extra))
        # a node not on any bud list points at itself
        self.bprev.extend(range(start, nodes))
        self.bnext.extend(range(start, nodes))
        self.stamp.frombytes(b"\xff" * (8 * extra))  # -1: not on an LRU
        self.nodes = nodes

    def ensure_frames(self, nframes: int) -> None:
        self._grow(NSENTINELS + nframes)

    @staticmethod
    def node_of(frame: int) -> int:
        return frame + NSENTINELS

    @staticmethod
    def frame_of(node: int) -> int:
        return node - NSENTINELS

    # ---- unbuddied lists ----------------------------------------------------

    def _ub_add(self, c: int, n: int, nch: int) -> None:
        # list_add: new entries go to the head, and match_prep takes the head (LIFO, as the seed)
        h = (c << CHUNK_SHIFT) | nch
        bnext = self.bnext
        x = bnext[h]
        bnext[h] = n
        self.bprev[n] = h
        bnext[n] = x
        self.bprev[x] = n
        self.bitmap[c] |= 1 << nch
        self.unbuddied_count[c] += 1

    def _ub_del(self, n: int) -> None:
        bprev, bnext = self.bprev, self.bnext
        p = bprev[n]
        x = bnext[n]
        bnext[p] = x
        bprev[x] = p
        if p == x:  # only the head is left
            self.bitmap[p >> CHUNK_SHIFT] &= ~(1 << (p & MAX_CHUNK))
        bprev[n] = n
        bnext[n] = n
        self.unbuddied_count[self.cls[n]] -= 1

    # ---- LRU ------------------------------------------------------------------

    def _lru_add_tail(self, c: int, n: int) -> None:
        q = self.lru[c]
        self.stamp[n] = self.lru_base[c] + len(q)
        q.append(n)
        self._lru_maybe_compact(c, q)

    def _lru_maybe_compact(self, c: int, q: array) -> None:
        # checked every 4096 appends: keeps dead entries below about half the queue
        if not len(q) & 4095 and len(q) > 2 * self.pageframes[c] + 4096:
            self._lru_compact(c)

    def _lru_compact(self, c: int) -> None:
        q = self.lru[c]
        base = self.lru_base[c]
        stamp, state, cls = self.stamp, self.state, self.cls
        live = array("i", (n for i, n in enumerate(q) if stamp[n] == base + i and cls[n] == c and state[n] == LIVE))
        newbase = base + len(q)  # positions are never reused, so old stamps stay stale
        for i, n in enumerate(live):
            stamp[n] = newbase + i
        self.lru[c] = live
        self.lru_base[c] = newbase
        self.lru_head[c] = 0

    def _lru_first_evictable(self, c: int) -> int:
        """Walk the LRU from the head; unlink and return the first evictable frame, or 0."""
        q = self.lru[c]
        base = self.lru_base[c]
        stamp, state, cls, unevictable = self.stamp, self.state, self.cls, self.unevictable
        i = self.lru_head[c]
        head = i
        end = len(q)
        while i < end:
            n = q[i]
            if stamp[n] == base + i and cls[n] == c and state[n] == LIVE:
                if not unevictable[n]:
                    stamp[n] = -1
                    if i == head:
                        head += 1
                    self.lru_head[c] = head
                    return n
            elif i == head:
                head += 1
            i += 1
        self.lru_head[c] = head
        if head > 4096 and head * 2 > end:
            self._lru_compact(c)
        return 0

    def lru_frames(self, c: int) -> list[int]:
        """Live frames of class c, LRU end first (for tests and tools)."""
        q = self.lru[c]
        base = self.lru_base[c]
        return [n for i, n in enumerate(q) if self.stamp[n] == base + i and self.cls[n] == c and self.state[n] == LIVE]

    # ---- data -----------------------------------------------------------------

    def _offset(self, p: int) -> int:
        n = p >> 1
        off = (n << PAGE_SHIFT) - self._base
        if p & 1:
            return off + PAGE_SIZE - ((self.sizes[p] + CHUNK_SIZE - 1) & -CHUNK_SIZE)
        return off

    def payload(self, p: int) -> memoryview:
        """The compressed payload of zbudref p, as a view into the arena."""
        s = self.sizes[p]
        off = ((p >> 1) << PAGE_SHIFT) - self._base
        if p & 1:
            off += PAGE_SIZE - ((s + CHUNK_SIZE - 1) & -CHUNK_SIZE)
        return self.buf[off + HANDLE_SIZE : off + s]

    def payload_size(self, p: int) -> int:
        return self.sizes[p] - HANDLE_SIZE

    def handle(self, p: int) -> tuple[int, int, int, int]:
        """(client_id, pool_id, oid, index) read back from the frame itself."""
        o, index, pool_id, client_id = _unpack_handle(self.buf, self._offset(p))
        return client_id, pool_id, int.from_bytes(o, "little"), index

    def copy_to_zbud(self, p: int, data: bytes) -> None:
        """Fill a zbud reserved with cdata=None (RAMster repatriation)."""
        off = self._offset(p) + HANDLE_SIZE
        self.buf[off : off + len(data)] = data

    def is_dying(self, p: int) -> bool:
        return bool(self.state[p >> 1] & DYING)

    # ---- create -----------------------------------------------------------------

    def match_prep(self, c: int, stored: int, cdata, client_id: int, pool_id: int, oidb: bytes, index: int) -> int:
        """Put a zbud of `stored` bytes (handle included) into a half-full frame; 0 if none fits.

        Best fit by fullness: unbuddied[64 - nchunks] first, i.e. the frames whose
        zbud leaves exactly enough room, then ever emptier ones.
        """
        nch = (stored + CHUNK_SIZE - 1) >> CHUNK_SHIFT
        m = self.bitmap[c] & ((2 << (NCHUNKS - nch)) - 2)
        if not m:
            return 0
        i = m.bit_length() - 1
        h = (c << CHUNK_SHIFT) | i
        bnext = self.bnext
        n = bnext[h]
        x = bnext[n]
        bnext[h] = x
        self.bprev[x] = h
        if x == h:
            self.bitmap[c] ^= 1 << i
        self.unbuddied_count[c] -= 1
        # a frame goes to the LRU tail when its second zbud arrives (SPEC §3.4)
        q = self.lru[c]
        self.stamp[n] = self.lru_base[c] + len(q)
        q.append(n)
        if not len(q) & 4095:
            self._lru_maybe_compact(c, q)
        self.unevictable[n] += 1
        off = (n << PAGE_SHIFT) - self._base
        p = n << 1
        if self.sizes[p]:
            p |= 1
            off += PAGE_SIZE - ((stored + CHUNK_SIZE - 1) & -CHUNK_SIZE)
        self.sizes[p] = stored
        if cdata is not None:
            _pack_handle(self.buf, off, oidb, index, pool_id, client_id)
            self.buf[off + HANDLE_SIZE : off + stored] = cdata
        self.cumul_zbytes[c] += stored
        self.cumul_chunk_counts[c][nch] += 1
        return p

    def create_prep(self, c: int, frame: int, stored: int, cdata, client_id: int, pool_id: int, oidb: bytes, index: int) -> int:
        """Turn the empty arena frame `frame` into a zbud frame holding one zbud in slot 0."""
        if stored > MAX_SIZE:
            return 0
        n = frame + NSENTINELS
        if n >= self.nodes:
            self._grow(n + 1)
        self.sizes[n << 1] = stored
        self.sizes[(n << 1) | 1] = 0
        self.cls[n] = c
        self.state[n] = LIVE
        self.unevictable[n] = 1
        nch = (stored + CHUNK_SIZE - 1) >> CHUNK_SHIFT
        self._ub_add(c, n, nch)
        self.pageframes[c] += 1
        self._lru_add_tail(c, n)
        if cdata is not None:
            off = (n << PAGE_SHIFT) - self._base
            _pack_handle(self.buf, off, oidb, index, pool_id, client_id)
            self.buf[off + HANDLE_SIZE : off + stored] = cdata
        self.cumul_zbytes[c] += stored
        self.cumul_chunk_counts[c][nch] += 1
        return n << 1

    def create_finish(self, p: int) -> None:
        self.unevictable[p >> 1] -= 1

    # ---- free ---------------------------------------------------------------------

    def free_and_delist(self, p: int) -> int:
        """Free zbudref p. Returns its stored size; negated when the frame became empty
        (the caller frees frame `(p >> 1) - NSENTINELS`); 0 if the frame is dying
        (the evictor owns it and has done the accounting)."""
        n = p >> 1
        st = self.state[n]
        if st & DYING:
            return 0
        sizes = self.sizes
        s = sizes[p]
        sizes[p] = 0
        other = sizes[p ^ 1]
        c = self.cls[n]
        self.freed_zbytes[c] += s
        self.freed_zpages[c] += 1
        if other:
            if not st & ZOMBIE:  # a zombie stays off the bud lists until it is empty
                self._ub_add(c, n, (other + CHUNK_SIZE - 1) >> CHUNK_SHIFT)
            return s
        if st & ZOMBIE:
            del self.zombies[c][n]
        else:
            self._ub_del(n)
            self.stamp[n] = -1
        self.state[n] = 0
        self.pageframes[c] -= 1
        return -s

    def _unlink_live(self, n: int) -> None:
        """Take a LIVE frame off its bud list (the LRU entry is already dead)."""
        if not (self.sizes[n << 1] and self.sizes[(n << 1) | 1]):
            self._ub_del(n)

    def _read_buds(self, n: int, with_data: bool) -> list[tuple]:
        out = []
        for p in (n << 1, (n << 1) | 1):
            if self.sizes[p]:
                client_id, pool_id, oid, index = self.handle(p)
                data = bytes(self.payload(p)) if with_data else None
                out.append((p, client_id, pool_id, oid, index, data))
        return out

    def evict_pageframe_lru(self) -> tuple[int, list[tuple], int, int]:
        """Unlink the LRU evictable ephemeral frame and mark it dying.

        Returns (node, buds, stored_bytes, zpages) where buds are
        (zbudref, client_id, pool_id, oid, index, None); node 0 if nothing is
        evictable. The caller flushes each bud's tmem entry (whose free is
        ignored while dying), then calls `finish_evict`.
        """
        n = self._lru_first_evictable(EPH)
        if not n:
            return 0, [], 0, 0
        self._unlink_live(n)
        self.state[n] = LIVE | DYING
        buds = self._read_buds(n, False)
        stored = self.sizes[n << 1] + self.sizes[(n << 1) | 1]
        self.freed_zbytes[EPH] += stored
        self.freed_zpages[EPH] += len(buds)
        self.pageframes[EPH] -= 1
        self.evicted_pageframes[EPH] += 1
        return n, buds, stored, len(buds)

    def finish_evict(self, n: int) -> int:
        """The evicted frame is clean; returns its arena frame number."""
        self.sizes[n << 1] = 0
        self.sizes[(n << 1) | 1] = 0
        self.state[n] = 0
        return n - NSENTINELS

    def make_zombie_lru(self, c: int, with_data: bool = True) -> list[tuple]:
        """Pull the LRU frame of class c off the bud lists onto the zombie list.

        Returns its 1–2 buds as (zbudref, client_id, pool_id, oid, index, data);
        the data stays valid and reachable through tmem, and the frame is freed
        once both zbuds have been freed. [] if no frame qualifies.
        """
        n = self._lru_first_evictable(c)
        if not n:
            return []
        self._unlink_live(n)
        self.state[n] = LIVE | ZOMBIE
        self.zombies[c][n] = None
        return self._read_buds(n, with_data)

    def revive_zombie(self, n: int) -> None:
        """Put a zombie frame whose data could not leave back on its lists (LRU tail)."""
        c = self.cls[n]
        del self.zombies[c][n]
        self.state[n] = LIVE
        s0, s1 = self.sizes[n << 1], self.sizes[(n << 1) | 1]
        if not (s0 and s1):
            self._ub_add(c, n, nchunks(s0 or s1))
        self._lru_add_tail(c, n)

    # ---- statistics -------------------------------------------------------------------

    def zbytes(self, c: int) -> int:
        """Stored bytes now, handles included."""
        return self.cumul_zbytes[c] - self.freed_zbytes[c]

    def zpages(self, c: int) -> int:
        return sum(self.cumul_chunk_counts[c]) - self.freed_zpages[c]

    def buddied_count(self, c: int) -> int:
        # the buddied list is implicit: every live frame that is neither unbuddied nor a zombie
        return self.pageframes[c] - self.unbuddied_count[c] - len(self.zombies[c])

    def stats(self) -> dict[str, int]:
        out = {}
        for c, name in enumerate(CLASS_NAMES):
            out[f"{name}_zbytes"] = self.zbytes(c)
            out[f"{name}_cumul_zbytes"] = self.cumul_zbytes[c]
            out[f"{name}_zpages"] = self.zpages(c)
            out[f"{name}_cumul_zpages"] = sum(self.cumul_chunk_counts[c])
            out[f"{name}_pageframes"] = self.pageframes[c]
            out[f"{name}_evicted_pageframes"] = self.evicted_pageframes[c]
            out[f"{name}_buddied_count"] = self.buddied_count(c)
            out[f"{name}_unbuddied_count"] = self.unbuddied_count[c]
        # The seed exported only pers_zombie_count and counted eph zombies into it
        # by mistake; both are kept apart here.
        out["pers_zombie_count"] = len(self.zombies[PERS])
        out["eph_zombie_count"] = len(self.zombies[EPH])
        return out

    # ---- checking (tests) -------------------------------------------------------------

    def check(self) -> None:
        """Assert the structural invariants over every frame and list."""
        on_ub: dict[int, int] = {}
        for c in (EPH, PERS):
            for i in range(1, NCHUNKS):
                h = (c << CHUNK_SHIFT) | i
                n = self.bnext[h]
                count = 0
                while n != h:
                    assert n not in on_ub, f"node {n} on two bud lists"
                    on_ub[n] = h
                    assert self.bprev[self.bnext[n]] == n
                    n = self.bnext[n]
                    count += 1
                assert bool(count) == bool(self.bitmap[c] & (1 << i)), f"bitmap wrong for class {c} list {i}"
        lru_live = {c: self.lru_frames(c) for c in (EPH, PERS)}
        for c in (EPH, PERS):
            assert len(set(lru_live[c])) == len(lru_live[c]), "frame twice on an LRU"
        counts = {"pf": [0, 0], "b": [0, 0], "u": [0, 0], "zp": [0, 0], "zb": [0, 0]}
        for n in range(NSENTINELS, self.nodes):
            st = self.state[n]
            s0, s1 = self.sizes[n << 1], self.sizes[(n << 1) | 1]
            if not st:
                assert s0 == 0 and s1 == 0 and n not in on_ub, f"free node {n} holds data or is listed"
                continue
            c = self.cls[n]
            assert not st & DYING, "dying frame outside eviction"
            assert s0 or s1, f"live frame {n} is empty"
            assert nchunks(s0) + nchunks(s1) <= NCHUNKS, f"frame {n} overfull"
            assert s0 <= MAX_SIZE and s1 <= MAX_SIZE
            counts["pf"][c] += 1
            counts["zp"][c] += (s0 > 0) + (s1 > 0)
            counts["zb"][c] += s0 + s1
            if st & ZOMBIE:
                assert n in self.zombies[c] and n not in on_ub and n not in lru_live[c]
            elif s0 and s1:
                counts["b"][c] += 1
                assert n not in on_ub and n in lru_live[c]
            else:
                counts["u"][c] += 1
                want = (c << CHUNK_SHIFT) | nchunks(s0 or s1)
                assert on_ub.get(n) == want, f"frame {n} on list {on_ub.get(n)}, want {want}"
                assert n in lru_live[c]
        for c in (EPH, PERS):
            assert counts["pf"][c] == self.pageframes[c]
            assert counts["b"][c] == self.buddied_count(c)
            assert counts["u"][c] == self.unbuddied_count[c]
            assert counts["zp"][c] == self.zpages(c)
            assert counts["zb"][c] == self.zbytes(c)
            assert len(lru_live[c]) + len(self.zombies[c]) == self.pageframes[c]
