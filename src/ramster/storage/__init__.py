"""Storage under the exports: what of a node lives in files.

    backing.py    BackingFile: a sparse file (or block device) read and written by
                  page offsets, holes punched for trimmed pages, flock'd by one node
    pagemap.py    PageStateMap: one state byte per page of a swap export, kept in its
                  backing file, saying what a restart may trust
    swapdisk.py   SwapDisk: one swap export's backing file and page map together
    writeback.py  SwapWriteback: Zcache's sink for evicted swap pages, to their SwapDisk

Nothing here calls up into the exports, the front-ends or Zcache.
"""
from .backing import BackingFile, BackingFileBusy
from .pagemap import PageStateMap, PageMapError
from .swapdisk import SwapDisk
from .writeback import SwapWriteback

__all__ = ["BackingFile", "BackingFileBusy", "PageStateMap", "PageMapError", "SwapDisk", "SwapWriteback"]
