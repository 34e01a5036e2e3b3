"""The interface between the NBD server and what it serves: the Export.

The server speaks the protocol; an Export says what the bytes are. An export
is a size, the capability flags it honours (they become the transmission
flags of the handshake, wire.transmission_flags), the block sizes it
advertises (NBD_INFO_BLOCK_SIZE: `min_block`, `preferred_block`, and
`max_payload`, the longest READ or WRITE, capped by the server), and one
method per command. Every data method is a coroutine because some exports
(RAMster's remote pages) must wait on the network without stopping the
server from serving other requests; `read_now`/`write_now` are the
synchronous fast path an export may offer for what it can serve without
waiting. Offsets and lengths reaching an export are already checked against
`size`, and its failures are ExportErrors carrying the errno the client gets.

BLOCK_STATUS answers in base:allocation flags: STATE_HOLE (nothing
allocated) and STATE_ZERO (reads as zeros); HOLE is both, a page never
written or trimmed. The helpers below (page masks, PageLocks, sync_backing)
serve the page-based exports (swap.py, cache.py).
"""
from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass

from ..units import PAGE_SIZE

# base:allocation flags (NBD proto.md)
STATE_HOLE = 1
STATE_ZERO = 2
HOLE = STATE_HOLE | STATE_ZERO  # never written or trimmed: reads as zeros, nothing allocated
PAGE_MASK = PAGE_SIZE - 1
# Pages invalidated between two yields to the loop during a long TRIM/WRITE_ZEROES.
YIELD_EVERY = 16384


class ExportError(Exception):
    """A request failed; `errno` is sent to the client (EIO, ENOSPC, ...)."""

    def __init__(self, err: int, message: str = ""):
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass
class ExportCounters:
    reads: int = 0
    writes: int = 0
    trims: int = 0
    zeroes: int = 0
    flushes: int = 0
    caches: int = 0
    block_status: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0


class Export:
    """Base class. Subclasses set the capability flags they honour."""

    name: str = ""
    description: str = ""
    size: int = 0
    read_only: bool = False
    can_flush: bool = True
    can_fua: bool = True
    can_trim: bool = True
    can_zero: bool = True
    can_fast_zero: bool = False
    can_cache: bool = True
    # True only if every connection sees one shared state (proto.md: CAN_MULTI_CONN).
    can_multi_conn: bool = True
    # Block sizes advertised with NBD_INFO_BLOCK_SIZE.
    min_block: int = 1
    preferred_block: int = 4096
    # The longest READ or WRITE served; longer ones get EINVAL. Every connection
    # may hold one request this long beyond the node's memory cap (the server's
    # docstring has the arithmetic), so it is kept small: 2 MiB is above what
    # real clients send (Linux's nbd driver splits bios at max_sectors_kb,
    # 1280 KiB by default; nbdcopy asks 256 KiB; QEMU, nbdcopy and libnbd
    # honour the advertised maximum) and large enough that per-request costs
    # vanish against the copy itself. The server caps it at its max_request.
    max_payload: int = 2 * 1024 * 1024

    def __init__(self) -> None:
        self.counters = ExportCounters()

    async def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    # The server tries these first: a request an export can serve without waiting
    # then needs no task of its own, which at high queue depths is a large share
    # of the server's time per request. None / False: use the coroutine.
    def read_now(self, offset: int, length: int) -> bytes | None:
        return None

    def write_now(self, offset: int, data: bytes | memoryview) -> bool:
        return False

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        raise ExportError(errno.EPERM)

    async def flush(self) -> None:
        return None

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        return None

    async def zero(self, offset: int, length: int, fua: bool = False, fast: bool = False) -> None:
        """Write zeroes. With `fast`, raise ExportError(ENOTSUP) unless it is cheap."""
        raise ExportError(errno.ENOTSUP)

    async def cache(self, offset: int, length: int) -> None:
        return None

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Extents (length, flags) covering at least the first byte of the range."""
        return [(length, 0)]

    async def close(self) -> None:
        """Flush what must be durable; called once at server shutdown."""
        await self.flush()


async def sync_backing(backing, pagemap=None) -> None:
    """FLUSH/FUA for an export with a backing file: fsync in a thread, as it may take long
    and the loop must keep serving. The file first, then its page map: the map must never
    claim FILE for bytes not yet on disk."""
    loop = asyncio.get_running_loop()
    if backing.dirty:
        await loop.run_in_executor(None, backing.fsync)
    if pagemap is not None:
        await loop.run_in_executor(None, pagemap.sync)


class PageLocks(dict):
    """The pages writes hold while they wait on the network: page -> a future set at release.

    A partial write is a read-modify-write; if another write of the same page
    (its other half, say) ran between the read and the store, the store would
    put back the old bytes of that half and an acknowledged write would be
    lost. Being a dict, "is any page held" and "is page p held" cost what a
    dict costs on the paths that never wait.
    """

    async def lock(self, p: int) -> None:
        while (fut := self.get(p)) is not None:
            await fut
        self[p] = asyncio.get_running_loop().create_future()

    def unlock(self, p: int) -> None:
        self.pop(p).set_result(None)
