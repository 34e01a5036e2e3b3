"""The page-frame arena: the userspace "page allocator" zcache counts frames with.

One anonymous private mapping is reserved up front (address space only: the
kernel backs a frame when it is first written), so the budget can grow at run
time without moving frames. `alloc` fails once the budget is reached, like the
seed's opportunistic __GFP_NORETRY allocation; frames freed while over budget
are given back to the kernel so shrinking really releases memory.
"""
from __future__ import annotations

import mmap
import os
from array import array
from .units import PAGE_SHIFT, PAGE_SIZE

_MAP_NORESERVE = 0x4000  # Linux; Python's mmap module names it only from 3.13
# zbud's refs (frame << 1 | bud) live in 32-bit tmem slots
MAX_FRAMES = (1 << 30) - 1024


def _physical_pages() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // PAGE_SIZE
    except (ValueError, OSError):  # pragma: no cover
        return 1 << 20


class FrameArena:
    """Frames 0..reserve-1 in one mapping; at most `budget` handed out at once."""

    def __init__(self, budget: int, reserve: int | None = None):
        if not 0 <= budget <= MAX_FRAMES:
            raise ValueError(f"max_pageframes must be in [0, {MAX_FRAMES}], got {budget}")
        self.reserve = min(max(budget, reserve if reserve is not None else _physical_pages(), 1), MAX_FRAMES)
        # MAP_NORESERVE: the reservation is address space only, so it is not charged
        # against overcommit (without it a fork() of a node could fail with ENOMEM)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", _MAP_NORESERVE)
        self._map = mmap.mmap(-1, self.reserve * PAGE_SIZE, flags=flags)
        self.buf = memoryview(self._map)
        self.budget = budget
        self.high_water = 0  # frames below this have been handed out at least once
        self._freed = array("i")  # a stack: reuse warm frames first
        self.pageframes_alloced = 0
        self.pageframes_freed = 0

    @property
    def in_use(self) -> int:
        return self.pageframes_alloced - self.pageframes_freed

    def alloc(self) -> int:
        """A free frame number, or -1 when the budget is used up."""
        if self.pageframes_alloced - self.pageframes_freed >= self.budget:
            return -1
        self.pageframes_alloced += 1
        if self._freed:
            return self._freed.pop()
        f = self.high_water
        self.high_water = f + 1
        return f

    def free(self, frame: int) -> None:
        self.pageframes_freed += 1
        self._freed.append(frame)
        if self.pageframes_alloced - self.pageframes_freed >= self.budget:
            self._release(frame)

    def set_budget(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("max_pageframes must be >= 0")
        if budget > self.reserve:
            raise ValueError(f"max_pageframes {budget} exceeds the reserved {self.reserve} frames")
        self.budget = budget

    def release_free_frames(self) -> None:
        """Return the memory of every free frame to the kernel."""
        for f in self._freed:
            self._release(f)

    def _release(self, frame: int) -> None:
        self._map.madvise(mmap.MADV_DONTNEED, frame << PAGE_SHIFT, PAGE_SIZE)

    def close(self) -> None:
        self.buf.release()
        self._map.close()
