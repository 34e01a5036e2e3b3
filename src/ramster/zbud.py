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
- unbuddied[1..63]: one array per chunk count, used as a stack of the
  zbudrefs of the frames' single zbuds (the seed's list_add + first-entry take
  is LIFO too), with each frame's position in `ubpos` so removal from the
  middle is O(1) by moving the last entry into the hole; plus a bitmap of
  non-empty stacks so match_prep finds the best fit in O(1).
- buddied: implicit. Nothing walks it, so a count is all it needs.
- LRU: an append-only queue of node ids with a per-frame stamp; an entry is live
  only while `stamp[n]` names its position, so "move to the tail" is one append
  and removal is one store. Stale entries are skipped at the head and the queue
  is compacted when they outnumber the live ones.
- zombie: a dict used as an ordered set (rare: remotify and writeback only).
- the codec byte: a page recompressed with a second codec says so in a byte
  of its handle (HANDLE), not in any array: only recompression, remotify and
  a get whose codec refused the payload read it (`codec`), and a put writes 0
  with the rest of the handle for nothing. Recompression moves a smaller
  payload into a half-full frame without making that frame recent
  (`match_cold`), or shrinks it where it is (`rewrite`).
- idle (zram's `echo all > idle`): `idle_mark[c]` is the LRU position that
  was next when the frames were marked. Every put and touch re-stamps its
  frame at the tail, so a frame is idle while its stamp is below the mark
  and no get has set its byte in `seen` since: the put path pays nothing,
  and a get pays one store only while a mark is in force. Compaction
  renumbers the stamps and moves the mark with them, so the order holds.

This allocator is single-threaded: the seed's try-locks become plain checks.
Element access to an array costs CPython about twice a list's, so the put path
touches as few of them as it can: class and state share one byte, and a free
frame is all zeroes, so a new frame writes only what differs.

The allocator is one file of about 700 lines on purpose: the lists, the LRU
and its idle mark, the zombie set, the byte of class and state, and the
moves recompression makes (match_cold, rewrite, create_cold, which keep the
LRU order a put would change) must change together, and `check()` states
their invariants in one place.
"""
from __future__ import annotations

import struct
from array import array
from .units import PAGE_SHIFT, PAGE_SIZE

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

# frame state byte: state bits, and the class in bit 3
LIVE = 1
ZOMBIE = 2
DYING = 4
CLASS_SHIFT = 3

# oid (24 bytes, little-endian: oid[0] first), index u32, pool_id u8, codec u8, client_id u16
HANDLE = struct.Struct("<24sIBBH")
# the same bytes written as oid + one u64 "tag" = index | pool_id << 32 | codec << 40 | client_id << 48
_pack_handle = struct.Struct("<24sQ").pack_into
# where the codec byte is in a handle: which format the payload is in, 0 for the
# node's own codec (zcache_recompress.py gives the other values their meaning)
CODEC_OFFSET = 29
CODEC_SHIFT = 40
# the codec byte of a page recompression looked at and left in the node's codec
TRIED = 0xFF


_unpack_handle = HANDLE.unpack_from
_unpack_tag = struct.Struct("<24sQ").unpack


def handle_tag(client_id: int, pool_id: int, index: int) -> int:
    return index | pool_id << 32 | client_id << 48


def nchunks(stored_size: int) -> int:
    return (stored_size + CHUNK_SIZE - 1) >> CHUNK_SHIFT


class Zbud:
    """The zbud lists and metadata for every frame of one arena."""

    SEEN_SHIFT = 1  # a get of zbudref p marks seen[p >> 1], its frame

    def __init__(self, buf: memoryview, nframes: int):
        self.buf = buf
        self._base = NSENTINELS << PAGE_SHIFT  # byte offset of node n is (n << 12) - _base
        self.sizes = array("H")  # stored size of zbudref p is sizes[p]; 0 = empty slot
        self.state = bytearray()  # LIVE/ZOMBIE/DYING | class << CLASS_SHIFT; 0 = free
        self.unevictable = bytearray()
        self.ubpos = array("i")  # position of a frame's zbudref in its unbuddied stack
        self.stamp = array("q")
        self.seen = bytearray()  # 1: a page of the frame was read since the idle mark
        self.nodes = 0
        self._grow(NSENTINELS + nframes)
        self.bitmap = [0, 0]  # bit i set: unbuddied[i] of that class is not empty
        self.ub = [[array("i") for _ in range(NCHUNKS)] for _ in (EPH, PERS)]
        self.lru = [array("i"), array("i")]
        self.lru_head = [0, 0]  # index of the first possibly-live entry
        self.lru_base = [0, 0]  # absolute position of lru[c][0]
        self.zombies: list[dict[int, None]] = [{}, {}]
        self.idle_mark = [0, 0]  # frames stamped below it (and not seen) are idle
        # statistics (SPEC §3.9), indexed by class
        # Only cumulative and freed totals move on the hot paths; the current
        # zbytes/zpages are their difference (see zbytes()/zpages()).
        self.cumul_zbytes = [0, 0]  # handles included
        self.freed_zbytes = [0, 0]
        self.freed_zpages = [0, 0]
        self.pageframes = [0, 0]
        self.evicted_pageframes = [0, 0]
        self.cumul_zpages = [0, 0]

    # ---- sizing -------------------------------------------------------------

    def _grow(self, nodes: int) -> None:
        extra = nodes - self.nodes
        if extra <= 0:
            return
        self.sizes.frombytes(bytes(4 * extra))
        self.state.extend(bytes(extra))
        self.unevictable.extend(bytes(extra))
        self.ubpos.frombytes(bytes(4 * extra))
        self.stamp.frombytes(b"\xff" * (8 * extra))  # -1: not on an LRU
        self.seen.extend(bytes(extra))
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

    def cls(self, n: int) -> int:
        return self.state[n] >> CLASS_SHIFT

    def _ub_add(self, c: int, p: int, nch: int) -> None:
        """Push zbudref p, the single zbud of its frame, on unbuddied[nch]."""
        stack = self.ub[c][nch]
        self.ubpos[p >> 1] = len(stack)
        stack.append(p)
        self.bitmap[c] |= 1 << nch

    def _ub_del(self, n: int, nch: int) -> None:
        c = self.state[n] >> CLASS_SHIFT
        stack = self.ub[c][nch]
        last = stack.pop()
        if last >> 1 != n:
            i = self.ubpos[n]
            stack[i] = last
            self.ubpos[last >> 1] = i
        if not stack:
            self.bitmap[c] ^= 1 << nch

    def unbuddied_count(self, c: int) -> int:
        return sum(map(len, self.ub[c]))

    # ---- LRU ------------------------------------------------------------------

    def _lru_add_tail(self, c: int, n: int) -> None:
        q = self.lru[c]
        k = len(q)
        self.stamp[n] = self.lru_base[c] + k
        q.append(n)
        if not k & 4095:
            self._lru_maybe_compact(c, q)

    def _lru_maybe_compact(self, c: int, q: array) -> None:
        # called every 4096 appends: keeps dead entries below about half the queue
        if len(q) > 2 * self.pageframes[c] + 4096:
            self._lru_compact(c)

    def _lru_compact(self, c: int) -> None:
        q = self.lru[c]
        base = self.lru_base[c]
        stamp, state, want = self.stamp, self.state, LIVE | c << CLASS_SHIFT
        live = array("i", (n for i, n in enumerate(q) if stamp[n] == base + i and state[n] == want))
        newbase = base + len(q)  # positions are never reused, so old stamps stay stale
        # the idle mark keeps its place in the order: after the live frames stamped below it
        cut = min(len(q), self.idle_mark[c] - base)
        self.idle_mark[c] = newbase + sum(1 for i in range(self.lru_head[c], cut)
                                          if stamp[q[i]] == base + i and state[q[i]] == want)
        for i, n in enumerate(live):
            stamp[n] = newbase + i
        self.lru[c] = live
        self.lru_base[c] = newbase
        self.lru_head[c] = 0

    def _lru_first_evictable(self, c: int) -> int:
        """Walk the LRU from the head; unlink and return the first evictable frame, or 0."""
        q = self.lru[c]
        base = self.lru_base[c]
        stamp, state, unevictable = self.stamp, self.state, self.unevictable
        want = LIVE | c << CLASS_SHIFT
        i = self.lru_head[c]
        head = i
        end = len(q)
        while i < end:
            n = q[i]
            if stamp[n] == base + i and state[n] == want:
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

    def touch(self, p: int) -> None:
        """The page of zbudref p was read and kept (a cache hit): its frame moves to
        the LRU tail, unless it is off the LRU (a zombie) and must stay so."""
        n = p >> 1
        st = self.state[n]
        if st & LIVE and not st & (ZOMBIE | DYING):
            self._lru_add_tail(st >> CLASS_SHIFT, n)

    def lru_frames(self, c: int) -> list[int]:
        """Live frames of class c, LRU end first (for tests and tools)."""
        q = self.lru[c]
        base = self.lru_base[c]
        want = LIVE | c << CLASS_SHIFT
        return [n for i, n in enumerate(q) if self.stamp[n] == base + i and self.state[n] == want]

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
        o, index, pool_id, _, client_id = _unpack_handle(self.buf, self._offset(p))
        return client_id, pool_id, int.from_bytes(o, "little"), index

    def codec(self, p: int) -> int:
        """The codec byte of zbudref p's handle (see CODEC_OFFSET)."""
        return self.buf[self._offset(p) + CODEC_OFFSET]

    def set_codec(self, p: int, k: int) -> None:
        self.buf[self._offset(p) + CODEC_OFFSET] = k

    def copy_to_zbud(self, p: int, data: bytes) -> None:
        """Fill a zbud reserved with cdata=None (RAMster repatriation)."""
        off = self._offset(p) + HANDLE_SIZE
        self.buf[off : off + len(data)] = data

    def is_dying(self, p: int) -> bool:
        return bool(self.state[p >> 1] & DYING)

    # the unit eviction, zombies and the LRU move as one (zcache_remote's `taken`): the frame

    @staticmethod
    def unit_of(p: int) -> int:
        return p >> 1

    @staticmethod
    def unit_frames(n: int) -> int:
        return 1

    def is_taken(self, p: int) -> bool:
        """Whether zbudref p's frame is a zombie (off its LRU for remotify or writeback)."""
        return bool(self.state[p >> 1] & ZOMBIE)

    def is_zombie(self, n: int) -> bool:
        return bool(self.state[n] & ZOMBIE)

    def stored_size(self, p: int) -> int:
        """Bytes zbudref p takes, its handle included; 0 once freed."""
        return self.sizes[p]

    def kind_of(self, p: int) -> int:
        """EPH or PERS: the class of zbudref p's frame."""
        return self.state[p >> 1] >> CLASS_SHIFT

    # ---- create -----------------------------------------------------------------

    def match_prep(self, c: int, stored: int, cdata, oidb: bytes, tag: int) -> int:
        """Put a zbud of `stored` bytes (handle included) into a half-full frame; 0 if none fits.

        Best fit by fullness: unbuddied[64 - nchunks] first, i.e. the frames whose
        zbud leaves exactly enough room, then ever emptier ones. The handle written
        in front is the oid bytes and `tag` (see handle_tag).
        """
        nch = (stored + CHUNK_SIZE - 1) >> CHUNK_SHIFT
        m = self.bitmap[c] & ((2 << (NCHUNKS - nch)) - 2)
        if not m:
            return 0
        i = m.bit_length() - 1
        stack = self.ub[c][i]
        p = stack.pop() ^ 1  # the empty slot of that frame
        n = p >> 1
        if not stack:
            self.bitmap[c] ^= 1 << i
        # a frame goes to the LRU tail when its second zbud arrives (SPEC §3.4)
        q = self.lru[c]
        k = len(q)
        self.stamp[n] = self.lru_base[c] + k
        q.append(n)
        if not k & 4095:
            self._lru_maybe_compact(c, q)
        off = (n << PAGE_SHIFT) - self._base
        if p & 1:
            off += PAGE_SIZE - (nch << CHUNK_SHIFT)
        self.sizes[p] = stored
        buf = self.buf
        _pack_handle(buf, off, oidb, tag)
        if cdata is not None:  # None: reserve the space only, the data comes later
            buf[off + HANDLE_SIZE : off + stored] = cdata
        self.cumul_zbytes[c] += stored
        self.cumul_zpages[c] += 1
        return p

    def create_prep(self, c: int, frame: int, stored: int, cdata, oidb: bytes, tag: int) -> int:
        """Turn the empty arena frame `frame` into a zbud frame holding one zbud in slot 0."""
        if stored > MAX_SIZE:
            return 0
        n = frame + NSENTINELS
        if n >= self.nodes:
            self._grow(max(n + 1, 2 * self.nodes))
        p = n << 1
        # a free frame's sizes, state and pins are all zero (free_and_delist, finish_evict)
        self.sizes[p] = stored
        self.state[n] = LIVE | c << CLASS_SHIFT
        # push on unbuddied[nchunks] (inlined: this is half of all puts)
        nch = (stored + CHUNK_SIZE - 1) >> CHUNK_SHIFT
        stack = self.ub[c][nch]
        self.ubpos[n] = len(stack)
        stack.append(p)
        self.bitmap[c] |= 1 << nch
        self.pageframes[c] += 1
        q = self.lru[c]
        k = len(q)
        self.stamp[n] = self.lru_base[c] + k
        q.append(n)
        if not k & 4095:
            self._lru_maybe_compact(c, q)
        off = (n << PAGE_SHIFT) - self._base
        buf = self.buf
        _pack_handle(buf, off, oidb, tag)
        if cdata is not None:
            buf[off + HANDLE_SIZE : off + stored] = cdata
        self.cumul_zbytes[c] += stored
        self.cumul_zpages[c] += 1
        return p

    def match_cold(self, c: int, stored: int, cdata, handle: bytes) -> int:
        """match_prep for a page that moves rather than arrives (recompression): the
        frame it joins keeps its place on the LRU, and `handle` is the 32 bytes to
        write in front, as they are. 0 if no half-full frame has room."""
        nch = (stored + CHUNK_SIZE - 1) >> CHUNK_SHIFT
        m = self.bitmap[c] & ((2 << (NCHUNKS - nch)) - 2)
        if not m:
            return 0
        i = m.bit_length() - 1
        stack = self.ub[c][i]
        p = stack.pop() ^ 1
        if not stack:
            self.bitmap[c] ^= 1 << i
        off = ((p >> 1) << PAGE_SHIFT) - self._base
        if p & 1:
            off += PAGE_SIZE - (nch << CHUNK_SHIFT)
        self.sizes[p] = stored
        self.buf[off : off + HANDLE_SIZE] = handle
        self.buf[off + HANDLE_SIZE : off + stored] = cdata
        self.cumul_zbytes[c] += stored
        self.cumul_zpages[c] += 1
        return p

    def rewrite(self, p: int, cdata, handle: bytes) -> int:
        """Replace the payload of zbudref p by a smaller one where it is, with
        `handle` in front (recompression, when no other frame has room). The frame
        keeps its LRU place; a single zbud moves to the unbuddied list of its new
        size. Returns the bytes freed."""
        n = p >> 1
        c = self.state[n] >> CLASS_SHIFT
        old = self.sizes[p]
        stored = len(cdata) + HANDLE_SIZE
        single = not self.sizes[p ^ 1] and not self.state[n] & ZOMBIE
        if single:
            self._ub_del(n, nchunks(old))
        self.sizes[p] = stored
        off = self._offset(p)  # buddy 1 ends at the frame's end, so it starts later now
        self.buf[off : off + HANDLE_SIZE] = handle
        self.buf[off + HANDLE_SIZE : off + stored] = cdata
        if single:
            self._ub_add(c, p, nchunks(stored))
        self.freed_zbytes[c] += old - stored
        return old - stored

    def create_cold(self, c: int, frame: int, cdata, handle: bytes) -> int:
        """create_prep for a page that moves (a huge page recompressed in its own
        frame): the frame goes to the LRU head, the coldest place, not the tail."""
        stored = len(cdata) + HANDLE_SIZE
        oid, tag = _unpack_tag(handle)
        p = self.create_prep(c, frame, stored, cdata, oid, tag)
        n = p >> 1
        self.stamp[n] = -1  # the entry create_prep appended goes stale
        self.seen[n] = 0
        head = self.lru_head[c]
        if not head:
            if not self.lru_base[c]:  # positions must stay >= 0: renumber to make room
                self._lru_compact(c)
            self.lru_base[c] -= 1
            self.lru[c].insert(0, n)
        else:
            head -= 1
            self.lru[c][head] = n
            self.lru_head[c] = head
        self.stamp[n] = self.lru_base[c] + self.lru_head[c]
        return p

    def handle_bytes(self, p: int) -> bytes:
        off = self._offset(p)
        return bytes(self.buf[off : off + HANDLE_SIZE])

    def pin(self, p: int) -> None:
        """Make the frame of zbudref p unevictable until `create_finish(p)`: for a zbud
        reserved with cdata=None whose data arrives later (RAMster repatriation)."""
        self.unevictable[p >> 1] += 1

    def create_finish(self, p: int) -> None:
        self.unevictable[p >> 1] -= 1

    # ---- free ---------------------------------------------------------------------

    def free_and_delist(self, p: int) -> int:
        """Free zbudref p. Returns its stored size; negated when the frame became empty
        (the caller frees frame `(p >> 1) - NSENTINELS`). Never called for a dying
        frame's zbuds: the evictor unlinks them and accounts for the frame as a whole."""
        n = p >> 1
        st = self.state[n]
        sizes = self.sizes
        s = sizes[p]
        sizes[p] = 0
        other = sizes[p ^ 1]
        c = st >> CLASS_SHIFT
        self.freed_zbytes[c] += s
        self.freed_zpages[c] += 1
        if other:
            if not st & ZOMBIE:  # a zombie stays off the bud lists until it is empty
                self._ub_add(c, p ^ 1, (other + CHUNK_SIZE - 1) >> CHUNK_SHIFT)
            return s
        if st & ZOMBIE:
            del self.zombies[c][n]
        else:
            self._ub_del(n, (s + CHUNK_SIZE - 1) >> CHUNK_SHIFT)
            self.stamp[n] = -1
        self.state[n] = 0
        self.pageframes[c] -= 1
        return -s

    def _unlink_live(self, n: int) -> None:
        """Take a LIVE frame off its bud list (the LRU entry is already dead)."""
        s0, s1 = self.sizes[n << 1], self.sizes[(n << 1) | 1]
        if not (s0 and s1):
            self._ub_del(n, nchunks(s0 or s1))

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
        evictable. The caller unlinks each bud's tmem entry without freeing it
        (this accounts for them), then calls `finish_evict`.
        """
        n = self._lru_first_evictable(EPH)
        if not n:
            return 0, [], 0, 0
        return self._evict(n)

    def evict_pageframe(self, n: int) -> tuple[int, list[tuple], int, int]:
        """evict_pageframe_lru for the ephemeral frame n (an idle one), wherever it is on the LRU."""
        self.stamp[n] = -1
        return self._evict(n)

    def _evict(self, n: int) -> tuple[int, list[tuple], int, int]:
        self._unlink_live(n)
        self.state[n] |= DYING
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
        return self._zombify(c, n, with_data)

    def make_zombie(self, n: int, with_data: bool = True) -> list[tuple]:
        """make_zombie_lru for frame n (an idle one), wherever it is on the LRU."""
        self.stamp[n] = -1
        return self._zombify(self.state[n] >> CLASS_SHIFT, n, with_data)

    def _zombify(self, c: int, n: int, with_data: bool) -> list[tuple]:
        self._unlink_live(n)
        self.state[n] |= ZOMBIE
        self.zombies[c][n] = None
        return self._read_buds(n, with_data)

    def revive_zombie(self, n: int) -> None:
        """Put a zombie frame whose data could not leave back on its lists (LRU tail)."""
        c = self.state[n] >> CLASS_SHIFT
        del self.zombies[c][n]
        self.state[n] = LIVE | c << CLASS_SHIFT
        s0, s1 = self.sizes[n << 1], self.sizes[(n << 1) | 1]
        if not (s0 and s1):
            self._ub_add(c, (n << 1) | (not s0), nchunks(s0 or s1))
        self._lru_add_tail(c, n)

    # ---- idleness -------------------------------------------------------------------------

    def mark_idle(self) -> int:
        """Mark every frame now on an LRU idle; returns the pages they hold."""
        self.seen[:] = bytes(len(self.seen))
        for c in (EPH, PERS):
            self.idle_mark[c] = self.lru_base[c] + len(self.lru[c])
        return sum(self.frame_zpages(n) for c in (EPH, PERS) for n in self.idle_frames(c))

    def idle_and_evictable(self, n: int) -> bool:
        """Whether frame n is still idle (on its LRU, untouched since the mark) and not
        pinned, so it may leave: checked again for each frame as a writeback goes."""
        st = self.state[n]
        c = st >> CLASS_SHIFT
        return (st == LIVE | c << CLASS_SHIFT and 0 <= self.stamp[n] < self.idle_mark[c]
                and not self.seen[n] and not self.unevictable[n])

    def idle_frames(self, c: int) -> list[int]:
        """The idle frames of class c, least recently used first: they are the LRU's
        live entries below the mark, so the walk stops there."""
        q = self.lru[c]
        base = self.lru_base[c]
        stamp, state, seen = self.stamp, self.state, self.seen
        want = LIVE | c << CLASS_SHIFT
        out = []
        for i in range(self.lru_head[c], min(len(q), self.idle_mark[c] - base)):
            n = q[i]
            if stamp[n] == base + i and state[n] == want and not seen[n]:
                out.append(n)
        return out

    def frame_zpages(self, n: int) -> int:
        return (self.sizes[n << 1] > 0) + (self.sizes[(n << 1) | 1] > 0)

    # ---- statistics -------------------------------------------------------------------

    def zbytes(self, c: int) -> int:
        """Stored bytes now, handles included."""
        return self.cumul_zbytes[c] - self.freed_zbytes[c]

    def zpages(self, c: int) -> int:
        return self.cumul_zpages[c] - self.freed_zpages[c]

    def buddied_count(self, c: int) -> int:
        # the buddied list is implicit: every live frame that is neither unbuddied nor a zombie
        return self.pageframes[c] - self.unbuddied_count(c) - len(self.zombies[c])

    def stats(self) -> dict[str, int]:
        out = {}
        for c, name in enumerate(CLASS_NAMES):
            out[f"{name}_zbytes"] = self.zbytes(c)
            out[f"{name}_cumul_zbytes"] = self.cumul_zbytes[c]
            out[f"{name}_zpages"] = self.zpages(c)
            out[f"{name}_cumul_zpages"] = self.cumul_zpages[c]
            out[f"{name}_pageframes"] = self.pageframes[c]
            out[f"{name}_evicted_pageframes"] = self.evicted_pageframes[c]
            out[f"{name}_buddied_count"] = self.buddied_count(c)
            out[f"{name}_unbuddied_count"] = self.unbuddied_count(c)
        # The seed exported only pers_zombie_count and counted eph zombies into it
        # by mistake; both are kept apart here.
        out["pers_zombie_count"] = len(self.zombies[PERS])
        out["eph_zombie_count"] = len(self.zombies[EPH])
        return out

    # ---- checking (tests) -------------------------------------------------------------

    def check(self) -> None:
        """Assert the structural invariants over every frame and list."""
        on_ub: dict[int, int] = {}  # node -> (class << 6) | nchunks of the stack it is on
        for c in (EPH, PERS):
            for i in range(1, NCHUNKS):
                stack = self.ub[c][i]
                for pos, p in enumerate(stack):
                    n = p >> 1
                    assert self.sizes[p] and not self.sizes[p ^ 1], f"ref {p} is not the frame's single zbud"
                    assert n not in on_ub, f"node {n} on two unbuddied stacks"
                    assert self.ubpos[n] == pos, f"node {n} position wrong"
                    on_ub[n] = (c << CHUNK_SHIFT) | i
                assert bool(stack) == bool(self.bitmap[c] & (1 << i)), f"bitmap wrong for class {c} list {i}"
            assert not self.ub[c][0] and not self.bitmap[c] & 1
        lru_live = {c: self.lru_frames(c) for c in (EPH, PERS)}
        for c in (EPH, PERS):
            assert len(set(lru_live[c])) == len(lru_live[c]), "frame twice on an LRU"
        counts = {"pf": [0, 0], "b": [0, 0], "u": [0, 0], "zp": [0, 0], "zb": [0, 0]}
        for n in range(NSENTINELS, self.nodes):
            st = self.state[n]
            s0, s1 = self.sizes[n << 1], self.sizes[(n << 1) | 1]
            if not st:
                assert s0 == 0 and s1 == 0 and not self.unevictable[n] and n not in on_ub, f"free node {n} not clean"
                continue
            c = st >> CLASS_SHIFT
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
            assert counts["u"][c] == self.unbuddied_count(c)
            assert counts["zp"][c] == self.zpages(c)
            assert counts["zb"][c] == self.zbytes(c)
            assert len(lru_live[c]) + len(self.zombies[c]) == self.pageframes[c]
