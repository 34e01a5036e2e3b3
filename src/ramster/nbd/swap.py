"""The swap export: an NBD block device whose pages live in frontswap's pool.

One export is one swap type: page p of the device is frontswap slot
(swap_type, p), which frontswap swizzles into tmem's (oid, index). A page's
current version is in exactly one of three places, and the export always
knows which:

    memory     frontswap holds it (compressed, zero-filled, huge, or on a peer)
    the file   the swap disk (storage/swapdisk.py) holds it at p * PAGE_SIZE
    nowhere    its last write failed: it is in `lost`, and reads fail with EIO
               until it is written or trimmed again, so stale or zero data is
               never passed off as current

Without a backing file every page is accepted (incompressible ones are kept
as they are, zram's "huge" pages), only a full budget refuses a write
(ENOSPC, and the page is lost), and nothing survives a restart. With one,
refused stores and the ouroboros writeback (storage/writeback.py, which
reaches the swap disk directly) put the page in the file, and the page-state
map in the file (storage/pagemap.py) records where each current version is:
a FLUSH (or FUA) makes file and map durable; after kill -9 or a crash a page
reads its last acknowledged version from the file, or EIO if that version
lived only in memory or on peers, never an older one; a clean stop first
writes every page from memory to the file, so after it nothing is lost.

Reads do not take pages out of tmem (the node's Frontswap has
exclusive_gets=False). The kernel's exclusive gets rely on frontswap's
per-slot bit and on re-dirtying the page so it is stored again on the next
swap-out; a block device has neither: its client may read a block any number
of times and expects it to stay, and an exclusive get followed by a re-store
would cost a compression per read and could fail under pressure, losing the
only copy. Pages leave memory when the client says they are dead: the kernel
discards freed swap slots (`swapon --discard=pages`), which arrive as TRIM.

Requests work in 4 KiB pages; a request that does not cover whole pages is a
read-modify-write on the partial pages at either end, under the page's write
lock (`_busy`) when it must wait on the network. Everything runs on the
node's one event loop and touches zcache synchronously (no await between
looking at a page and changing it), so requests never see each other's
half-done pages. Only fsync leaves the loop, for a thread. The export is one
file (about 500 lines) because the three places above and the page locks are
one invariant: every path that moves a page between them is read side by side.
"""
from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass

from ..frontends.frontswap import SWIZ_BITS, SWIZ_MASK, Frontswap, swiz
from ..lograte import Throttled
from ..pampd import ON_PEER, ZERO_FILLED
from ..storage.backing import BackingFile
from ..storage.pagemap import FILE, LOST, MEMORY
from ..storage.swapdisk import SwapDisk
from ..storage.writeback import SwapWriteback
from ..units import PAGE_SHIFT, PAGE_SIZE
from .base import (HOLE, PAGE_MASK, STATE_ZERO, YIELD_EVERY, Export, ExportCounters, ExportError, PageLocks,
                   sync_backing)

ZERO_PAGE = bytes(PAGE_SIZE)
# Pages looked at by one BLOCK_STATUS call; the reply may cover less than asked (proto.md).
STATUS_SCAN_PAGES = 8192

log = logging.getLogger("ramster.exports")


@dataclass
class SwapCounters(ExportCounters):
    backing_writes: int = 0  # pages that went to the backing file because tmem refused them
    backing_reads: int = 0  # pages read from the backing file
    written_back: int = 0  # pages moved from memory to the backing file (writeback, stop)
    # pages neither tmem nor a backing file took (now "lost"); a page is counted
    # once however often the client retries it, the requests in `errors`
    failed_writes: int = 0


