"""The dedup table: identical pages stored once, with a reference count.

A node started with dedup keeps every page it compresses into zbud as an
entry d of this table, and each owner's tmem slot holds the pampd
DEDUP_BASE - d (pampd.py) instead of the zbud reference. Entry d says:

    under[d]   the zbudref of the one stored copy (0: the entry is free)
    refs[d]    how many tmem slots hold DEDUP_BASE - d
    keys[d]    the page's key: the xxh3-128 digest of its compressed payload,
               seeded with the pool class (EPH 0, PERS 1)

and `index` maps a key to the entry that answers for it. A put whose key is
in the index compares its payload with the stored copy's, byte for byte,
before it shares it: a hash collision costs a compare and a page stored unshared (an
entry no key leads to), never two different pages merged. The class is in the
key because eviction and writeback treat the two classes differently: an
ephemeral copy may be dropped at any time, a persistent one never silently, so
a persistent page never shares a copy an ephemeral put made.

Where the owners are written down depends on how many there have been:

- single: the entry has one owner, the page's first, and zbud's handle of
  the copy (its 32 bytes name one pool, oid and index) names it, as it
  does for a page stored without dedup. Nothing else is kept.
- shared: once a second put shares the copy, zbud's handle can no longer
  name every owner, so `owners[d]` (a dict used as an ordered set of
  (Pool, oid, index)) does, and `shared[under]` leads from the copy back to
  d for the paths that start at a frame (eviction, writeback, remotify).
  An owner that left (a flush, an overwrite, an exclusive get) is not
  struck off when it goes, because tmem frees an object's pages without
  saying whose slot each was: an owner is current while its slot still
  holds DEDUP_BASE - d, and the set is pruned when stale owners outnumber
  the current ones. An entry stays shared until its last owner goes.

Only this much is per page: 12 bytes of arrays (under, refs), a list slot
and the key (56 bytes) and an index entry with its entry number (about 60):
about 130 bytes, against the kilobyte or two the page's copy takes. under
and refs are arrays, not lists, because a zbudref or handle in a list is an
int object of its own (32 bytes more per page, measured); the
owner sets exist only for copies that actually saved memory. Free entries
are reused from a stack. A refcount reaching zero frees the copy (zcache does
that) and the entry.

Same-filled pages are not entries: zcache's fill table shares them already.
Huge pages, pages of foreign pools and repatriated payloads are stored as
without dedup.
"""
from __future__ import annotations

from array import array

from .pampd import DEDUP_BASE, MAX_DEDUP

# the counters of dedup, "zcache." in stats(); all but the events are levels
DEDUP_COUNTERS = ("dedup_hits", "dedup_collisions", "dedup_pages", "dedup_saved_pages")


class DedupTable:
    """The entries, their refcounts, keys and owners (see the module comment)."""

    def __init__(self, link):
        # tmem's put: `link` is what zcache's store path calls on a node with dedup
        self._tmem_put = link
        # the key of the page being stored, set by the put path just before the
        # store and taken by `link`; None: the store is not a dedup put's
        self.pending: int | None = None
        self.under = array("q")
        self.refs = array("i")
        self.keys: list[int] = []
        self.index: dict[int, int] = {}
        self.owners: dict[int, dict[tuple, None]] = {}
        self.shared: dict[int, int] = {}
        self._free: list[int] = []

    def link(self, pool, oid: int, index: int, p: int) -> None:
        """Link zbudref p under the handle: as a new single entry when the put path
        left its key in `pending`, else as it is (a foreign or repatriated payload)."""
        key = self.pending
        if key is None:
            self._tmem_put(pool, oid, index, p)
            return
        self.pending = None
        free = self._free
        if free:
            d = free.pop()
            self.under[d] = p
            self.refs[d] = 1
            self.keys[d] = key
        else:
            d = len(self.under)
            if d >= MAX_DEDUP:
                raise OverflowError("the dedup table is full")
            self.under.append(p)
            self.refs.append(1)
            self.keys.append(key)
        self.index.setdefault(key, d)  # a collision: the entry there stays
        self._tmem_put(pool, oid, index, DEDUP_BASE - d)

    def drop(self, d: int) -> int:
        """Free entry d (its last owner went); returns the zbudref of its copy."""
        p = self.under[d]
        key = self.keys[d]
        if self.index.get(key) == d:
            del self.index[key]
        if self.owners.pop(d, None) is not None:
            del self.shared[p]
        self.under[d] = 0
        self.refs[d] = 0
        self._free.append(d)
        return p

    def move(self, d: int, q: int) -> None:
        """Entry d's copy moved to zbudref q (recompression stored it again)."""
        p = self.under[d]
        self.under[d] = q
        if d in self.owners:
            del self.shared[p]
            self.shared[q] = d

    @property
    def entries(self) -> int:
        """Entries in use."""
        return len(self.under) - len(self._free)

    def share(self, d: int, first: tuple | None, owner: tuple, current) -> None:
        """One more owner of entry d. `first` is the owner zbud's handle names,
        needed only when a single entry becomes shared; `current(owner)` says
        whether an owner still holds the entry (used to prune stale owners)."""
        self.refs[d] += 1
        owners = self.owners.get(d)
        if owners is None:
            owners = self.owners[d] = {first: None}
            self.shared[self.under[d]] = d
        elif len(owners) >= 2 * self.refs[d] + 8:
            for o in [o for o in owners if not current(o)]:
                del owners[o]
        owners[owner] = None

    def current_owners(self, d: int, current) -> list[tuple]:
        """The owners of a shared entry whose slots still hold it."""
        return [o for o in self.owners[d] if current(o)]

    def saved_pages(self) -> int:
        """Copies not stored because an entry is shared: sum of refs - 1."""
        return sum(self.refs) - self.entries

    def check(self) -> None:
        """Assert the table's own structure (zcache checks it against tmem and zbud)."""
        live = [d for d, p in enumerate(self.under) if p]
        assert len(live) == self.entries
        assert sorted(self._free) == [d for d, p in enumerate(self.under) if not p]
        for key, d in self.index.items():
            assert self.under[d] and self.keys[d] == key, f"index entry {key:#x} -> {d} stale"
        for d in live:
            assert self.refs[d] >= 1 and self.under[d] > 0
        assert set(self.owners) <= set(live)
        assert {self.under[d]: d for d in self.owners} == self.shared
