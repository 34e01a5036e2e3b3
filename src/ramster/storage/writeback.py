"""The writeback tier (SPEC §6.3): the "swap disk" behind a swap export.

The swap disk is the export's BackingFile (backing.py). SwapWriteback is the sink
that Zcache.writeback_lru hands each page to when the budget runs short:
where the kernel's 3.9 writeback did `__frontswap_load` + `__swap_writepage`,
this un-swizzles the handle back to (swap type, offset) and writes the page
into the backing file of the swap export of that type. The page then lives on
disk only; the export reads it from there after the tmem copy is gone.
"""
from __future__ import annotations

from ..frontends.frontswap import SWIZ_BITS, unswiz


class SwapWriteback:
    """Zcache's writeback sink: sink(pool, oid, index, page) -> True | False | None.

    Frontswap's pool serves every swap export, one swap type each; the handle
    says which. True: the page is in the file. False: the file refused it (a
    full or failing disk). None: the page has no file to go to (an export
    without a backing file, a foreign page). On False and None zcache keeps
    the page in memory; RAMster records whether the write-through of a page it
    moves to peers reached the disk (True), so a page whose peers are gone is
    counted lost only when the disk does not have it either.
    """

    def __init__(self, frontswap):
        self.frontswap = frontswap
        self.by_type: dict[int, object] = {}  # swap type -> SwapExport
        self._pool = None

    def register(self, swap_type: int, export) -> None:
        """Route pages of `swap_type` to `export` (frontswap.init(swap_type) must have run)."""
        self.by_type[swap_type] = export
        self._pool = self.frontswap.zc.pool(self.frontswap.pool_id)

    def _export(self, pool, oid: int, index: int):
        # identity, not pool id: a foreign (RAMster) pool may reuse frontswap's id
        if pool is not self._pool:
            return None
        export = self.by_type.get(oid >> SWIZ_BITS)
        if export is None or export.backing is None:
            return None
        return export

    def accepts(self, pool, oid: int, index: int) -> bool:
        """Whether the page has a file to go to (asked before it is decompressed)."""
        return self._export(pool, oid, index) is not None

    def __call__(self, pool, oid: int, index: int, page) -> bool | None:
        export = self._export(pool, oid, index)
        if export is None:
            return None
        return export.write_back(unswiz(oid, index)[1], page)
