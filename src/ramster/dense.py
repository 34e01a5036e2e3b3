"""dense: a size-class allocator for compressed pages, zsmalloc's way, beside zbud.

zbud keeps at most two compressed pages in a frame, so a page that
compresses 4x still costs half a frame. Here every stored object (the same
32-byte handle zbud writes, then the payload) is rounded up to a multiple of
16 bytes and goes to the size class of that size. A class keeps its objects
in *zspages*: 1 to 8 arena frames seen as one run of bytes, cut into equal
slots, so an object may start in one frame and end in the next. The frames of
a zspage need not be adjacent in the arena; an object that crosses from one
to the next is written and read in two pieces (zsmalloc maps both pages and
copies for the same reason). The frame count of each class is the one of
1..8 that wastes least of the zspage, and neighbouring sizes whose zspages
would hold the same number of objects in the same frames are served by one
class (the larger size), as zsmalloc merges them.

Unlike zsmalloc's, a zspage grows: it starts with the frame its first slot
needs and takes the next frame only when the lowest free slot reaches past
its last one (`nfr[z]`, the frames it holds now). A class's newest zspage is
the one that is partly filled, and with whole zspages of up to 8 frames its
empty tail would cost every class in use about half a zspage: on 32 MiB of
held-out corpus pages, 0.443 frame bytes per original byte with 4-frame
zspages allocated whole, 0.422 with 8-frame ones that grow.

What is kept where:

- the pampd zcache stores in tmem for a dense page is a *handle* h > 0, an
  index into a handle table: `loc[h]` = zspage << 9 | slot and `hsize[h]`
  = the stored size (0: a free handle). Compaction moves an object by
  rewriting `loc[h]` alone, so tmem never learns that it moved.
- per zspage z (ids from 1, reused): `zframes[4z..4z+3]` its arena frames,
  `zcls`, `inuse`, the state byte (LIVE/ZOMBIE/DYING and the pool kind,
  laid out as zbud's), its LRU stamp, its place in its partial stack, and
  `slots[z]`, an array of the handle in each slot (0: free). The slot array
  is the only per-zspage Python object: a zspage is at least a frame.
- per pool kind (EPH, PERS) and class: a stack of the zspages with a free
  slot (`partial`), so a put fills the zspage on top; full zspages are on no
  list, which zsmalloc's fullness groups also only use to find room.
- per pool kind: an LRU of zspages, kept as zbud keeps its LRU of frames (an
  append-only queue, an entry live while the stamp names it): a zspage goes
  to the tail when an object is stored in it or read and kept. Eviction and
  writeback take the zspage at the head and all of its objects, so
  ouroboros still eats the least recently used ephemeral memory first, and
  a persistent put never evicts persistent objects (zcache asks only for
  EPH eviction). The zombie set is zbud's: a zspage taken off its lists for
  remotify or writeback, freed when its last object goes.
- idleness (zram's mark) is zbud's LRU stamp against a mark; "read since the
  mark" is one byte per handle (`seen[h]`; zcache's get stores to
  `seen[p >> SEEN_SHIFT]`, zbud's frame byte), so a zspage is idle while
  none of its objects' bytes is set.

Fragmentation: a free leaves a hole in its zspage. Every so many frees, at
the end of a recompression pass, and on `compact()`, each class whose
partial zspages together have room for a whole zspage's objects empties its
emptiest one into the fullest ones (zsmalloc's rule). At the end of a
recompression pass and on `compact()` (not every so many frees: it costs),
each partial zspage left also moves its highest objects down into its holes
and gives back the frames no object reaches (`_shrink`: with one partial
zspage in a class, the only way its holes come back). Zombie and dying
zspages are never partial, so compaction does not move objects that
remotify or writeback hold; a handle keeps its number when its object moves.

Frames: the allocator takes and gives back arena frames itself (it holds
the arena). When the arena has none for a put (match_prep says -1, or 0
when the class has no partial zspage), zcache gets one, evicting if it must,
and `grow_prep` makes it the next frame of the class's zspage or the first
of a new one; an evicted zspage gives its first frame back through
`finish_evict`, as zbud's does.
The allocator is single-threaded, as zbud.

It is one file of about 880 lines for zbud's reason: the class table, the
zspage arrays, the partial stacks, the LRU and its idle mark, the zombie set,
compaction and the moves recompression makes must change together, and `check()` states their invariants
in one place.
"""
from __future__ import annotations

import struct
from array import array

from .units import PAGE_SHIFT, PAGE_SIZE
from .zbud import CLASS_SHIFT, CODEC_OFFSET, DYING, EPH, HANDLE, HANDLE_SIZE, LIVE, PERS, ZOMBIE

ALIGN_SHIFT = 4
ALIGN = 1 << ALIGN_SHIFT
MIN_SIZE = HANDLE_SIZE + ALIGN
MAX_SIZE = 4032  # zbud's: the handle and a 4000-byte payload
MAX_ZSPAGE_FRAMES = 8  # zsmalloc's chain size since Linux 6.3
SLOT_BITS = 10  # 8 frames of 48-byte objects: 682 slots
SLOT_MASK = (1 << SLOT_BITS) - 1
COMPACT_EVERY = 1024  # frees between fragmentation checks

