"""heaptrim: hand the heap's free memory back to the kernel when the node goes quiet.

Serving leaves freed memory in glibc's heap: socket reads of up to 256 KiB
(below the mmap threshold nbd/server.py fixes), request payloads, page-sized
bytes objects, compressor output. free() gives back only the top of the heap,
so after a burst the process keeps pages it no longer uses: about 0.7 MiB
after 32 MiB of corpus pages were written, 2% of what the compressed pages
themselves take, counted by RSS, by the kernel's memory accounting and by an
operator's `ps`. malloc_trim(0) also returns the free pages inside the heap.

It walks the whole heap, so it runs only when the node is quiet: every
INTERVAL seconds a tick reads the node's traffic (bytes read and written
through its exports, pages recompressed: `traffic`, a running total) and
trims when at least MIN_BYTES moved since the last trim and nothing moved
since the previous tick. A node that keeps serving is never trimmed in the
middle of its work; one that stops is trimmed within two ticks. It also
trims once at start, where imports and configuration leave free memory.
Outside glibc (musl, other systems) there is no malloc_trim and it does
nothing but count the traffic.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
from typing import Callable

from .units import format_size

log = logging.getLogger("ramster.heaptrim")

INTERVAL = 1.0  # seconds between looks at the traffic
MIN_BYTES = 1 << 20  # traffic since the last trim that makes another worth its walk


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_size_t,)
    fn.restype = ctypes.c_int
    return fn


def rss_bytes() -> int:
    """This process's resident set, from /proc/self/statm (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """Trims the heap after bursts of `traffic()` (a non-decreasing byte count).

    `trim` and `rss` default to glibc's malloc_trim and /proc/self/statm;
    tests pass their own to drive `tick()` without a loop.
    """

    def __init__(self, traffic: Callable[[], int], *, interval: float = INTERVAL, min_bytes: int = MIN_BYTES,
                 trim: Callable[[int], int] | None = None, rss: Callable[[], int] = rss_bytes):
        self.traffic = traffic
        self.interval = interval
        self.min_bytes = min_bytes
        self._trim = trim if trim is not None else _glibc_malloc_trim()
        self._rss = rss
        self.trims = 0
        self.trimmed_bytes = 0  # RSS before minus after, summed over the trims
        self._seen = self._at_trim = traffic()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def untrimmed(self) -> int:
        """Bytes of traffic since the last trim."""
        return self.traffic() - self._at_trim

    def tick(self) -> bool:
        """One look at the traffic; True if it trimmed."""
        now = self.traffic()
        quiet = now == self._seen
        self._seen = now
        if quiet and now - self._at_trim >= self.min_bytes:
            self.trim()
            return True
        return False

    def trim(self) -> int:
        """Trim now; returns the bytes RSS fell by."""
        self._at_trim = self._seen = self.traffic()
        if self._trim is None:
            return 0
        before = self._rss()
        self._trim(0)
        freed = max(0, before - self._rss())
        self.trims += 1
        self.trimmed_bytes += freed
        log.debug("heap trimmed: RSS fell by %s", format_size(freed))
        return freed

    def start(self) -> None:
        """Trim once, then look every `interval` seconds on the running loop."""
        self.trim()
        self._schedule()

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._run)

    def _run(self) -> None:
        self.tick()
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stats(self) -> dict[str, int]:
        return {"heap.trims": self.trims, "heap.trimmed_bytes": self.trimmed_bytes,
                "heap.untrimmed_traffic_bytes": self.untrimmed()}
