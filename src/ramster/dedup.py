"""The dedup table: identical pages stored once, with a reference count.

A node started with dedup hashes every page it compresses into the
allocator: the key is the xxh3-128 digest of the compressed payload, seeded
with the pool class (EPH 0, PERS 1). `index` maps a key to the pampd of the
stored page with that payload, in one of two forms:

- plain: p > 0, the allocator reference of a page one slot holds, stored
  as without dedup. Its owner is the one the allocator's handle names (its
  32 bytes name one pool, oid and index), and nothing else is kept for it
  but `keyof[p]`, the key it was indexed under.
- entry: DEDUP_BASE - d, once a second put met the page. Entry d says:

    under[d]   the allocator reference of the one stored copy (0: free)
    refs[d]    how many tmem slots hold DEDUP_BASE - d
    keys[d]    the key

  and every owner's slot holds DEDUP_BASE - d (pampd.py). The handle can no
  longer name every owner, so `owners[d]` (a dict used as an ordered set of
  (Pool, oid, index)) does, and `shared[under]` leads from the copy back to
  d for the paths that start at a frame (eviction, writeback, remotify).
  An owner that left (a flush, an overwrite, an exclusive get) is not
  struck off when it goes, because tmem frees an object's pages without
  saying whose slot each was: an owner is current while its slot still
  holds DEDUP_BASE - d, and the set is pruned when stale owners outnumber
  the current ones. An entry lives until its last owner goes.

A plain page becomes an entry only when a copy arrives, because most pages
never meet another: making every page an entry on its put costs about
0.5 us, a tenth of a put, where nothing repeats.

A free (an overwrite, a flush, an exclusive get) takes a plain page's index
value with it (`forget`). The paths that take whole frames (eviction,
writeback, remotify) and recompression's moves do not look at keys; the
value they leave is checked when a put finds it: the page must still be
stored, in a unit of the put's class that no path has taken, held by the
slot its handle names, and equal byte for byte (zcache_dedup.py). What
bounds the index is `keyof`: one key per allocator reference, and a
reference that stores a new page first removes the index value its old key
left, if that still leads to it. So the index holds at most one plain value
per reference the allocator has (its memory budget bounds them) plus the
entries. A hash collision costs a compare and a page stored unshared (the
newest page then answers for the key), never two different pages merged.
The class is in the key because eviction and writeback treat the two
classes differently: an ephemeral copy may be dropped at any time, a
persistent one never silently, so a persistent page never shares a copy an
ephemeral put made.

Per page: a list slot in keyof, the key (a 128-bit int, 44 bytes) and an
index entry. An entry adds 12 bytes of arrays (under and refs are arrays,
not lists: a reference in a list is an int object of its own), a list slot
and its owner set, for copies that actually saved memory. Free entries are
reused from a stack. A refcount reaching zero frees the copy (zcache does
that) and the entry.

Same-filled pages are not indexed: zcache's fill table shares them already.
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
        self.keyof: list[int | None] = []  # allocator reference -> the key its page was indexed under
        self.shared: dict[int, int] = {}
        self._free: list[int] = []

    def link(self, pool, oid: int, index: int, p: int) -> None:
        """Link allocator reference p under the handle, indexed under the key the put
        path left in `pending` (none: a foreign or repatriated payload)."""
        key = self.pending
        if key is not None:
            self.pending = None
            self.note(p, key)
        self._tmem_put(pool, oid, index, p)

    def note(self, p: int, key: int) -> None:
        """Index the plain page of reference p under `key`, first removing the value
        the reference's previous page left (the bound on the index)."""
        keyof = self.keyof
        try:
            old = keyof[p]
        except IndexError:
            keyof.extend([None] * (p + 1 - len(keyof) + (len(keyof) >> 3)))
            old = None
        index = self.index
        if old is not None and index.get(old) == p:
            del index[old]
        keyof[p] = key
        index[key] = p

    def forget(self, p: int) -> None:
        """Reference p's page is freed: its index value, if it still has one, goes."""
        keyof = self.keyof
        if p < len(keyof):
            key = keyof[p]
            if key is not None:
                keyof[p] = None
                if self.index.get(key) == p:
                    del self.index[key]

    def moved(self, p: int, q: int) -> None:
        """The plain page of reference p is now at q (recompression stored it again)."""
        keyof = self.keyof
        key = keyof[p] if p < len(keyof) else None
        if key is not None and self.index.get(key) == p:
            self.note(q, key)

    def promote(self, p: int, key: int, first: tuple, owner: tuple) -> int:
        """The plain page of reference p (its slot `first`) gets a second owner:
        it becomes entry d with two references; returns d. The caller points
        both slots at DEDUP_BASE - d."""
        free = self._free
        if free:
            d = free.pop()
            self.under[d] = p
            self.refs[d] = 2
            self.keys[d] = key
        else:
            d = len(self.under)
            if d >= MAX_DEDUP:
                raise OverflowError("the dedup table is full")
            self.under.append(p)
            self.refs.append(2)
            self.keys.append(key)
        self.owners[d] = {first: None, owner: None}
        self.shared[p] = d
        self.index[key] = DEDUP_BASE - d
        return d

    def drop(self, d: int) -> int:
        """Free entry d (its last owner went); returns the zbudref of its copy."""
        p = self.under[d]
        key = self.keys[d]
        if self.index.get(key) == DEDUP_BASE - d:
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
        for key, v in self.index.items():
            if v > 0:
                assert self.keyof[v] == key, f"index value {key:#x} -> {v} is not its reference's key"
                continue
            d = DEDUP_BASE - v
            assert self.under[d] and self.keys[d] == key, f"index entry {key:#x} -> {d} stale"
        assert len(self.index) <= len(self.keyof) + self.entries
        for d in live:
            assert self.refs[d] >= 1 and self.under[d] > 0
        assert set(self.owners) <= set(live)
        assert {self.under[d]: d for d in self.owners} == self.shared
