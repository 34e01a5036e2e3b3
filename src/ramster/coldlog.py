"""The cold log: where recompression keeps groups of cold pages compressed together.

A page compressed alone keeps more of its bytes than the same page compressed
beside its neighbours: zstd-3 keeps 0.255 of a held-out corpus page, and 32
such pages compressed as one input at zstd-9 keep 0.215. nbdkit's zstd
allocator and zram's multi-page compression gain the same way. So the
recompression pass of the dense allocator stores the persistent pages it
finds cold as groups of up to COLD_GROUP pages (zcache_cold.py makes them);
this module only keeps their bytes.

A group's blob is appended to a log: a run of arena frames (taken from the
node's budget like every other frame) read as one byte space, blob after blob,
crossing frame boundaries, so a blob wastes nothing but the end of the last
frame. Per group, in arrays (no Python object per group or page):

    pos[g]    where its blob starts in the log (bytes)
    blen[g]   its length
    mask[g]   which of its members are still live (bit m: member m)
    seen[g]   1: a member was read since the last idle mark (zcache_reclaim.py)

A member freed clears its bit; the last one frees the group, and a freed
group leaves a hole until `compact` slides the blobs after it down and gives
the frames past the new end back to the arena. Groups freed at the end of the
log give their frames back at once (writeback takes groups from there, so it
frees memory without copying anything). `order` lists group ids by position;
a freed group's id is reused only once it has left `order` (at the end of
the log, or by compaction), so an id names one blob at a time.
"""
from __future__ import annotations

from array import array

from .units import PAGE_SHIFT, PAGE_SIZE


