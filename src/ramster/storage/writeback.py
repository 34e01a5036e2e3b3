"""The writeback tier (SPEC §6.3): Zcache's sink for the persistent pages it evicts.

Where the kernel's 3.9 writeback did `__frontswap_load` + `__swap_writepage`,
Zcache.writeback_lru hands each page of an LRU frame to this sink, which
turns the tmem handle back into the swap slot it came from and writes the
page into that swap type's swap disk (swapdisk.py) at its offset. The page
then lives on disk only; the swap export reads it from there once the tmem
copy is gone.

    (pool, oid, index) --slot()--> (swap type, offset) --disks[type]--> SwapDisk.write_back(offset)

One frontswap pool serves every swap type, so the sink knows one pool; a
page of any other pool (a cleancache pool, a peer's foreign pool that
happens to reuse frontswap's pool id) has no disk here. Pool identity, not
pool id, decides. The translation of a handle into a slot is frontswap's
(`frontswap.unswiz`), given at construction; swap exports register their
disks as they are created, after the Zcache that calls the sink exists.
"""
from __future__ import annotations

from collections.abc import Callable

from .swapdisk import SwapDisk


class SwapWriteback:
    """Zcache's writeback sink: sink(pool, oid, index, page) -> True | False | None.

    True: the page is in the file. False: the file refused it (a full or
    failing disk). None: the page has no file to go to (a swap export
    without a backing file, a type nobody registered, a foreign pool). On
    False and None zcache keeps the page in memory; RAMster records whether
    the write-through of a page it moves to peers reached the disk (True), so
    a page whose peers are gone is counted lost only when the disk does not
    have it either.
    """

    def __init__(self, slot: Callable[[int, int], tuple[int, int]]):
        """slot(oid, index) -> (swap type, offset): the front-end's handle encoding."""
        self._slot = slot
        self._pool = None
        self._disks: dict[int, SwapDisk] = {}

    def register(self, pool, swap_type: int, disk: SwapDisk) -> None:
        """Send evicted pages of `swap_type` in frontswap's `pool` to `disk`."""
        if self._pool is not None and pool is not self._pool:
            raise ValueError("every swap type lives in frontswap's one pool")
        self._pool = pool
        self._disks[swap_type] = disk

    def close(self) -> None:
        """The disks are closing: from now on no page has a file to go to."""
        self._disks.clear()

    def _disk(self, pool, oid: int, index: int) -> SwapDisk | None:
        if pool is not self._pool:
            return None
        return self._disks.get(self._slot(oid, index)[0])

    def accepts(self, pool, oid: int, index: int) -> bool:
        """Whether the page has a file to go to (asked before it is decompressed)."""
        return self._disk(pool, oid, index) is not None

    def __call__(self, pool, oid: int, index: int, page) -> bool | None:
        if pool is not self._pool:
            return None
        swap_type, offset = self._slot(oid, index)
        disk = self._disks.get(swap_type)
        if disk is None:
            return None
        return disk.write_back(offset, page)