# zbud's header, codec byte and all (zbud.HANDLE)
_pack_handle = struct.Struct("<24sQ").pack_into
_unpack_handle = HANDLE.unpack_from


def _class_table() -> tuple[list[int], list[int], list[int], array]:
    """Class sizes, frames per zspage, objects per zspage, and size/16 -> class."""
    geo = []
    for s in range(MIN_SIZE, MAX_SIZE + 1, ALIGN):
        best = (-1.0, 0, 0)
        for k in range(1, MAX_ZSPAGE_FRAMES + 1):
            n = (k << PAGE_SHIFT) // s
            used = n * s / (k << PAGE_SHIFT)
            if used > best[0] + 1e-9:  # a tie keeps the smaller zspage
                best = (used, k, n)
        geo.append((s, best[1], best[2]))
    sizes: list[int] = []
    frames: list[int] = []
    objs: list[int] = []
    owner = {}
    for s, k, n in reversed(geo):  # largest first: a smaller size joins the class above it
        if not (sizes and frames[-1] == k and objs[-1] == n):
            sizes.append(s)
            frames.append(k)
            objs.append(n)
        owner[s] = len(sizes) - 1
    last = len(sizes) - 1
    cls_of = array("H", bytes(2 * ((MAX_SIZE >> ALIGN_SHIFT) + 1)))
    for u in range(len(cls_of)):
        s = max(MIN_SIZE, u << ALIGN_SHIFT)
        cls_of[u] = last - owner[s]
    return sizes[::-1], frames[::-1], objs[::-1], cls_of


CLASS_SIZE, CLASS_FRAMES, CLASS_OBJS, _CLS_OF = _class_table()
NCLASSES = len(CLASS_SIZE)


def class_of(stored: int) -> int:
    return _CLS_OF[(stored + ALIGN - 1) >> ALIGN_SHIFT]