class ColdLog:
    def __init__(self, arena, on_frames=None, max_groups: int = 1 << 31):
        self.arena = arena
        self.max_groups = max_groups  # ids 0..max_groups-1: what the caller can name
        self._on_frames = on_frames  # told the log's frame count whenever it changes
        self.frames = array("i")  # log page k is arena frame frames[k]
        self.end = 0  # bytes of the log in use, holes included
        self.pos = array("q")
        self.blen = array("i")
        self.mask = array("L")
        self.seen = bytearray()
        # arrays, not lists: a pass makes and drops many small objects, and an int a list
        # kept among them would pin their allocator's arenas in memory
        self.order = array("i")  # group ids in log order, freed ones until they leave it
        self._free_g = array("i")
        self.groups = 0  # live groups
        self.pages = 0  # live members
        self.zbytes = 0  # bytes of the live groups' blobs
        self.compactions = 0

    # ---- the byte space ------------------------------------------------------------------

    def _write(self, pos: int, data) -> None:
        buf = self.arena.buf
        frames = self.frames
        mv = memoryview(data)
        done = 0
        n = len(mv)
        while done < n:
            k, off = divmod(pos + done, PAGE_SIZE)
            step = min(PAGE_SIZE - off, n - done)
            base = frames[k] << PAGE_SHIFT
            buf[base + off:base + off + step] = mv[done:done + step]
            done += step

    def _read(self, pos: int, n: int) -> bytes:
        buf = self.arena.buf
        frames = self.frames
        parts = []
        while n:
            k, off = divmod(pos, PAGE_SIZE)
            step = min(PAGE_SIZE - off, n)
            base = frames[k] << PAGE_SHIFT
            parts.append(buf[base + off:base + off + step])
            pos += step
            n -= step
        return b"".join(parts)

    def _grow_to(self, end: int) -> bool:
        """Enough frames for `end` bytes; False (nothing taken) if the budget has none."""
        need = -(-end // PAGE_SIZE) - len(self.frames)
        got = []
        for _ in range(need):
            f = self.arena.alloc()
            if f < 0:
                for f in got:
                    self.arena.free(f)
                return False
            got.append(f)
        self.frames.extend(got)
        if got and self._on_frames is not None:
            self._on_frames(len(self.frames))
        return True

    def _trim(self) -> int:
        """Give back the frames past the end; how many."""
        keep = -(-self.end // PAGE_SIZE)
        n = len(self.frames) - keep
        for _ in range(n):
            self.arena.free(self.frames.pop())
        if n and self._on_frames is not None:
            self._on_frames(len(self.frames))
        return n

    # ---- groups ---------------------------------------------------------------------------

    def add(self, blob: bytes, members: int) -> int:
        """Append a group of `members` live pages; its id, or -1 when no frame or no
        id is free."""
        if not self._free_g and len(self.pos) >= self.max_groups:
            return -1
        start = self.end
        if not self._grow_to(start + len(blob)):
            return -1
        self._write(start, blob)
        self.end = start + len(blob)
        if self._free_g:
            g = self._free_g.pop()
            self.pos[g] = start
            self.blen[g] = len(blob)
            self.mask[g] = (1 << members) - 1
            self.seen[g] = 0
        else:
            g = len(self.pos)
            self.pos.append(start)
            self.blen.append(len(blob))
            self.mask.append((1 << members) - 1)
            self.seen.append(0)
        self.order.append(g)
        self.groups += 1
        self.pages += members
        self.zbytes += len(blob)
        return g

    def blob(self, g: int) -> bytes:
        return self._read(self.pos[g], self.blen[g])

    def live(self, g: int, m: int) -> bool:
        return g < len(self.mask) and bool(self.mask[g] >> m & 1)

    def free_member(self, g: int, m: int) -> bool:
        """Member m leaves group g; True when that was the last one (the group is freed)."""
        mask = self.mask[g]
        bit = 1 << m
        if not mask & bit:
            raise ValueError(f"cold group {g} member {m} is not live")
        mask &= ~bit
        self.mask[g] = mask
        self.pages -= 1
        if mask:
            return False
        self._release(g)
        return True

    def _release(self, g: int) -> None:
        self.groups -= 1
        self.zbytes -= self.blen[g]
        self.blen[g] = 0
        order = self.order
        while order and not self.mask[order[-1]]:  # freed groups at the end go now
            self._free_g.append(order.pop())
        self.end = self.pos[order[-1]] + self.blen[order[-1]] if order else 0
        self._trim()

    def clear_seen(self) -> None:
        self.seen[:] = bytes(len(self.seen))

    def idle_pages(self) -> int:
        """Live members of groups no member of which was read since the mark."""
        return sum(bin(self.mask[g]).count("1") for g in self.order if self.mask[g] and not self.seen[g])

    def hole_bytes(self) -> int:
        return self.end - self.zbytes

    def newest(self) -> list[int]:
        """Live group ids, the end of the log first (writeback's order: freeing those
        gives frames back without compaction)."""
        return [g for g in reversed(self.order) if self.mask[g]]

    def compact(self) -> int:
        """Slide every live blob down over the holes; the frames given back."""
        if not self.hole_bytes():
            return 0
        at = 0
        live = array("i")
        for g in self.order:
            if not self.mask[g]:
                self._free_g.append(g)
                continue
            n = self.blen[g]
            if self.pos[g] != at:
                self._write(at, self._read(self.pos[g], n))
                self.pos[g] = at
            at += n
            live.append(g)
        self.order = live
        self.end = at
        self.compactions += 1
        return self._trim()

    def check(self) -> None:
        """Assert the log's structure (tests)."""
        assert len(self.frames) == -(-self.end // PAGE_SIZE)
        live = [g for g in self.order if self.mask[g]]
        assert len(live) == self.groups == len(set(live))
        assert sum(bin(self.mask[g]).count("1") for g in live) == self.pages
        assert sum(self.blen[g] for g in live) == self.zbytes
        at = 0
        for g in live:
            assert self.pos[g] >= at
            at = self.pos[g] + self.blen[g]
        assert at == self.end
        assert not set(self._free_g) & set(self.order)