class SwapExport(Export):
    """A swap device: frontswap stores into the node's persistent pool, one swap type per export."""

    can_fast_zero = True

    def __init__(self, name: str, size: int, frontswap: Frontswap, swap_type: int,
                 backing: BackingFile | None = None, description: str = "", *,
                 writeback: SwapWriteback | None = None):
        """With a backing file and `writeback`, the node's writeback sink, the export
        registers its swap disk there: pages Zcache evicts go to the file directly."""
        super().__init__()
        self.counters = SwapCounters()
        self.name = name
        self.size = size
        self.description = description or f"ramster swap ({'with' if backing else 'no'} backing file)"
        self.kind = "swap"
        self.frontswap = frontswap
        self.swap_type = swap_type
        self.backing = backing
        # the file and the map of where each page's current version is; None without a backing file
        self.disk = SwapDisk(name, backing, size, self.counters) if backing is not None else None
        self.pagemap = self.disk.pagemap if self.disk is not None else None
        self._states = self.disk.states if self.disk is not None else None
        # pages without a current version: reads fail with EIO
        self.lost: set[int] = set(self.pagemap.not_current()) if self.pagemap is not None else set()
        if self.lost:
            log.warning("%s: %d page(s) had their last version in memory when the node stopped; "
                        "they read as EIO until written again", name, len(self.lost))
        frontswap.init(swap_type, no_swap_disk=backing is None)
        self._zc = frontswap.zc
        self._pool = frontswap.zc.pool(frontswap.pool_id)
        self._type_bits = swap_type << SWIZ_BITS
        self._file_errors = self.disk.errors if self.disk is not None else Throttled(log)
        self._refusals = Throttled(log, logging.WARNING)
        self._read_errors = Throttled(log)
        self._busy = PageLocks()  # pages a write holds across an await
        self.remote = None  # attach_remote
        self.room_timeout = 5.0
        if writeback is not None and self.disk is not None:
            writeback.register(self._pool, swap_type, self.disk)

    def attach_remote(self, remote, room_timeout: float) -> None:
        """The node runs in a RAMster cluster (remote/ramster.py): pages on peers are
        fetched through `remote`, and a store that finds memory full waits up to
        `room_timeout` seconds for it to move frames to peers before giving up."""
        self.remote = remote
        self.room_timeout = room_timeout

    # ---- one page -------------------------------------------------------------------

    def _page(self, p: int):
        """The current contents of page p, or None if it was lost."""
        page = self.frontswap.load(self.swap_type, p)
        if page is not None:
            return page
        if p in self.lost:
            return None
        if self.backing is not None:
            self.counters.backing_reads += 1
            return self.backing.pread(p << PAGE_SHIFT, PAGE_SIZE)
        return ZERO_PAGE

    def _read_page(self, p: int):
        page = self._page(p)
        if page is None:
            raise ExportError(errno.EIO, f"page {p} was lost: its last write failed")
        return page

    async def _remote_page(self, p: int):
        """Page p, which a peer holds (RAMster)."""
        from ..remote.ramster import RemoteError

        try:
            return await self.remote.get(self._pool, *swiz(self.swap_type, p))
        except RemoteError as e:
            if self._states is not None and self._states[p] == FILE:
                # remotify wrote the page through to the swap disk as well
                self.counters.backing_reads += 1
                return self.backing.pread(p << PAGE_SHIFT, PAGE_SIZE)
            why = "" if self._states is None else f" (the swap disk's copy is {'stale' if self._states[p] == MEMORY else 'lost'})"
            self._read_errors("%s: reading page %d failed: %s%s", self.name, p, e, why)
            raise ExportError(errno.EIO, f"page {p}: {e}") from None

    async def _page_async(self, p: int):
        while True:
            page = self._page(p)
            if page is not ON_PEER:
                return page
            page = await self._remote_page(p)
            if page is not None:
                return page
            # the slot changed while the fetch was on the wire: look again

    async def _store_async(self, p: int, page) -> bool:
        """Store one whole page; False if nothing took it (the page is then lost).
        In a cluster, a store that finds memory full first waits (bounded) for
        RAMster to move frames to peers. Until the new version is stored or
        given up, the last acknowledged one stays readable (keep_old): a read
        that comes meanwhile must not find the page gone."""
        zc = self._zc
        short = zc.pers_ate_eph_failed
        if self.frontswap.store(self.swap_type, p, page, True, True):
            self._stored(p)
            return True
        # wait only when memory ran out: a page that compresses poorly stays refused
        if self.remote is not None and zc.pers_ate_eph_failed != short:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.room_timeout
            while True:
                left = deadline - loop.time()
                if left <= 0 or not await self.remote.make_room(left):
                    break
                if self.frontswap.store(self.swap_type, p, page, True, True):
                    self._stored(p)
                    return True
        self.frontswap.invalidate_page(self.swap_type, p)  # given up: the old version must not survive
        return self._fall_back(p, page)

    def _stored(self, p: int) -> None:
        """Page p's current version is now in memory: before the write is acknowledged,
        the map says the file's copy is stale."""
        if self.lost:
            self.lost.discard(p)
        if self._states is not None:
            self._states[p] = MEMORY

    def _fall_back(self, p: int, page) -> bool:
        # The failed store flushed any older tmem copy, so the file (or "lost") is now the truth.
        if self.disk is not None:
            e = self.disk.write_page(p, page)
            if e is not None:
                self._file_errors("%s: writing page %d to %s failed: %s", self.name, p, self.backing.path,
                                  e.strerror or e)
            else:
                self.counters.backing_writes += 1
                if self.lost:
                    self.lost.discard(p)
                return True
            self._states[p] = LOST
        if p not in self.lost:
            self.lost.add(p)
            self.counters.failed_writes += 1
        self._refusals("%s: a write of page %d was refused: %s", self.name, p, self._no_room())
        return False

    def _no_room(self) -> str:
        """Why a write found no home: what was full, in the words the client's user needs."""
        budget = self._zc.max_pageframes * PAGE_SIZE >> 20
        where = f"the node's {budget} MiB of memory is full of swap pages"
        if self.remote is not None:
            where += f" and no peer took pages within {self.room_timeout:g} s"
        if self.backing is not None:
            return f"{where} and the backing file {self.backing.path} is full or failing"
        return f"{where} and this export has no backing file"

    # ---- requests ---------------------------------------------------------------------

    def read_now(self, offset: int, length: int):
        if length != PAGE_SIZE or offset & PAGE_MASK:
            return None
        page = self._read_page(offset >> PAGE_SHIFT)
        return None if page is ON_PEER else page

    def write_now(self, offset: int, data) -> bool:
        # whole pages only; partial ones may need a remote page first
        length = len(data)
        if length & PAGE_MASK or offset & PAGE_MASK or not length:
            return False
        if self._busy:  # a page of this request is held by a write waiting on the network
            first = offset >> PAGE_SHIFT
            if any(q in self._busy for q in range(first, first + (length >> PAGE_SHIFT))):
                return False
        store = self.frontswap.store
        swap_type = self.swap_type
        p = offset >> PAGE_SHIFT
        if length == PAGE_SIZE:
            pages = (data if type(data) is bytes else bytes(data),)
        else:
            mv = memoryview(data)
            pages = [mv[i:i + PAGE_SIZE] for i in range(0, length, PAGE_SIZE)]
        failed = False
        # in a cluster a refused store is retried by the asynchronous write, which may
        # wait: the old version must stay readable meanwhile
        keep_old = self.remote is not None
        for page in pages:
            if store(swap_type, p, page, True, keep_old):
                self._stored(p)
            elif self.remote is not None:
                # the asynchronous write waits for RAMster to make room; it rewrites
                # every page of the request, the ones stored here included
                return False
            # the refused store dropped the old copy: the page's new home is
            # decided now, before any other request can look at it
            elif not self._fall_back(p, page if type(page) is bytes else bytes(page)):
                failed = True
            p += 1
        if failed:
            raise ExportError(errno.ENOSPC, self._no_room())
        return True

    async def read(self, offset: int, length: int):
        if length == PAGE_SIZE and not offset & PAGE_MASK:
            page = self._read_page(offset >> PAGE_SHIFT)
            if page is not ON_PEER:
                return page
            page = await self._page_async(offset >> PAGE_SHIFT)
            if page is None:
                raise ExportError(errno.EIO, f"page {offset >> PAGE_SHIFT} was lost: its last write failed")
            return page
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        start = offset & PAGE_MASK
        if first == last:
            page = await self._page_async(first)
            if page is None:
                raise ExportError(errno.EIO, f"page {first} was lost: its last write failed")
            return page[start:start + length]
        buf = bytearray((last - first + 1) << PAGE_SHIFT)
        load = self.frontswap.load
        swap_type = self.swap_type
        lost = self.lost
        backing = self.backing
        run = -1  # first page of a run of pages to read from the file
        for p in range(first, last + 1):
            page = load(swap_type, p)
            if page is ON_PEER:
                page = await self._page_async(p)
                if page is None:
                    raise ExportError(errno.EIO, f"page {p} was lost: its last write failed")
            if page is not None:
                if run >= 0:
                    self._read_run(buf, first, run, p)
                    run = -1
                i = (p - first) << PAGE_SHIFT
                buf[i:i + PAGE_SIZE] = page
            elif p in lost:
                raise ExportError(errno.EIO, f"page {p} was lost: its last write failed")
            elif backing is not None and run < 0:
                run = p
        if run >= 0:
            self._read_run(buf, first, run, last + 1)
        if start == 0 and len(buf) == length:
            return buf
        return memoryview(buf)[start:start + length]

    def _read_run(self, buf: bytearray, first: int, p: int, stop: int) -> None:
        self.counters.backing_reads += stop - p
        i = (p - first) << PAGE_SHIFT
        self.backing.preadinto(memoryview(buf)[i:(stop - first) << PAGE_SHIFT], p << PAGE_SHIFT)

    async def write(self, offset: int, data, fua: bool = False) -> None:
        length = len(data)
        if length == PAGE_SIZE and not offset & PAGE_MASK:
            if type(data) is not bytes:
                data = bytes(data)
            p = offset >> PAGE_SHIFT
            await self._busy.lock(p)
            try:
                ok = await self._store_async(p, data)
            finally:
                self._busy.unlock(p)
            if not ok:
                raise ExportError(errno.ENOSPC, self._no_room())
        else:
            await self._write_span(offset, data)
        if fua and self.backing is not None:
            await sync_backing(self.backing, self.pagemap)

    async def _write_span(self, offset: int, data) -> None:
        # zcache takes pages as bytes: slicing bytes copies once, a view is copied explicitly
        mv = data if type(data) is bytes else memoryview(data)
        failed = 0
        end = offset + len(mv)
        p = offset >> PAGE_SHIFT
        pos = 0
        while offset < end:
            s = offset & PAGE_MASK
            n = min(PAGE_SIZE - s, end - offset)
            await self._busy.lock(p)
            try:
                if n == PAGE_SIZE:
                    ok = await self._store_async(p, bytes(mv[pos:pos + PAGE_SIZE]))
                else:
                    old = await self._page_async(p)
                    if old is None:
                        # the rest of a lost page is unknown, so the page cannot be completed
                        failed = failed or errno.EIO
                        ok = True
                    else:
                        page = bytearray(old)
                        page[s:s + n] = mv[pos:pos + n]
                        ok = await self._store_async(p, bytes(page))
            finally:
                self._busy.unlock(p)
            if not ok:
                failed = errno.ENOSPC
            offset += n
            pos += n
            p += 1
        if failed:
            raise ExportError(failed,
                       self._no_room() if failed == errno.ENOSPC else "a partial write hit a page that was lost")

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        # Only whole pages can be dropped; the contents of the rest are the client's to forget.
        first = (offset + PAGE_MASK) >> PAGE_SHIFT
        stop = (offset + length) >> PAGE_SHIFT
        if offset + length == self.size:
            stop = (self.size + PAGE_MASK) >> PAGE_SHIFT
        if first < stop:
            await self._drop(first, stop)
        if fua and self.backing is not None:
            await sync_backing(self.backing, self.pagemap)

    async def zero(self, offset: int, length: int, fua: bool = False, fast: bool = False) -> None:
        end = offset + length
        first = (offset + PAGE_MASK) >> PAGE_SHIFT
        stop = end >> PAGE_SHIFT
        if first >= stop:  # within one page, or straddling two without covering either
            await self._write_span(offset, bytes(length))
        else:
            if offset < first << PAGE_SHIFT:
                await self._write_span(offset, bytes((first << PAGE_SHIFT) - offset))
            if end > stop << PAGE_SHIFT:
                await self._write_span(stop << PAGE_SHIFT, bytes(end - (stop << PAGE_SHIFT)))
            # a dropped page reads as zeros: from the file's new hole, or from nothing
            await self._drop(first, stop)
        if fua and self.backing is not None:
            await sync_backing(self.backing, self.pagemap)

    async def _drop(self, first: int, stop: int) -> None:
        fs = self.frontswap
        npages = (self.size + PAGE_MASK) >> PAGE_SHIFT
        if first == 0 and stop >= npages:
            # the whole device (swapon --discard, blkdiscard): drop the type's 256 objects at once
            fs.invalidate_area(self.swap_type)
            fs.init(self.swap_type, no_swap_disk=self.backing is None)
            self.lost.clear()
        else:
            invalidate = fs.invalidate_page
            swap_type = self.swap_type
            for chunk in range(first, stop, YIELD_EVERY):
                for p in range(chunk, min(chunk + YIELD_EVERY, stop)):
                    invalidate(swap_type, p)
                if chunk + YIELD_EVERY < stop:
                    await asyncio.sleep(0)  # a long discard must not stall the other clients
            lost = self.lost
            if lost:
                if len(lost) < stop - first:
                    self.lost = {x for x in lost if not first <= x < stop}
                else:
                    for p in range(first, stop):
                        lost.discard(p)
        if self.backing is not None:
            try:
                self.backing.punch_hole(first << PAGE_SHIFT,
                                        min(stop << PAGE_SHIFT, self.size) - (first << PAGE_SHIFT))
            except OSError as e:
                # the file may still hold the old bytes: they must not be read as current
                self.pagemap.set_range(first, stop, LOST)
                self.lost.update(range(first, stop))
                raise ExportError(errno.EIO, f"punching a hole in {self.backing.path}: {e.strerror}") from None
            self.pagemap.set_range(first, stop, FILE)  # the hole is the current version

    async def cache(self, offset: int, length: int) -> None:
        return None  # every page already is in memory or in the file

    async def flush(self) -> None:
        if self.backing is not None:
            await sync_backing(self.backing, self.pagemap)

    async def close(self) -> None:
        """A clean stop: every page whose current version is in memory goes to the
        file, so a restart on the same file loses nothing; then file and map are synced."""
        if self.pagemap is None:
            return
        states = self._states
        kept = 0
        for p in self.pagemap.not_current():
            if states[p] != MEMORY:
                continue
            page = self.frontswap.load(self.swap_type, p)
            if page is ON_PEER:
                try:
                    page = await self._remote_page(p)
                except ExportError:
                    page = None
            if page is None or not self.disk.write_back(p, page):
                kept += 1
        if kept:
            log.error("%s: %d page(s) could not be written to %s at stop; they will read as EIO",
                      self.name, kept, self.backing.path)
        if self.backing.dirty:
            self.backing.fsync()
        self.pagemap.close()

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        end = min(offset + length, self.size)
        first = offset >> PAGE_SHIFT
        stop = min(((end - 1) >> PAGE_SHIFT) + 1, first + STATUS_SCAN_PAGES)
        lookup = self._zc.lookup
        pool = self._pool
        type_bits = self._type_bits
        lost = self.lost
        runs = self.backing.data_runs(first << PAGE_SHIFT, stop << PAGE_SHIFT) if self.backing else None
        run_stop = -1
        run_state = HOLE
        extents: list[list[int]] = []
        for p in range(first, stop):
            pd = lookup(pool, type_bits | (p & SWIZ_MASK), p >> SWIZ_BITS)
            if pd:
                st = STATE_ZERO if pd == ZERO_FILLED else 0
            elif lost and p in lost:
                st = 0  # reads fail: not a hole a client may skip
            elif runs is not None:
                while (p << PAGE_SHIFT) >= run_stop:
                    _, run_stop, is_data = next(runs)
                    run_state = 0 if is_data else HOLE
                st = run_state
            else:
                st = HOLE
            if extents and extents[-1][1] == st:
                extents[-1][0] += PAGE_SIZE
            else:
                extents.append([PAGE_SIZE, st])
        extents[0][0] -= offset & PAGE_MASK
        return [(n, st) for n, st in extents]

    def gauges(self) -> dict[str, int]:
        """Current values the metrics show beside the counters."""
        return {"lost_pages": len(self.lost)}
