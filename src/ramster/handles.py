"""What a caller may pass as a handle and a page, checked once at Zcache's door.

A handle is (pool, oid, index): oid an int in [0, 2**192) (or the seed's three
u64 words, oid[0] least significant), index an int in [0, 2**32); a page is
any bytes-like of exactly PAGE_SIZE bytes; a page limit (max_pages of the
operator's verbs) is None or an int >= 0. The put and get paths test the
common case inline (an int in range, bytes of the right length) and call these
only for anything else, so the checks cost nothing per page on the hot paths;
the messages name the argument, as DESIGN's API contract asks.
"""
from __future__ import annotations

from .tmem import INDEX_LIMIT, OID_LIMIT
from .units import PAGE_SIZE

_U64 = (1 << 64) - 1


def normalize_oid(oid) -> int:
    """An oid as one int in [0, 2**192); a 3-tuple of u64 (oid[0] least significant) is accepted."""
    if type(oid) is int:
        if 0 <= oid < OID_LIMIT:
            return oid
        raise ValueError(f"oid must be in [0, 2**192), got {oid}")
    if isinstance(oid, tuple):
        if len(oid) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= _U64 for w in oid):
            raise ValueError("oid tuple must be three ints in [0, 2**64)")
        return oid[0] | oid[1] << 64 | oid[2] << 128
    if isinstance(oid, int) and not isinstance(oid, bool):
        return normalize_oid(int(oid))
    raise TypeError(f"oid must be an int or a 3-tuple of ints, not {type(oid).__name__}")


def check_index(index) -> int:
    if type(index) is not int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        index = int(index)
    if not 0 <= index < INDEX_LIMIT:
        raise ValueError(f"index must be in [0, 2**32), got {index}")
    return index


def check_page(page):
    """A PAGE_SIZE bytes-like page, as bytes or a flat byte memoryview."""
    if type(page) is bytes:
        if len(page) == PAGE_SIZE:
            return page
        raise ValueError(f"page must be exactly {PAGE_SIZE} bytes, got {len(page)}")
    try:
        mv = memoryview(page)
    except TypeError:
        raise TypeError(f"page must be a bytes-like object, not {type(page).__name__}") from None
    if mv.nbytes != PAGE_SIZE:
        raise ValueError(f"page must be exactly {PAGE_SIZE} bytes, got {mv.nbytes}")
    if not mv.c_contiguous:
        return mv.tobytes()
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def page_budget(max_pages: int | None) -> int:
    """A page limit a verb was given (None: no limit) as an int, checked."""
    if max_pages is None:
        return 1 << 62
    if isinstance(max_pages, bool) or not isinstance(max_pages, int):
        raise TypeError(f"max_pages must be an int or None, not {type(max_pages).__name__}")
    if max_pages < 0:
        raise ValueError(f"max_pages must be >= 0, got {max_pages}")
    return max_pages
