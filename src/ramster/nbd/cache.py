"""The cache export: a disk image in a backing file, its hot pages cached by cleancache.

The file is the truth; memory holds only clean copies of what the file
says. Reads look in the cache first and fill it from the file on a miss;
writes go to the file first and then refresh (or drop, on failure) the
cached copies. So the cache can lose any page at any time (ephemeral frames
are the first to be eaten when swap exports need room) without losing data,
and BLOCK_STATUS is answered from the file's holes alone.

Page p of the export is cleancache's (inode p >> 32, index p & 0xFFFFFFFF)
in the export's own filesystem id (cleancache indexes are 32 bits).
"""
from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass

from ..frontends.cleancache import Cleancache
from ..storage.backing import BackingFile
from ..units import PAGE_SHIFT, PAGE_SIZE
from .base import HOLE, PAGE_MASK, YIELD_EVERY, Export, ExportCounters, ExportError, sync_backing

_CC_SHIFT = 32
_CC_MASK = (1 << _CC_SHIFT) - 1


@dataclass
class CacheCounters(ExportCounters):
    cache_hits: int = 0  # pages read from memory
    cache_misses: int = 0  # pages read from the backing file (and then cached)
    backing_reads: int = 0  # pages read from the backing file: misses and prefetches
    backing_writes: int = 0  # pages written to the backing file (every write goes through)


