"""frontswap over zcache (SPEC §1.7, §6.1, §6.2).

One persistent pool serves every swap type. A (type, offset) is "swizzled"
into tmem's (oid, index) so that each type spreads over 256 objects:
oid = type << 8 | (offset & 0xFF), index = offset >> 8.
"""
from __future__ import annotations

from ..tmem import INDEX_LIMIT
from ..zcache import Zcache, check_page

SWIZ_BITS = 8
SWIZ_MASK = (1 << SWIZ_BITS) - 1
MAX_TYPE = (1 << 56) - 1  # type << 8 must stay a valid oid word
MAX_OFFSET = (INDEX_LIMIT << SWIZ_BITS) - 1


def swiz(type_: int, offset: int) -> tuple[int, int]:
    return (type_ << SWIZ_BITS) | (offset & SWIZ_MASK), offset >> SWIZ_BITS


def unswiz(oid: int, index: int) -> tuple[int, int]:
    """(type, offset) of a frontswap handle: the writeback tier needs it."""
    return oid >> SWIZ_BITS, (index << SWIZ_BITS) | (oid & SWIZ_MASK)


def _check_int(name: str, value, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in [0, {limit}], got {value}")
    return int(value)


class Frontswap:
    """The frontswap contract: store/load/invalidate swap pages by (type, offset)."""

    def __init__(self, zc: Zcache, exclusive_gets: bool = True, ignore_nonactive: bool = True):
        self.zc = zc
        self.exclusive_gets = bool(exclusive_gets)
        # WasActive filter (§6.1): stores of never-active pages fail with the seed's -ERANGE
        self.ignore_nonactive = bool(ignore_nonactive)
        self.pool_id: int | None = None
        self._pool = None
        self._types: set[int] = set()
        self.loads = 0
        self.succ_stores = 0
        self.failed_stores = 0
        self.invalidates = 0

    def init(self, type_: int) -> None:
        """swapon: the first call creates the shared persistent pool."""
        type_ = _check_int("type", type_, MAX_TYPE)
        if self._pool is None:
            self.pool_id = self.zc.new_pool(persistent=True)
            self._pool = self.zc.pool(self.pool_id)
        self._types.add(type_)

    def _check(self, type_, offset) -> None:
        if type_ not in self._types:
            _check_int("type", type_, MAX_TYPE)
            raise ValueError(f"swap type {type_} was not initialised (call init({type_}) first)")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")

    def store(self, type_: int, offset: int, page, was_active: bool = True) -> bool:
        """True if the page is now in tmem. False: write it to the swap disk (no older copy remains)."""
        self._check(type_, offset)
        page = check_page(page)
        oid, index = swiz(type_, offset)
        if index >= INDEX_LIMIT:  # the seed ignores offsets that do not fit in 32 bits
            self.failed_stores += 1
            return False
        if not was_active and self.ignore_nonactive:
            self.zc.pers_nonactive_puts_ignored += 1
            self.failed_stores += 1
            # the page goes to disk, so an older copy here would be stale
            self.zc.tmem.flush_page(self._pool, oid, index)
            return False
        if self.zc.put_page(self.pool_id, oid, index, page):
            self.succ_stores += 1
            return True
        self.failed_stores += 1
        return False

    def load(self, type_: int, offset: int) -> bytes | None:
        """The page, or None. With exclusive gets the copy leaves tmem (§6.2)."""
        self._check(type_, offset)
        oid, index = swiz(type_, offset)
        if index >= INDEX_LIMIT:
            return None
        page = self.zc.tmem.get(self._pool, oid, index, self.exclusive_gets)
        if page is not None:
            self.loads += 1
        return page

    def invalidate_page(self, type_: int, offset: int) -> bool:
        self._check(type_, offset)
        oid, index = swiz(type_, offset)
        if index < INDEX_LIMIT and self.zc.tmem.flush_page(self._pool, oid, index):
            self.invalidates += 1
            return True
        return False

    def invalidate_area(self, type_: int) -> None:
        """swapoff: drop every page of the type (its 256 swizzled objects)."""
        self._check(type_, 0)
        for low in range(SWIZ_MASK + 1):
            self.zc.tmem.flush_object(self._pool, (type_ << SWIZ_BITS) | low)
        self._types.discard(type_)

    def stats(self) -> dict[str, int]:
        return {
            "frontswap.loads": self.loads,
            "frontswap.succ_stores": self.succ_stores,
            "frontswap.failed_stores": self.failed_stores,
            "frontswap.invalidates": self.invalidates,
        }
