"""cleancache over zcache (SPEC §1.6, §6.1): one ephemeral pool per filesystem.

A (filesystem, inode, index) maps to (pool, oid, index). Puts "always succeed"
from the caller's view and may be dropped; gets are exclusive because the
pools are ephemeral.
"""
from __future__ import annotations

from ..units import PAGE_SIZE
from ..zcache import INDEX_LIMIT, ON_PEER, TmemError, Zcache, check_page, normalize_oid


class Cleancache:
    def __init__(self, zc: Zcache, ignore_nonactive: bool = True):
        self.zc = zc
        # WasActive filter (§6.1): puts of pages that were never active are dropped
        self.ignore_nonactive = bool(ignore_nonactive)
        self._fs: dict[int, object] = {}  # fsid -> Pool
        self.succ_gets = 0
        self.failed_gets = 0
        self.puts = 0
        self.invalidates = 0

    def init_fs(self, pagesize: int = PAGE_SIZE) -> int:
        """Mount: a new ephemeral pool; returns its fsid."""
        if pagesize != PAGE_SIZE:
            raise ValueError(f"pagesize must be {PAGE_SIZE}, got {pagesize}")
        fsid = self.zc.new_pool(persistent=False)
        self._fs[fsid] = self.zc.pool(fsid)
        return fsid

    def init_shared_fs(self, uuid: bytes, pagesize: int = PAGE_SIZE) -> int:
        # shared pools are not supported (as in the seed): a private pool it is
        return self.init_fs(pagesize)

    def _pool(self, fsid: int):
        pool = self._fs.get(fsid) if type(fsid) is int else None
        if pool is None:
            if isinstance(fsid, bool) or not isinstance(fsid, int):
                raise TypeError(f"fsid must be an int, not {type(fsid).__name__}")
            raise TmemError(f"no cleancache filesystem {fsid}")
        return pool

    @staticmethod
    def _index(index) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        return index

    def put_page(self, fsid: int, inode, index: int, page, was_active: bool = True) -> None:
        pool = self._pool(fsid)
        oid = normalize_oid(inode)
        index = self._index(index)
        page = check_page(page)
        if index >= INDEX_LIMIT:  # the seed silently ignores indexes beyond 32 bits
            return
        self.puts += 1
        if not was_active and self.ignore_nonactive:
            self.zc.nonactive_put(fsid, oid, index)  # counted; the caller's page is newer than ours
            return
        self.zc.put_page(fsid, oid, index, page)

    def get_page(self, fsid: int, inode, index: int) -> bytes | None:
        pool = self._pool(fsid)
        oid = normalize_oid(inode)
        index = self._index(index)
        page = self.zc.get_page(fsid, oid, index) if index < INDEX_LIMIT else None
        if page is ON_PEER:
            # A peer holds it (RAMster) and this call cannot wait for the network.
            # An ephemeral page may vanish at any time, so this is a miss; the
            # flush drops the remote copy too.
            self.zc.flush_page(fsid, oid, index)
            page = None
        if page is None:
            self.failed_gets += 1
        else:
            self.succ_gets += 1
        return page

    def peek_page(self, fsid: int, inode, index: int) -> bytes | None:
        """get_page that leaves the page cached (a block device's cache hit: it must keep
        serving the page, and putting it back would compress it again). A page that
        lives on a peer is a miss here, and stays where it is."""
        self._pool(fsid)
        oid = normalize_oid(inode)
        index = self._index(index)
        page = self.zc.peek_page(fsid, oid, index) if index < INDEX_LIMIT else None
        if page is None:
            self.failed_gets += 1
        else:
            self.succ_gets += 1
        return page

    def invalidate_page(self, fsid: int, inode, index: int) -> None:
        pool = self._pool(fsid)
        oid = normalize_oid(inode)
        index = self._index(index)
        self.invalidates += 1
        if index < INDEX_LIMIT:
            self.zc.flush_page(fsid, oid, index)

    def invalidate_inode(self, fsid: int, inode) -> None:
        self._pool(fsid)
        self.invalidates += 1
        self.zc.flush_object(fsid, normalize_oid(inode))

    def invalidate_fs(self, fsid: int) -> None:
        """Unmount: destroy the filesystem's pool."""
        self._pool(fsid)
        self.invalidates += 1
        del self._fs[fsid]
        self.zc.destroy_pool(fsid)

    def stats(self) -> dict[str, int]:
        return {
            "cleancache.succ_gets": self.succ_gets,
            "cleancache.failed_gets": self.failed_gets,
            "cleancache.puts": self.puts,
            "cleancache.invalidates": self.invalidates,
        }
