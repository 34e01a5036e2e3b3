"""frontswap over zcache (SPEC §1.7, §6.1, §6.2).

One persistent pool serves every swap type. A (type, offset) is "swizzled"
into tmem's (oid, index) so that each type spreads over 256 objects:
oid = type << 8 | (offset & 0xFF), index = offset >> 8.
"""
from __future__ import annotations

from ..units import PAGE_SIZE
from ..zcache import INDEX_LIMIT, Zcache, check_page

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
        # initialised swap types -> whether refused pages have no swap disk to
        # go to (then incompressible pages are kept as huge pages)
        self._types: dict[int, bool] = {}
        self.loads = 0
        self.succ_stores = 0
        self.failed_stores = 0
        self.invalidates = 0

    def init(self, type_: int, no_swap_disk: bool = False) -> None:
        """swapon: the first call creates the shared persistent pool.

        no_swap_disk: the caller has nowhere to put a page this store refuses
        (the kernel always has its swap disk; an NBD swap export may not), so
        a page is refused only when memory is full, never for its content.
        """
        type_ = _check_int("type", type_, MAX_TYPE)
        if self.pool_id is None:
            self.pool_id = self.zc.new_pool(persistent=True)
            self._pool = self.zc.pool(self.pool_id)
        self._types[type_] = bool(no_swap_disk)

    def _known(self, type_, offset) -> bool:
        """Whether `type_` is initialised; TypeError/ValueError for arguments that are not a swap slot."""
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if type_ in self._types:
            return True
        _check_int("type", type_, MAX_TYPE)
        return False

    def store(self, type_: int, offset: int, page, was_active: bool = True, keep_old: bool = False) -> bool:
        """True if the page is now in tmem. False: write it to the swap disk (no older copy remains,
        unless keep_old: then the caller retries or invalidates it).
        A type that is not initialised (never, or not since invalidate_area) refuses every store."""
        huge = self._types.get(type_)
        if huge is None or type(offset) is not int or offset < 0:
            if not self._known(type_, offset):
                check_page(page)
                self.failed_stores += 1
                return False
            huge = self._types[type_]
        if type(page) is not bytes or len(page) != PAGE_SIZE:
            page = check_page(page)
        oid, index = swiz(type_, offset)
        if index >= INDEX_LIMIT:  # the seed ignores offsets that do not fit in 32 bits
            self.failed_stores += 1
            return False
        if not was_active and self.ignore_nonactive:
            self.failed_stores += 1
            # the page goes to disk, so an older copy here would be stale: zcache flushes it
            self.zc.nonactive_put(self.pool_id, oid, index)
            return False
        if self.zc.put_page(self.pool_id, oid, index, page, huge, keep_old):
            self.succ_stores += 1
            return True
        self.failed_stores += 1
        return False

    def load(self, type_: int, offset: int):
        """The page, or None: a miss, also for a type that is not initialised (as in the seed).
        With exclusive gets the copy leaves tmem (§6.2). In a RAMster cluster, ON_PEER
        (falsy) for a page that lives on a peer: RAMster's asynchronous get reads it."""
        if (type_ not in self._types or type(offset) is not int or offset < 0) and not self._known(type_, offset):
            return None
        oid, index = swiz(type_, offset)
        if index >= INDEX_LIMIT:
            return None
        page = self.zc.get_pool_page(self._pool, oid, index, self.exclusive_gets)
        if page:  # neither a miss nor ON_PEER
            self.loads += 1
        return page

    def invalidate_page(self, type_: int, offset: int) -> bool:
        if not self._known(type_, offset):
            return False
        oid, index = swiz(type_, offset)
        if index < INDEX_LIMIT and self.zc.flush_page(self.pool_id, oid, index):
            self.invalidates += 1
            return True
        return False

    def invalidate_area(self, type_: int) -> None:
        """swapoff: drop every page of the type (its 256 swizzled objects).
        Until init(type_) again, loads of it miss and stores are refused."""
        if not self._known(type_, 0):
            return
        for low in range(SWIZ_MASK + 1):
            self.zc.flush_object(self.pool_id, (type_ << SWIZ_BITS) | low)
        del self._types[type_]

    def stats(self) -> dict[str, int]:
        return {
            "frontswap.loads": self.loads,
            "frontswap.succ_stores": self.succ_stores,
            "frontswap.failed_stores": self.failed_stores,
            "frontswap.invalidates": self.invalidates,
        }