class CacheExport(Export):
    """A disk image behind a cleancache pool: reads are cached, writes go through to the file.

    Memory only ever holds clean copies of what the file says, so the cache can
    lose any page at any time (ephemeral frames are the first to be eaten
    when swap exports need room) without losing data.
    """

    def __init__(self, name: str, size: int, cleancache: Cleancache, backing: BackingFile, description: str = ""):
        super().__init__()
        self.counters = CacheCounters()
        self.name = name
        self.size = size
        self.description = description or f"ramster cache over {backing.path}"
        self.kind = "cache"
        self.cleancache = cleancache
        self.backing = backing
        self.can_fast_zero = backing.punch_supported
        self.fsid = cleancache.init_fs()

    # ---- pages in memory ---------------------------------------------------------------

    def _cached(self, p: int):
        """The cached copy of page p, kept cached, or None."""
        # Cleancache gets are exclusive; a block device must keep serving hits, so
        # the page is peeked at, left in place (its frame becomes the most recently
        # used: the LRU then evicts cold pages first).
        return self.cleancache.peek_page(self.fsid, p >> _CC_SHIFT, p & _CC_MASK)

    def _fill(self, p: int, page) -> None:
        if type(page) is not bytes:  # zcache takes pages as bytes
            page = bytes(page)
        self.cleancache.put_page(self.fsid, p >> _CC_SHIFT, p & _CC_MASK, page)

    def _forget(self, p: int) -> None:
        self.cleancache.invalidate_page(self.fsid, p >> _CC_SHIFT, p & _CC_MASK)

    # ---- requests ----------------------------------------------------------------------

    async def read(self, offset: int, length: int):
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        counters = self.counters
        if first == last:
            page = self._cached(first)
            if page is None:
                counters.cache_misses += 1
                counters.backing_reads += 1
                page = self.backing.pread(first << PAGE_SHIFT, PAGE_SIZE)
                self._fill(first, page)
            else:
                counters.cache_hits += 1
            if length == PAGE_SIZE:
                return page
            s = offset & PAGE_MASK
            return page[s:s + length]
        buf = bytearray((last - first + 1) << PAGE_SHIFT)
        mv = memoryview(buf)
        run = -1
        for p in range(first, last + 2):
            page = self._cached(p) if p <= last else None
            if page is not None:
                counters.cache_hits += 1
                i = (p - first) << PAGE_SHIFT
                buf[i:i + PAGE_SIZE] = page
            if (page is not None or p > last) and run >= 0:
                self._read_run(mv, first, run, p)
                run = -1
            elif page is None and run < 0 and p <= last:
                run = p
        s = offset & PAGE_MASK
        if s == 0 and len(buf) == length:
            return buf
        return mv[s:s + length]

    def _read_run(self, mv: memoryview, first: int, p: int, stop: int) -> None:
        i = (p - first) << PAGE_SHIFT
        self.backing.preadinto(mv[i:(stop - first) << PAGE_SHIFT], p << PAGE_SHIFT)
        self.counters.cache_misses += stop - p
        self.counters.backing_reads += stop - p
        for q in range(p, stop):
            j = (q - first) << PAGE_SHIFT
            self._fill(q, mv[j:j + PAGE_SIZE])

    async def write(self, offset: int, data, fua: bool = False) -> None:
        try:
            self.backing.pwrite(offset, data)
        except OSError as e:
            # the file may hold part of the write now; cached copies of it would be stale
            self._forget_span(offset, offset + len(data))
            raise ExportError(errno.ENOSPC if e.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO,
                       f"writing {self.backing.path}: {e.strerror}") from None
        mv = memoryview(data)
        end = offset + len(mv)
        self.counters.backing_writes += ((end - 1) >> PAGE_SHIFT) - (offset >> PAGE_SHIFT) + 1 if end > offset else 0
        p = offset >> PAGE_SHIFT
        pos = 0
        while offset < end:
            s = offset & PAGE_MASK
            n = min(PAGE_SIZE - s, end - offset)
            if n == PAGE_SIZE:
                self._fill(p, mv[pos:pos + PAGE_SIZE])
            else:
                old = self.cleancache.get_page(self.fsid, p >> _CC_SHIFT, p & _CC_MASK)
                if old is not None:
                    page = bytearray(old)
                    page[s:s + n] = mv[pos:pos + n]
                    self._fill(p, page)
            offset += n
            pos += n
            p += 1
        if fua:
            await sync_backing(self.backing)

    def _forget_span(self, offset: int, end: int) -> None:
        for p in range(offset >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
            self._forget(p)

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        first = (offset + PAGE_MASK) >> PAGE_SHIFT
        stop = (offset + length) >> PAGE_SHIFT
        if offset + length == self.size:
            stop = (self.size + PAGE_MASK) >> PAGE_SHIFT
        if first < stop:
            await self._drop(first, stop)
        if fua:
            await sync_backing(self.backing)

    async def zero(self, offset: int, length: int, fua: bool = False, fast: bool = False) -> None:
        if fast and not self.backing.punch_supported:
            raise ExportError(errno.ENOTSUP, "zeroing would write every byte")
        end = offset + length
        first = (offset + PAGE_MASK) >> PAGE_SHIFT
        stop = end >> PAGE_SHIFT
        if end == self.size:
            stop = (self.size + PAGE_MASK) >> PAGE_SHIFT
        if first >= stop:
            await self.write(offset, bytes(length))
        else:
            if offset < first << PAGE_SHIFT:
                await self.write(offset, bytes((first << PAGE_SHIFT) - offset))
            if end > stop << PAGE_SHIFT:
                await self.write(stop << PAGE_SHIFT, bytes(end - (stop << PAGE_SHIFT)))
            await self._drop(first, stop)
        if fua:
            await sync_backing(self.backing)

    async def _drop(self, first: int, stop: int) -> None:
        """Pages [first, stop) become a hole in the file and leave memory."""
        try:
            self.backing.punch_hole(first << PAGE_SHIFT, min(stop << PAGE_SHIFT, self.size) - (first << PAGE_SHIFT))
        except OSError as e:
            raise ExportError(errno.EIO, f"punching a hole in {self.backing.path}: {e.strerror}") from None
        npages = (self.size + PAGE_MASK) >> PAGE_SHIFT
        cc = self.cleancache
        if first == 0 and stop >= npages:
            cc.invalidate_fs(self.fsid)
            self.fsid = cc.init_fs()
            return
        for chunk in range(first, stop, YIELD_EVERY):
            for p in range(chunk, min(chunk + YIELD_EVERY, stop)):
                self._forget(p)
            if chunk + YIELD_EVERY < stop:
                await asyncio.sleep(0)

    async def cache(self, offset: int, length: int) -> None:
        """Prefetch: bring pages that are not in memory into the cache."""
        zc = self.cleancache.zc
        first = offset >> PAGE_SHIFT
        # more than twice the budget would only evict what this very request brought in
        stop = min(((offset + length - 1) >> PAGE_SHIFT) + 1, first + 2 * zc.max_pageframes)
        for p in range(first, stop):
            if not zc.contains(self.fsid, p >> _CC_SHIFT, p & _CC_MASK):
                self._fill(p, self.backing.pread(p << PAGE_SHIFT, PAGE_SIZE))
                self.counters.backing_reads += 1
            if not (p - first + 1) % 1024:
                await asyncio.sleep(0)  # the pool may be replaced meanwhile: looked up per page

    async def flush(self) -> None:
        await sync_backing(self.backing)

    async def close(self) -> None:
        if self.backing.dirty:
            self.backing.fsync()

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        # memory holds only copies of the file, so the file alone says where data is
        end = min(offset + length, self.size)
        out = []
        for start, stop, is_data in self.backing.data_runs(offset, end):
            out.append((stop - start, 0 if is_data else HOLE))
            if len(out) >= 1024:
                break
        return out

    def gauges(self) -> dict[str, int]:
        return {}
