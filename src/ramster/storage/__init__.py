"""Storage under the exports: backing files and what of a swap export survives a restart."""
from .backing import BackingFile, BackingFileBusy
from .pagemap import PageStateMap, PageMapError

__all__ = ["BackingFile", "BackingFileBusy", "PageStateMap", "PageMapError"]
