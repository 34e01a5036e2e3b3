"""Backing files: the swap disk behind a swap export and the disk image behind a cache export.

A BackingFile is a file (or block device) of at least the export's size, read
and written by byte offsets; pages land at offset * PAGE_SIZE and trimmed
pages become holes where the filesystem can punch them. Opening one takes an
exclusive flock on it: two nodes (or two exports of one node) writing one file
would each believe the other's pages are theirs. flock locks the inode, so a
second path to the same file (a hard link, a symlink) is refused too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import stat
from ..units import PAGE_SIZE

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(1 << 20)

log = logging.getLogger("ramster.storage")


class BackingFileBusy(OSError):
    """Another open file description (another node, another export) holds the file's lock."""


def _load_fallocate():
    # os.posix_fallocate only allocates; punching a hole needs the Linux call itself.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


class BackingFile:
    """A file of at least `size` bytes, read and written by page offsets."""

    def __init__(self, path: str | os.PathLike, size: int, grow: bool = True):
        """grow=False leaves a short regular file as it is (a swap export's page map
        decides the file's layout and grows it itself, see pagemap.py)."""
        self.path = os.fspath(path)
        self.size = size
        self.dirty = False  # written since the last fsync
        self.punch_supported = _fallocate is not None
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackingFileBusy(errno.EBUSY, f"{self.path} is in use by another running ramster node "
                                                   "(or another export of this one)") from None
            st = os.fstat(self.fd)
            if stat.S_ISREG(st.st_mode):
                if st.st_size < size and grow:
                    # sparse: no block is allocated until something is written there
                    os.ftruncate(self.fd, size)
                    if os.fstat(self.fd).st_size < size:  # e.g. a /proc or /sys file
                        raise OSError(errno.EINVAL, f"{self.path} cannot be resized to {size} bytes")
                    log.info("backing file %s sized to %d bytes", self.path, size)
            elif stat.S_ISBLK(st.st_mode):
                have = os.lseek(self.fd, 0, os.SEEK_END)
                if have < size:
                    raise OSError(errno.ENOSPC, f"block device {self.path} has {have} bytes, fewer than {size}")
                self.punch_supported = False  # BLKDISCARD would be the way; zeros will do
            else:
                raise OSError(errno.EINVAL, f"{self.path} is not a regular file or block device")
        except BaseException:
            os.close(self.fd)
            raise
        self._seek_supported = True

    # ---- data --------------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # past the end of a file someone truncated under us
            data += bytes(length - len(data))
        return data

    def preadinto(self, buf, offset: int) -> None:
        """Fill the writable buffer `buf` from `offset` (zeros past the end of the file)."""
        mv = memoryview(buf)
        done = 0
        while done < len(mv):
            n = os.preadv(self.fd, [mv[done:]], offset + done)
            if n <= 0:
                mv[done:] = bytes(len(mv) - done)
                return
            done += n

    def pwrite(self, offset: int, data) -> None:
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            done += os.pwrite(self.fd, mv[done:], offset + done)
        self.dirty = True

    def punch_hole(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros, freeing its blocks where the filesystem can."""
        if length <= 0:
            return
        if self.punch_supported:
            if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
                self.dirty = True
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(err, f"punching a hole in {self.path}: {os.strerror(err)}")
            log.info("%s: the filesystem cannot punch holes (%s); writing zeros instead",
                     self.path, errno.errorcode.get(err, err))
            self.punch_supported = False
        end = offset + length
        while offset < end:
            n = min(end - offset, len(_ZEROS))
            self.pwrite(offset, memoryview(_ZEROS)[:n])
            offset += n

    def data_runs(self, offset: int, end: int):
        """(start, stop, is_data) runs covering [offset, end), from SEEK_DATA/SEEK_HOLE.

        Where the filesystem cannot tell, everything is reported as data
        (proto.md: claiming data is always safe, claiming a hole is not).
        """
        fd = self.fd
        pos = offset
        while pos < end:
            if not self._seek_supported:
                yield pos, end, True
                return
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole from here to the end of the file
                    yield pos, end, False
                    return
                self._seek_supported = False
                continue
            if data > pos:
                stop = min(data, end)
                yield pos, stop, False
                pos = stop
                continue
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            stop = min(hole, end)
            yield pos, stop, True
            pos = stop

    def fsync(self) -> None:
        self.dirty = False
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                if self.dirty:
                    self.fsync()
            finally:
                os.close(self.fd)
                self.fd = -1

    def __repr__(self) -> str:
        return f"<BackingFile {self.path} {self.size} bytes>"