class Dense:
    """Size classes over zspages of arena frames, behind zbud's interface to zcache."""

    name = "dense"
    SEEN_SHIFT = 0  # a get of handle h marks seen[h]

    def __init__(self, arena, nframes: int = 0):
        self.arena = arena
        self.buf = arena.buf
        # handles
        self.loc = array("q", [0])
        self.hsize = array("H", [0])
        self.seen = bytearray(1)  # 1: handle h was read since the idle mark
        self._free_h = array("i")
        # zspages (id 0 is never used)
        self.zframes = array("i", [-1] * MAX_ZSPAGE_FRAMES)
        self.nfr = bytearray(1)  # frames a zspage holds now (it grows to its class's count)
        self.zcls = array("H", [0])
        self.inuse = array("H", [0])
        self.state = bytearray(1)
        self.stamp = array("q", [-1])
        self.pos = array("i", [-1])
        self.slots: list[array | None] = [None]
        self._free_z = array("i")
        self.partial = [[array("i") for _ in range(NCLASSES)] for _ in (EPH, PERS)]
        self.lru = [array("i"), array("i")]
        self.lru_head = [0, 0]
        self.lru_base = [0, 0]
        self.zombies: list[dict[int, None]] = [{}, {}]
        self.idle_mark = [0, 0]
        # statistics, by pool kind; zbytes and zpages now are cumulative minus freed
        self.cumul_zbytes = [0, 0]
        self.freed_zbytes = [0, 0]
        self.cumul_zpages = [0, 0]
        self.freed_zpages = [0, 0]
        self.pageframes = [0, 0]
        self.pageframes_max = [0, 0]  # zcache's own gauge (a zspage grows inside match_prep)
        # frames of the class held beside the allocator (the cold log's), counted in that gauge
        self.extra_frames = [0, 0]
        self.zspages = [0, 0]
        self.evicted_pageframes = [0, 0]
        self.compactions = 0
        self.objects_moved = 0
        self.frames_compacted = 0
        self.compact_starved = False
        self._frees = 0

    # ---- growth --------------------------------------------------------------------------

    def _grow_handles(self) -> None:
        old = len(self.hsize)
        extra = max(1024, old)
        self.loc.frombytes(bytes(8 * extra))
        self.hsize.frombytes(bytes(2 * extra))
        self.seen.extend(bytes(extra))
        self._free_h.extend(range(old + extra - 1, old - 1, -1))

    def _new_zspage(self) -> int:
        if not self._free_z:
            old = len(self.zcls)
            extra = max(256, old)
            self.zframes.frombytes(b"\xff" * (4 * MAX_ZSPAGE_FRAMES * extra))
            self.nfr.extend(bytes(extra))
            self.zcls.frombytes(bytes(2 * extra))
            self.inuse.frombytes(bytes(2 * extra))
            self.state.extend(bytes(extra))
            self.stamp.frombytes(b"\xff" * (8 * extra))
            self.pos.frombytes(b"\xff" * (4 * extra))
            self.slots.extend([None] * extra)
            self._free_z.extend(range(old + extra - 1, old - 1, -1))
        return self._free_z.pop()

    def ensure_frames(self, nframes: int) -> None:
        """zbud's sizing call: nothing here grows with the budget."""

    # ---- geometry --------------------------------------------------------------------------

    @staticmethod
    def frames_for(stored: int) -> int:
        """Frames of a new zspage for an object of `stored` bytes (handle included):
        the one its first slot needs; the zspage grows a frame at a time."""
        return 1

    def _grow(self, c: int, z: int, f: int = -1) -> bool:
        """Give zspage z its next frame (`f`, else one from the arena); False if none."""
        if f < 0:
            f = self.arena.alloc()
            if f < 0:
                return False
        k = self.nfr[z]
        self.zframes[z * MAX_ZSPAGE_FRAMES + k] = f
        self.nfr[z] = k + 1
        n = self.pageframes[c] + 1
        self.pageframes[c] = n
        if n + self.extra_frames[c] > self.pageframes_max[c]:
            self.pageframes_max[c] = n + self.extra_frames[c]
        return True

    def _start(self, z: int, o: int) -> tuple[int, int]:
        """(arena byte offset, bytes left in that frame) of byte o of zspage z."""
        f = self.zframes[z * MAX_ZSPAGE_FRAMES + (o >> PAGE_SHIFT)]
        off = o & (PAGE_SIZE - 1)
        return (f << PAGE_SHIFT) + off, PAGE_SIZE - off

    def _read(self, z: int, o: int, n: int) -> bytes:
        start, room = self._start(z, o)
        if n <= room:
            return bytes(self.buf[start:start + n])
        nxt = self.zframes[z * MAX_ZSPAGE_FRAMES + (o >> PAGE_SHIFT) + 1] << PAGE_SHIFT
        return bytes(self.buf[start:start + room]) + bytes(self.buf[nxt:nxt + n - room])

    def _write(self, z: int, o: int, data) -> None:
        n = len(data)
        start, room = self._start(z, o)
        if n <= room:
            self.buf[start:start + n] = data
            return
        nxt = self.zframes[z * MAX_ZSPAGE_FRAMES + (o >> PAGE_SHIFT) + 1] << PAGE_SHIFT
        mv = memoryview(data)
        self.buf[start:start + room] = mv[:room]
        self.buf[nxt:nxt + n - room] = mv[room:]

    def _offset(self, h: int) -> tuple[int, int]:
        loc = self.loc[h]
        z = loc >> SLOT_BITS
        return z, (loc & SLOT_MASK) * CLASS_SIZE[self.zcls[z]]

    # ---- data ------------------------------------------------------------------------------

    def payload(self, h: int):
        """The compressed payload of handle h: a view into the arena, or bytes when the
        object crosses from one frame of its zspage to the next."""
        loc = self.loc[h]
        z = loc >> SLOT_BITS
        o = (loc & SLOT_MASK) * CLASS_SIZE[self.zcls[z]]
        s = self.hsize[h]
        off = o & (PAGE_SIZE - 1)
        if off + s <= PAGE_SIZE:
            start = (self.zframes[z * MAX_ZSPAGE_FRAMES + (o >> PAGE_SHIFT)] << PAGE_SHIFT) + off
            return self.buf[start + HANDLE_SIZE:start + s]
        # the payload crosses into the next frame (or only its header does): one copy
        # of the two pieces, joined from views (slices of bytes would copy twice more)
        o += HANDLE_SIZE
        s -= HANDLE_SIZE
        base = z * MAX_ZSPAGE_FRAMES + (o >> PAGE_SHIFT)
        off = o & (PAGE_SIZE - 1)
        start = (self.zframes[base] << PAGE_SHIFT) + off
        room = PAGE_SIZE - off
        if s <= room:  # only the header crossed
            return self.buf[start:start + s]
        nxt = self.zframes[base + 1] << PAGE_SHIFT
        buf = self.buf
        return b"".join((buf[start:start + room], buf[nxt:nxt + s - room]))

    def payload_size(self, h: int) -> int:
        return self.hsize[h] - HANDLE_SIZE

    def handle(self, h: int) -> tuple[int, int, int, int]:
        """(client_id, pool_id, oid, index) read back from the object's header."""
        z, o = self._offset(h)
        o_, index, pool_id, _, client_id = _unpack_handle(self._read(z, o, HANDLE_SIZE))
        return client_id, pool_id, int.from_bytes(o_, "little"), index

    def unit_of(self, h: int) -> int:
        """The zspage of handle h: what eviction, zombies and the LRU move as one."""
        return self.loc[h] >> SLOT_BITS

    def unit_frames(self, z: int) -> int:
        """Frames of zspage z."""
        return self.nfr[z]

    def is_taken(self, h: int) -> bool:
        return bool(self.state[self.loc[h] >> SLOT_BITS] & ZOMBIE)

    def is_zombie(self, z: int) -> bool:
        return bool(self.state[z] & ZOMBIE)

    def stored_size(self, h: int) -> int:
        """Bytes handle h's object takes, its header included; 0 once freed."""
        return self.hsize[h]

    def kind_of(self, h: int) -> int:
        return self.state[self.loc[h] >> SLOT_BITS] >> CLASS_SHIFT

    def codec(self, h: int) -> int:
        """The codec byte of the object's header (zbud.CODEC_OFFSET): 0, the node's codec;
        zcache_recompress.py gives the other values their meaning."""
        z, o = self._offset(h)
        return self._read(z, o + CODEC_OFFSET, 1)[0]

    # ---- recompression: an object that moves to a smaller class (zcache_recompress.py) ---------

    def set_codec(self, h: int, k: int) -> None:
        z, o = self._offset(h)
        self._write(z, o + CODEC_OFFSET, bytes((k,)))

    def handle_bytes(self, h: int) -> bytes:
        z, o = self._offset(h)
        return self._read(z, o, HANDLE_SIZE)

    @staticmethod
    def size_class(stored: int) -> int:
        """The class of an object of `stored` bytes: a smaller one costs less memory."""
        return _CLS_OF[(stored + ALIGN - 1) >> ALIGN_SHIFT]

    def match_cold(self, c: int, stored: int, cdata, handle: bytes) -> int:
        """match_prep for an object that moves rather than arrives: the zspage it joins
        keeps its LRU place (a cold page must not make it recent), and `handle` is
        the header, as it is. 0 when no zspage of the class has a free slot."""
        stack = self.partial[c][_CLS_OF[(stored + ALIGN - 1) >> ALIGN_SHIFT]]
        if not stack:
            return 0
        z = stack[-1]
        old, base = self.stamp[z], self.lru_base[c]
        h = self.match_prep(c, stored, None, bytes(24), 0)
        if h < 0:  # the zspage needs a frame the arena does not have
            return 0
        if self.lru_base[c] == base:  # else the queue was renumbered: z stays at the tail
            self.stamp[z] = old  # the entry match_prep appended goes stale
        z, o = self._offset(h)
        self._write(z, o, handle + bytes(cdata))
        return h

    def create_cold(self, c: int, frames: list[int], stored: int, cdata, handle: bytes) -> int:
        """create_zspage for an object that moves: the new zspage goes to the LRU head,
        the coldest place, not the tail."""
        h = self.create_zspage(c, frames, stored, None, bytes(24), 0)
        z, o = self._offset(h)
        self._write(z, o, handle + bytes(cdata))
        self.stamp[z] = -1  # the entry create_zspage appended goes stale
        head = self.lru_head[c]
        if not head:
            if not self.lru_base[c]:  # positions must stay >= 0: renumber to make room
                self._lru_compact(c)
            self.lru_base[c] -= 1
            self.lru[c].insert(0, z)
        else:
            head -= 1
            self.lru[c][head] = z
            self.lru_head[c] = head
        self.stamp[z] = self.lru_base[c] + self.lru_head[c]
        return h

    # ---- create --------------------------------------------------------------------------

    def match_prep(self, c: int, stored: int, cdata, oidb: bytes, tag: int) -> int:
        """Store an object in a zspage of its class with a free slot: its handle; 0
        when the class has none, -1 when the slot needs a frame the arena cannot
        give (zcache then gets a frame, by reclaim if it must, for `grow_prep`)."""
        ci = _CLS_OF[(stored + ALIGN - 1) >> ALIGN_SHIFT]
        stack = self.partial[c][ci]
        if not stack:
            return 0
        z = stack[-1]
        slots = self.slots[z]
        j = slots.index(0)
        if (j + 1) * CLASS_SIZE[ci] > self.nfr[z] << PAGE_SHIFT and not self._grow(c, z):
            return -1
        fh = self._free_h
        if not fh:
            self._grow_handles()
        h = fh.pop()
        slots[j] = h
        n = self.inuse[z] + 1
        self.inuse[z] = n
        if n == CLASS_OBJS[ci]:
            stack.pop()
            self.pos[z] = -1
        self.loc[h] = z << SLOT_BITS | j
        self.hsize[h] = stored
        q = self.lru[c]
        k = len(q)
        self.stamp[z] = self.lru_base[c] + k
        q.append(z)
        if not k & 4095:
            self._lru_maybe_compact(c, q)
        o = j * CLASS_SIZE[ci]
        off = o & (PAGE_SIZE - 1)
        if off + stored <= PAGE_SIZE:
            start = (self.zframes[z * MAX_ZSPAGE_FRAMES + (o >> PAGE_SHIFT)] << PAGE_SHIFT) + off
            buf = self.buf
            _pack_handle(buf, start, oidb, tag)
            if cdata is not None:
                buf[start + HANDLE_SIZE:start + stored] = cdata
        elif off + HANDLE_SIZE <= PAGE_SIZE and cdata is not None:
            # the payload crosses into the next frame: the header and the first piece
            # go straight into this one, the rest into the next (no object built first)
            base = z * MAX_ZSPAGE_FRAMES + (o >> PAGE_SHIFT)
            start = (self.zframes[base] << PAGE_SHIFT) + off
            buf = self.buf
            _pack_handle(buf, start, oidb, tag)
            room = PAGE_SIZE - off - HANDLE_SIZE
            nxt = self.zframes[base + 1] << PAGE_SHIFT
            mv = memoryview(cdata)
            buf[start + HANDLE_SIZE:start + HANDLE_SIZE + room] = mv[:room]
            buf[nxt:nxt + stored - HANDLE_SIZE - room] = mv[room:]
        else:
            obj = bytearray(stored)
            _pack_handle(obj, 0, oidb, tag)
            if cdata is not None:
                obj[HANDLE_SIZE:] = cdata
            self._write(z, o, obj)
        self.cumul_zbytes[c] += stored
        self.cumul_zpages[c] += 1
        return h

    def grow_prep(self, c: int, stored: int, f: int, cdata, oidb: bytes, tag: int) -> int:
        """Store an object with frame `f` (taken from the arena, or reclaimed) after
        match_prep found no room: f becomes the next frame of the zspage on top of
        the class's stack if its free slot still needs one, else the first of a new
        zspage, or goes back to the arena if reclaim made room meanwhile."""
        stack = self.partial[c][_CLS_OF[(stored + ALIGN - 1) >> ALIGN_SHIFT]]
        if not stack:
            return self.create_zspage(c, [f], stored, cdata, oidb, tag)
        z = stack[-1]
        if (self.slots[z].index(0) + 1) * CLASS_SIZE[self.zcls[z]] > self.nfr[z] << PAGE_SHIFT:
            self._grow(c, z, f)
        else:
            self.arena.free(f)
        return self.match_prep(c, stored, cdata, oidb, tag)

    def create_zspage(self, c: int, frames: list[int], stored: int, cdata, oidb: bytes, tag: int) -> int:
        """Make a zspage of the class of `stored` from `frames` (frames_for(stored) of
        them, taken from the arena) and store the object in it; its handle."""
        ci = _CLS_OF[(stored + ALIGN - 1) >> ALIGN_SHIFT]
        z = self._new_zspage()
        base = z * MAX_ZSPAGE_FRAMES
        for i, f in enumerate(frames):
            self.zframes[base + i] = f
        self.nfr[z] = len(frames)
        self.zcls[z] = ci
        self.inuse[z] = 0
        self.state[z] = LIVE | c << CLASS_SHIFT
        self.slots[z] = array("i", bytes(4 * CLASS_OBJS[ci]))
        self.pageframes[c] += len(frames)
        self.zspages[c] += 1
        self._partial_add(c, z)
        return self.match_prep(c, stored, cdata, oidb, tag)

    # ---- lists -----------------------------------------------------------------------------

    def _partial_add(self, c: int, z: int) -> None:
        stack = self.partial[c][self.zcls[z]]
        self.pos[z] = len(stack)
        stack.append(z)

    def _partial_del(self, c: int, z: int) -> None:
        i = self.pos[z]
        if i < 0:
            return
        stack = self.partial[c][self.zcls[z]]
        last = stack.pop()
        if last != z:
            stack[i] = last
            self.pos[last] = i
        self.pos[z] = -1

    def _free_zspage(self, c: int, z: int) -> None:
        """Give an empty zspage's frames back to the arena."""
        base = z * MAX_ZSPAGE_FRAMES
        k = self.nfr[z]
        for i in range(k):
            self.arena.free(self.zframes[base + i])
            self.zframes[base + i] = -1
        self.nfr[z] = 0
        self.pageframes[c] -= k
        self.zspages[c] -= 1
        self.state[z] = 0
        self.stamp[z] = -1
        self.slots[z] = None
        self._free_z.append(z)

    # ---- free ------------------------------------------------------------------------------

    def free_and_delist(self, h: int) -> int:
        """Free handle h; returns its stored size. An emptied zspage gives its frames
        back to the arena here, so the result is never negative (zbud's "the caller
        frees the frame")."""
        loc = self.loc[h]
        z = loc >> SLOT_BITS
        s = self.hsize[h]
        self.hsize[h] = 0
        self._free_h.append(h)
        self.slots[z][loc & SLOT_MASK] = 0
        st = self.state[z]
        c = st >> CLASS_SHIFT
        self.freed_zbytes[c] += s
        self.freed_zpages[c] += 1
        n = self.inuse[z] - 1
        self.inuse[z] = n
        if st & ZOMBIE:
            if not n:
                del self.zombies[c][z]
                self._free_zspage(c, z)
            return s
        if not n:
            self._partial_del(c, z)
            self._free_zspage(c, z)
        elif self.pos[z] < 0:
            self._partial_add(c, z)
        self._frees += 1
        if self._frees >= COMPACT_EVERY:
            self._frees = 0
            self.compact(pack=False)
        return s

    # ---- LRU (zbud's, over zspages) --------------------------------------------------------

    def _lru_add_tail(self, c: int, z: int) -> None:
        q = self.lru[c]
        k = len(q)
        self.stamp[z] = self.lru_base[c] + k
        q.append(z)
        if not k & 4095:
            self._lru_maybe_compact(c, q)

    def _lru_maybe_compact(self, c: int, q: array) -> None:
        if len(q) > 2 * self.zspages[c] + 4096:
            self._lru_compact(c)

    def _live(self, c: int, i: int, z: int) -> bool:
        return self.stamp[z] == self.lru_base[c] + i and self.state[z] == LIVE | c << CLASS_SHIFT

    def _lru_compact(self, c: int) -> None:
        q = self.lru[c]
        base = self.lru_base[c]
        live = array("i", (z for i, z in enumerate(q) if self._live(c, i, z)))
        newbase = base + len(q)
        cut = min(len(q), self.idle_mark[c] - base)
        self.idle_mark[c] = newbase + sum(1 for i in range(self.lru_head[c], cut) if self._live(c, i, q[i]))
        for i, z in enumerate(live):
            self.stamp[z] = newbase + i
        self.lru[c] = live
        self.lru_base[c] = newbase
        self.lru_head[c] = 0

    def _lru_first(self, c: int) -> int:
        """Unlink and return the least recently used live zspage of kind c, or 0."""
        q = self.lru[c]
        i = self.lru_head[c]
        end = len(q)
        while i < end:
            z = q[i]
            i += 1
            if self._live(c, i - 1, z):
                self.lru_head[c] = i
                self.stamp[z] = -1
                return z
        self.lru_head[c] = i
        if i > 4096 and i * 2 > end:
            self._lru_compact(c)
        return 0

    def touch(self, h: int) -> None:
        """The page of handle h was read and kept: its zspage becomes the most recently used."""
        z = self.loc[h] >> SLOT_BITS
        st = self.state[z]
        if st & LIVE and not st & (ZOMBIE | DYING):
            self._lru_add_tail(st >> CLASS_SHIFT, z)

    def lru_frames(self, c: int) -> list[int]:
        """Live zspages of kind c, least recently used first (tests and tools)."""
        q = self.lru[c]
        return [z for i, z in enumerate(q) if self._live(c, i, z)]

    # ---- eviction and zombies ----------------------------------------------------------------

    def _objects(self, z: int, with_data: bool) -> list[tuple]:
        out = []
        for h in self.slots[z]:
            if h:
                client_id, pool_id, oid, index = self.handle(h)
                out.append((h, client_id, pool_id, oid, index, bytes(self.payload(h)) if with_data else None))
        return out

    def evict_pageframe_lru(self) -> tuple[int, list[tuple], int, int]:
        """Take the least recently used ephemeral zspage for eviction (zbud's call):
        (zspage, objects, stored bytes, object count); zspage 0 if there is none. The
        caller unlinks the objects from tmem, then calls `finish_evict`."""
        z = self._lru_first(EPH)
        if not z:
            return 0, [], 0, 0
        return self._evict(z)

    def evict_pageframe(self, z: int) -> tuple[int, list[tuple], int, int]:
        self.stamp[z] = -1
        return self._evict(z)

    def _evict(self, z: int) -> tuple[int, list[tuple], int, int]:
        self._partial_del(EPH, z)
        self.state[z] |= DYING
        objs = self._objects(z, False)
        stored = sum(self.hsize[o[0]] for o in objs)
        self.freed_zbytes[EPH] += stored
        self.freed_zpages[EPH] += len(objs)
        self.evicted_pageframes[EPH] += self.nfr[z]
        return z, objs, stored, len(objs)

    def finish_evict(self, z: int) -> int:
        """The evicted zspage's objects are unlinked: free them and all its frames but
        the first, which is returned (to the put that needed a frame, or to the arena)."""
        for h in self.slots[z]:
            if h:
                self.hsize[h] = 0
                self._free_h.append(h)
        first = self.zframes[z * MAX_ZSPAGE_FRAMES]
        self.inuse[z] = 0
        self.zframes[z * MAX_ZSPAGE_FRAMES] = -1
        k = self.nfr[z]
        for i in range(1, k):
            self.arena.free(self.zframes[z * MAX_ZSPAGE_FRAMES + i])
            self.zframes[z * MAX_ZSPAGE_FRAMES + i] = -1
        self.nfr[z] = 0
        self.pageframes[EPH] -= k
        self.zspages[EPH] -= 1
        self.state[z] = 0
        self.stamp[z] = -1
        self.slots[z] = None
        self._free_z.append(z)
        return first

    def make_zombie_lru(self, c: int, with_data: bool = True) -> list[tuple]:
        """Take the least recently used zspage of kind c off its lists (remotify,
        writeback): its objects as (handle, client_id, pool_id, oid, index, data).
        It is freed when its last object is; [] if there is none."""
        z = self._lru_first(c)
        if not z:
            return []
        return self._zombify(c, z, with_data)

    def make_zombie(self, z: int, with_data: bool = True) -> list[tuple]:
        self.stamp[z] = -1
        return self._zombify(self.state[z] >> CLASS_SHIFT, z, with_data)

    def _zombify(self, c: int, z: int, with_data: bool) -> list[tuple]:
        self._partial_del(c, z)
        self.state[z] |= ZOMBIE
        self.zombies[c][z] = None
        return self._objects(z, with_data)

    def revive_zombie(self, z: int) -> None:
        """A zombie whose objects could not all leave goes back on its lists (LRU tail)."""
        c = self.state[z] >> CLASS_SHIFT
        del self.zombies[c][z]
        self.state[z] = LIVE | c << CLASS_SHIFT
        if self.inuse[z] < CLASS_OBJS[self.zcls[z]]:
            self._partial_add(c, z)
        self._lru_add_tail(c, z)

    # ---- idleness ------------------------------------------------------------------------

    def _seen_any(self, z: int) -> bool:
        seen = self.seen
        return any(seen[h] for h in self.slots[z] if h)

    def mark_idle(self) -> int:
        self.seen[:] = bytes(len(self.seen))
        for c in (EPH, PERS):
            self.idle_mark[c] = self.lru_base[c] + len(self.lru[c])
        return sum(self.inuse[z] for c in (EPH, PERS) for z in self.idle_frames(c))

    def idle_and_evictable(self, z: int) -> bool:
        st = self.state[z]
        c = st >> CLASS_SHIFT
        return (st == LIVE | c << CLASS_SHIFT and 0 <= self.stamp[z] < self.idle_mark[c]
                and not self._seen_any(z))

    def idle_frames(self, c: int) -> list[int]:
        """Idle zspages of kind c, least recently used first."""
        q = self.lru[c]
        base = self.lru_base[c]
        return [q[i] for i in range(self.lru_head[c], min(len(q), self.idle_mark[c] - base))
                if self._live(c, i, q[i]) and not self._seen_any(q[i])]

    def frame_zpages(self, z: int) -> int:
        return self.inuse[z]

    # ---- compaction --------------------------------------------------------------------------

    def compact(self, pack: bool = True) -> int:
        """Empty the sparsest partial zspages of every class into the others of their
        class (see _compact_class), and with `pack` move each partial zspage's objects
        down into its holes (_shrink). The check every COMPACT_EVERY frees does not
        pack: packing after half of 8192 held-out pages were freed gave back 5 % more
        frames but made a free 1.4 us dearer, a cost for ctl compact and the end of a
        recompression pass to pay, not every workload that frees. Returns the frames
        given back to the arena."""
        freed = 0
        self.compact_starved = False  # set when an object had no frame to move into
        for c in (EPH, PERS):
            for ci in range(NCLASSES):
                stack = self.partial[c][ci]
                if len(stack) >= 2 or (pack and stack):
                    freed += self._compact_class(c, ci, stack, pack)
        if freed:
            self.compactions += 1
            self.frames_compacted += freed
        return freed

    def _compact_class(self, c: int, ci: int, stack: array, pack: bool) -> int:
        """Move the objects of the class's emptiest partial zspage into the fullest ones
        and free it, while the partial zspages have room for a whole zspage's objects
        (zsmalloc's rule); with `pack`, then pack each one left. Returns the frames
        given back, less those the zspages that took objects grew by."""
        objs = CLASS_OBJS[ci]
        size = CLASS_SIZE[ci]
        inuse = self.inuse
        freed = 0
        stuck = False
        while len(stack) >= 2 and not stuck and sum(objs - inuse[z] for z in stack) >= objs:
            src = min(stack, key=inuse.__getitem__)
            self._partial_del(c, src)
            sslots = self.slots[src]
            for j, h in enumerate(sslots):
                if not h:
                    continue
                dst = max(stack, key=inuse.__getitem__)
                dslots = self.slots[dst]
                k = dslots.index(0)
                if (k + 1) * size > self.nfr[dst] << PAGE_SHIFT:
                    if not self._grow(c, dst):  # no frame to move it into: src stays as it is now
                        stuck = self.compact_starved = True
                        break
                    freed -= 1
                s = self.hsize[h]
                self._write(dst, k * size, self._read(src, j * size, s))
                dslots[k] = h
                sslots[j] = 0
                inuse[src] -= 1
                self.loc[h] = dst << SLOT_BITS | k
                n = inuse[dst] + 1
                inuse[dst] = n
                if n == objs:
                    self._partial_del(c, dst)
                self.objects_moved += 1
            if stuck:
                self._partial_add(c, src)
                break
            # the emptied zspage's place in the LRU order is lost with it; its objects
            # now age with the zspages they joined
            freed += self.nfr[src]
            self._free_zspage(c, src)
        if pack:
            for z in stack:
                freed += self._shrink(c, z, size)
        return freed

    def _shrink(self, c: int, z: int, size: int) -> int:
        """Move the objects in the highest slots of partial zspage z down into its
        holes and give back the frames no object reaches any more (a class with
        one partial zspage has nowhere else to put them); the frames freed."""
        if not self.inuse[z]:  # an empty zspage is freed where it empties, never partial
            return 0
        sl = self.slots[z]
        top = len(sl) - 1
        while True:
            while not sl[top]:
                top -= 1
            low = sl.index(0)
            if low > top:
                break
            h = sl[top]
            self._write(z, low * size, self._read(z, top * size, self.hsize[h]))
            sl[low] = h
            sl[top] = 0
            self.loc[h] = z << SLOT_BITS | low
            self.objects_moved += 1
        need = ((top + 1) * size + PAGE_SIZE - 1) >> PAGE_SHIFT
        k = self.nfr[z]
        if need >= k:
            return 0
        base = z * MAX_ZSPAGE_FRAMES
        for i in range(need, k):
            self.arena.free(self.zframes[base + i])
            self.zframes[base + i] = -1
        self.nfr[z] = need
        self.pageframes[c] -= k - need
        return k - need

    # ---- statistics --------------------------------------------------------------------------

    def zbytes(self, c: int) -> int:
        return self.cumul_zbytes[c] - self.freed_zbytes[c]

    def zpages(self, c: int) -> int:
        return self.cumul_zpages[c] - self.freed_zpages[c]

    def class_stats(self) -> list[dict]:
        """Per pool kind and size class in use: the class's geometry, its zspages, the
        frames they hold, its objects, and the bytes its frames hold but no object
        uses (zsmalloc's per-class table). A walk of every zspage: for /stats, not a
        hot path."""
        per: dict[tuple[int, int], list[int]] = {}
        for z, slots in enumerate(self.slots):
            st = self.state[z]
            if slots is not None and st:
                row = per.setdefault((st >> CLASS_SHIFT, self.zcls[z]), [0, 0, 0])
                row[0] += 1
                row[1] += self.inuse[z]
                row[2] += self.nfr[z]
        out = []
        for (c, ci) in sorted(per):
            zs, n, frames = per[(c, ci)]
            out.append({"pool": "pers" if c == PERS else "eph", "size": CLASS_SIZE[ci],
                        "frames_per_zspage": CLASS_FRAMES[ci], "objs_per_zspage": CLASS_OBJS[ci],
                        "zspages": zs, "frames": frames, "objects": n,
                        "unused_bytes": frames * PAGE_SIZE - n * CLASS_SIZE[ci]})
        return out

    def stats(self) -> dict[str, int]:
        out = {}
        for c, name in ((EPH, "eph"), (PERS, "pers")):
            out[f"{name}_zbytes"] = self.zbytes(c)
            out[f"{name}_cumul_zbytes"] = self.cumul_zbytes[c]
            out[f"{name}_zpages"] = self.zpages(c)
            out[f"{name}_cumul_zpages"] = self.cumul_zpages[c]
            out[f"{name}_pageframes"] = self.pageframes[c]
            out[f"{name}_zspages"] = self.zspages[c]
            out[f"{name}_evicted_pageframes"] = self.evicted_pageframes[c]
            out[f"{name}_zombie_count"] = len(self.zombies[c])
            # memory held but holding no object: slack at the end of zspages and free slots
            out[f"{name}_frag_bytes"] = self.pageframes[c] * PAGE_SIZE - self.zbytes(c)
        out["compactions"] = self.compactions
        out["objects_moved"] = self.objects_moved
        out["frames_compacted"] = self.frames_compacted
        return out

    # ---- checking (tests) ------------------------------------------------------------------

    def check(self) -> None:
        """Assert the invariants over every zspage, handle and list."""
        on_partial = {}
        for c in (EPH, PERS):
            for ci in range(NCLASSES):
                for i, z in enumerate(self.partial[c][ci]):
                    assert z not in on_partial, f"zspage {z} on two partial stacks"
                    assert self.pos[z] == i and self.zcls[z] == ci
                    assert self.state[z] == LIVE | c << CLASS_SHIFT
                    assert self.inuse[z] < CLASS_OBJS[ci]
                    on_partial[z] = c
        lru_live = {c: self.lru_frames(c) for c in (EPH, PERS)}
        frames_seen: set[int] = set()
        handles_seen: set[int] = set()
        counts = {"pf": [0, 0], "zs": [0, 0], "zp": [0, 0], "zb": [0, 0]}
        for z in range(1, len(self.zcls)):
            st = self.state[z]
            if not st:
                assert self.slots[z] is None and z not in on_partial and not self.nfr[z]
                continue
            c = st >> CLASS_SHIFT
            ci = self.zcls[z]
            assert not st & DYING, "dying zspage outside eviction"
            slots = self.slots[z]
            assert len(slots) == CLASS_OBJS[ci]
            live = [h for h in slots if h]
            assert live and len(live) == self.inuse[z], f"zspage {z}: inuse {self.inuse[z]}, {len(live)} objects"
            for j, h in enumerate(slots):
                if h:
                    assert h not in handles_seen, f"handle {h} twice"
                    handles_seen.add(h)
                    assert self.loc[h] == z << SLOT_BITS | j, f"handle {h} points elsewhere"
                    assert MIN_SIZE - ALIGN < self.hsize[h] <= CLASS_SIZE[ci]
                    counts["zb"][c] += self.hsize[h]
            k = self.nfr[z]
            assert 1 <= k <= CLASS_FRAMES[ci], f"zspage {z}: {k} frames"
            top = max(j for j, h in enumerate(slots) if h)
            assert (top + 1) * CLASS_SIZE[ci] <= k * PAGE_SIZE, f"zspage {z}: slot {top} beyond its frames"
            fr = [self.zframes[z * MAX_ZSPAGE_FRAMES + i] for i in range(MAX_ZSPAGE_FRAMES)]
            assert all(f >= 0 for f in fr[:k]) and all(f == -1 for f in fr[k:]), f"zspage {z} frames {fr}"
            assert not frames_seen & set(fr[:k]), f"a frame of zspage {z} is in another zspage"
            frames_seen.update(fr[:k])
            counts["pf"][c] += k
            counts["zs"][c] += 1
            counts["zp"][c] += len(live)
            if st & ZOMBIE:
                assert z in self.zombies[c] and z not in on_partial and z not in lru_live[c]
            else:
                assert z in lru_live[c], f"zspage {z} not on its LRU"
                assert (z in on_partial) == (len(live) < CLASS_OBJS[ci])
        assert not frames_seen & set(self.arena._freed), "a zspage frame is also free in the arena"
        for h in range(1, len(self.hsize)):
            assert bool(self.hsize[h]) == (h in handles_seen), f"handle {h} leaked or lost"
        assert len(self._free_h) + len(handles_seen) == len(self.hsize) - 1
        for c in (EPH, PERS):
            assert counts["pf"][c] == self.pageframes[c]
            assert counts["zs"][c] == self.zspages[c]
            assert counts["zp"][c] == self.zpages(c)
            assert counts["zb"][c] == self.zbytes(c)
            assert len(lru_live[c]) + len(self.zombies[c]) == self.zspages[c]
