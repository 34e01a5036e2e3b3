"""The swap disk of one swap export: its backing file and the page-state map inside it.

Page p of the export lives at byte p * PAGE_SIZE of the backing file
(backing.py); `states[p]`, one byte of the map kept in the same file
(pagemap.py), says whether that copy is the page's current version (FILE),
is stale because a newer one lives in memory or on peers (MEMORY), or
whether the page has no current version at all (LOST).

Two writers put pages here, and both go through `write_page`, which writes
the bytes first and sets FILE only after they are in the file, so the map
never claims a version the file does not hold:

- the swap export, for a page memory refused and at a clean stop;
- the writeback sink (writeback.py), for a page Zcache evicts from its LRU
  when the budget runs short. The sink reaches the disk directly, never
  through the export: storage sits below the NBD layer and calls nothing
  above it.

A failed write leaves the state byte as it was (the page stays in memory,
or the export records it lost); the error is logged at a readable rate.
"""
from __future__ import annotations

import logging

from ..lograte import Throttled
from ..units import PAGE_SHIFT
from .backing import BackingFile
from .pagemap import FILE, PageStateMap

log = logging.getLogger("ramster.storage")


class SwapDisk:
    """The backing file and page-state map of one swap export of `size` bytes.

    `counters` is where writebacks are counted: an object with an int
    `written_back` (the export's counters, so they show per export).
    """

    def __init__(self, name: str, backing: BackingFile, size: int, counters):
        self.name = name
        self.backing = backing
        self.pagemap = PageStateMap(backing, size)
        # the map's bytes themselves: states[p] costs one item access on the store path
        self.states = self.pagemap.states
        self.counters = counters
        self.errors = Throttled(log)

    def write_page(self, p: int, page) -> OSError | None:
        """Page p's bytes into the file, then FILE into its state byte; the error if the file refused."""
        try:
            self.backing.pwrite(p << PAGE_SHIFT, page)
        except OSError as e:
            return e
        self.states[p] = FILE
        return None

    def write_back(self, p: int, page) -> bool:
        """An evicted page (writeback, or the clean stop): False, and the page stays in
        memory, when the file refuses it."""
        err = self.write_page(p, page)
        if err is not None:
            self.errors("%s: writeback to %s failed, keeping pages in memory: %s", self.name,
                        self.backing.path, err.strerror or err)
            return False
        self.counters.written_back += 1
        return True
