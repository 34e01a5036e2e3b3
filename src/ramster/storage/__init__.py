"""Storage under the exports: backing files and what of a swap export survives a restart."""
from .backing import BackingFile, BackingFileBusy
from .pagemap import PageStateMap, PageMapError
from .writeback import SwapWriteback

__all__ = ["BackingFile", "BackingFileBusy", "PageStateMap", "PageMapError", "SwapWriteback"]
