"""What survives a restart of a swap export: one state byte per page, kept in its backing file.

A swap export's pages live in memory (compressed), on peers, or in its
backing file (the swap disk). Once the node stops, memory is gone, and the file
must not be taken for the truth on its own: it may hold an older version of a
page whose newer version lived only in memory. So every page has a state:

    FILE    0  the file holds the page's current version (or it was never
               written, and the file's hole reads as zeros)
    MEMORY  1  a newer version lives only in memory or on peers: the file's
               copy, if any, is stale
    LOST    2  the page's last write failed: no current version exists

At start, MEMORY and LOST both mean "no current version": such a page reads
as EIO until it is written or trimmed again, never as the older bytes.

Ordering keeps the map honest at every instant: MEMORY is set before a write
to memory is acknowledged, FILE only after the page's bytes are in the file.
The map is a MAP_SHARED mapping of the file, so a store to it is in the
kernel's page cache at once and survives kill -9 of the node. FLUSH fsyncs
the file first and the map second, so after a power loss the map does not
claim FILE for data that had not reached the disk (of the writes acknowledged
before that FLUSH; later ones may be lost, as on any disk).

The map lives in the backing file itself, after the export's data, so it
cannot be deleted or separated from the data by a copy, rename or hard link:

    [0, map_off)                     the export's pages (map_off >= export size)
    [map_off, map_off + maplen)      one byte per page, maplen a multiple of 4096
    [map_off + maplen, + 4096)       trailer: magic, version, export size, map_off

The trailer is the last page of the file (or block device). A file without one
holds plain data, all of it current: a map of FILE bytes is added after it.
"""
from __future__ import annotations

import mmap
import os
import re
import stat
import struct

from .backing import BackingFile
from ..units import PAGE_SIZE

FILE, MEMORY, LOST = 0, 1, 2
MAGIC = b"ramster-pagemap\0"
VERSION = 1
_TRAILER = struct.Struct("<16sIQQQ")  # magic, version, export size, map offset, pages
_NOT_FILE = re.compile(rb"[^\x00]")


class PageMapError(ValueError):
    """The backing file holds the map of a different export, or has no room for one."""


def _round_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


class PageStateMap:
    """The state byte of every page of one swap export, mapped from its backing file.

    `states` is the mmap itself: `states[p]` reads or sets page p's state at
    the cost of one item access (the store path uses it directly).
    """

    def __init__(self, backing: BackingFile, size: int):
        self.backing = backing
        self.pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
        maplen = _round_up(max(self.pages, 1))
        fd = backing.fd
        st = os.fstat(fd)
        block = stat.S_ISBLK(st.st_mode)
        end = os.lseek(fd, 0, os.SEEK_END) // PAGE_SIZE * PAGE_SIZE if block else st.st_size
        found = self._read_trailer(fd, end)
        if found is not None:
            old_size, map_off, pages = found
            if old_size != size:
                raise PageMapError(f"{backing.path} holds the pages of a swap export of {old_size} bytes, "
                                   f"not {size}: give the export that size again, or use a new file")
            self.created = False
        else:
            if block:
                map_off = end - PAGE_SIZE - maplen
                if map_off < size:
                    raise PageMapError(f"block device {backing.path} has {end} bytes: a {size}-byte swap export "
                                       f"needs {size + maplen + PAGE_SIZE} (its data, then its page map)")
            else:
                map_off = max(_round_up(end), _round_up(size))
                os.ftruncate(fd, map_off + maplen + PAGE_SIZE)  # sparse: nothing is allocated yet
                if os.fstat(fd).st_size != map_off + maplen + PAGE_SIZE:  # e.g. a /proc or /sys file
                    raise PageMapError(f"{backing.path} cannot be resized")
            self.created = True
        self.map_off = map_off
        self.states = mmap.mmap(fd, maplen, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=map_off)
        if self.created:
            if block:  # a device is not sparse: the map region must be cleared by hand
                self.states[:] = bytes(maplen)
            os.pwrite(fd, _TRAILER.pack(MAGIC, VERSION, size, map_off, self.pages).ljust(PAGE_SIZE, b"\0"),
                      map_off + maplen)
            self.sync()

    @staticmethod
    def _read_trailer(fd: int, end: int):
        if end < PAGE_SIZE or end % PAGE_SIZE:
            return None
        raw = os.pread(fd, _TRAILER.size, end - PAGE_SIZE)
        if len(raw) < _TRAILER.size:
            return None
        magic, version, size, map_off, pages = _TRAILER.unpack(raw)
        if magic != MAGIC:
            return None
        if version != VERSION or map_off % PAGE_SIZE or map_off + _round_up(max(pages, 1)) + PAGE_SIZE != end:
            raise PageMapError("its page map is damaged or of an unknown version")
        return size, map_off, pages

    def set_range(self, first: int, stop: int, state: int) -> None:
        """Pages [first, stop) all get `state` (a discard of the whole device included)."""
        step = 1 << 20
        for i in range(first, stop, step):
            j = min(i + step, stop)
            self.states[i:j] = bytes([state]) * (j - i)

    def not_current(self) -> list[int]:
        """Pages whose current version is not in the file (MEMORY or LOST)."""
        return [m.start() for m in _NOT_FILE.finditer(self.states, 0, self.pages)]

    def sync(self) -> None:
        """Make the map durable (after the file's own fsync)."""
        self.states.flush()

    def close(self) -> None:
        if not self.states.closed:
            self.sync()
            self.states.close()
