"""A RAM disk export: the simplest complete Export (`ramster ramdisk`, the protocol tests).

The disk is one bytearray of `size` bytes, shared by every connection (so
CAN_MULTI_CONN holds), and beside it one state byte per 4096-byte block, in
base:allocation flag values so BLOCK_STATUS can report them as they are:

    0                        data: written since it was last trimmed
    STATE_ZERO               written with zeroes (WRITE_ZEROES): allocated, reads as zero
    STATE_HOLE | STATE_ZERO  never written, or trimmed

Only whole blocks change state on TRIM and WRITE_ZEROES (the tail block of
the disk counts as whole); a partial one keeps its state, and its bytes are
zeroed where asked. BLOCK_STATUS finds the end of a run of one state with a
regular expression over the state bytes, so a long run costs one C scan.
"""
from __future__ import annotations

import re

from .base import STATE_HOLE, STATE_ZERO, Export

BLOCK = 4096
# Per-block state byte, using the base:allocation flag values directly.
_DATA = 0
_ZERO = STATE_ZERO                # written with zeroes: allocated, reads as zero
_HOLE = STATE_HOLE | STATE_ZERO   # never written or trimmed
_ZERO_CHUNK = memoryview(bytes(1 << 20))
# Finds the first block whose state differs from the key.
_NOT = {s: re.compile(b"[^" + re.escape(bytes([s])) + b"]") for s in (_DATA, _ZERO, _HOLE)}
MAX_EXTENTS = 1024


class MemoryExport(Export):
    """A bytearray-backed export of `size` bytes.

    Holes and zeroed areas are tracked per 4096-byte block so BLOCK_STATUS
    has something real to report. All data lives in one shared buffer, so
    every connection sees the same state (CAN_MULTI_CONN holds).
    """

    can_fast_zero = True

    def __init__(self, name: str, size: int, *, read_only: bool = False, description: str = ""):
        super().__init__()
        if size < 0:
            raise ValueError("export size must not be negative")
        self.name = name
        self.size = size
        self.read_only = read_only
        self.description = description
        self._data = bytearray(size)
        self._view = memoryview(self._data)
        self._state = bytearray([_HOLE]) * (-(-size // BLOCK))

    def getvalue(self) -> bytes:
        """A copy of the whole disk (for tests)."""
        return bytes(self._data)

    async def read(self, offset: int, length: int) -> memoryview:
        # A view, not a copy: the server copies it once into the reply.
        return self._view[offset:offset + length]

    async def write(self, offset: int, data, fua: bool = False) -> None:
        end = offset + len(data)
        self._view[offset:end] = data
        first, last = offset // BLOCK, (end - 1) // BLOCK + 1
        self._state[first:last] = bytes(last - first)

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        # Only whole blocks can become holes; partial ones keep their data.
        first, last = -(-offset // BLOCK), (offset + length) // BLOCK
        if offset + length == self.size:
            last = len(self._state)
        if first < last:
            self._fill_zero(first * BLOCK, min(last * BLOCK, self.size))
            self._state[first:last] = bytes([_HOLE]) * (last - first)

    async def zero(self, offset: int, length: int, fua: bool = False, fast: bool = False) -> None:
        end = offset + length
        self._fill_zero(offset, end)
        # Whole blocks are marked zero but stay allocated, which also honours
        # NBD_CMD_FLAG_NO_HOLE; partial blocks keep their state (a partly
        # zeroed hole still reads as zero, a data block stays data).
        first, last = -(-offset // BLOCK), end // BLOCK
        if end == self.size:
            last = len(self._state)
        if first < last:
            self._state[first:last] = bytes([_ZERO]) * (last - first)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        end = min(offset + length, self.size)
        state = self._state
        extents: list[tuple[int, int]] = []
        pos = offset
        while pos < end and len(extents) < MAX_EXTENTS:
            block = pos // BLOCK
            s = state[block]
            m = _NOT[s].search(state, block + 1)
            run_end = min(m.start() * BLOCK if m else self.size, end)
            extents.append((run_end - pos, s))
            pos = run_end
        return extents

    def _fill_zero(self, start: int, end: int) -> None:
        view = self._view
        while start < end:
            n = min(end - start, len(_ZERO_CHUNK))
            view[start:start + n] = _ZERO_CHUNK[:n]
            start += n
