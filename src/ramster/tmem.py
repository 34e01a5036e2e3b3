"""tmem: the transcendent-memory index (SPEC §1–2). It knows nothing of bytes.

clients → pools (16 per client) → objects (oid) → index → pampd. A pampd is an
opaque non-zero int that only the backend's pamops interpret (pampd.py says
what zcache's mean); tmem stores it, hands it back, and tells the backend when
to free it. The one thing a pamop tells tmem back: a get the backend cannot
serve here (a page that lives on another node) returns a falsy outcome, and
tmem then leaves the slot as it is and passes the outcome up.

An object is a dict {index >> 6: leaf}; a leaf is an array of 64 pampd slots
(the seed's objnode). One leaf per 64 consecutive indices keeps dense objects
(swap offsets, file pages) at about 5 bytes of index per page, where a dict
entry and an int per page would cost ten times that. A leaf keeps no count of
its slots in use: comparing it with an empty leaf when a slot is cleared is
cheaper in CPython than keeping a count on every put. The seed's 256 hash buckets per pool only spread
lock contention; this index is single-threaded, so one dict per pool does.
"""
from __future__ import annotations

from array import array
from typing import Protocol

LOCAL_CLIENT = 0xFFFF
MAX_CLIENTS = 16
MAX_POOLS_PER_CLIENT = 16
OBJNODE_SHIFT = 6
OBJNODE_SLOTS = 1 << OBJNODE_SHIFT
OBJNODE_MASK = OBJNODE_SLOTS - 1
# 32-bit slots: pampds are node ids < 2**30 shifted left once, or small negatives
_EMPTY_LEAF = array("i", bytes(4 * OBJNODE_SLOTS))
OID_LIMIT = 1 << 192
INDEX_LIMIT = 1 << 32


class TmemError(Exception):
    """An unknown pool, or no pool id left."""


class Pamops(Protocol):
    """What tmem needs from a backend (the seed's pamops)."""

    def get_data(self, pampd: int, pool: "Pool"): ...
    # falsy (not bytes): the page is not here; tmem leaves the slot and returns the outcome
    def get_data_and_free(self, pampd: int, pool: "Pool"): ...
    def free(self, pampd: int, pool: "Pool", oid: int | None, index: int) -> None: ...
    # told after an object's (or pool's) last page went, for backends that keep
    # copies elsewhere; plain zcache has nothing to do
    def free_obj(self, pool: "Pool", oid: int, pool_destroy: bool) -> None: ...
    def free_pool(self, pool: "Pool") -> None: ...


class Pool:
    __slots__ = ("client_id", "pool_id", "persistent", "shared", "objs", "cls", "handle_tag")

    def __init__(self, client_id: int, pool_id: int, persistent: bool, shared: bool = False):
        self.client_id = client_id
        self.pool_id = pool_id
        self.persistent = persistent
        self.cls = 1 if persistent else 0  # index of the class in per-class counters
        # the handle's trailing u64 (index u32, pool_id u16, client_id u16), less the index
        self.handle_tag = pool_id << 32 | client_id << 48
        self.shared = shared
        self.objs: dict[int, dict[int, array]] = {}

    def __repr__(self) -> str:
        kind = "persistent" if self.persistent else "ephemeral"
        return f"<Pool {self.client_id:#x}/{self.pool_id} {kind} objs={len(self.objs)}>"


class Tmem:
    def __init__(self, pamops: Pamops):
        self.pamops = pamops
        # client_id -> [Pool | None] * 16
        self.clients: dict[int, list[Pool | None]] = {LOCAL_CLIENT: [None] * MAX_POOLS_PER_CLIENT}
        self.obj_count = 0
        self.obj_count_max = 0
        self.objnode_count = 0
        self.objnode_count_max = 0

    # ---- pools ------------------------------------------------------------------

    def new_pool(self, client_id: int, persistent: bool, shared: bool = False, pool_id: int | None = None) -> Pool | None:
        """Create a pool in the first free slot (or in `pool_id`); None when all 16 are used."""
        pools = self.clients.get(client_id)
        if pools is None:
            if client_id != LOCAL_CLIENT and not 0 <= client_id < MAX_CLIENTS:
                raise TmemError(f"client id {client_id} out of range")
            pools = self.clients[client_id] = [None] * MAX_POOLS_PER_CLIENT
        if pool_id is None:
            try:
                pool_id = pools.index(None)
            except ValueError:
                return None
        elif pools[pool_id] is not None:
            return None
        pool = pools[pool_id] = Pool(client_id, pool_id, persistent, shared)
        return pool

    def get_pool(self, client_id: int, pool_id: int) -> Pool | None:
        pools = self.clients.get(client_id)
        if pools is None or not 0 <= pool_id < MAX_POOLS_PER_CLIENT:
            return None
        return pools[pool_id]

    def pools(self) -> list[Pool]:
        return [p for pools in self.clients.values() for p in pools if p is not None]

    def destroy_pool(self, pool: Pool) -> bool:
        pools = self.clients.get(pool.client_id)
        if pools is None or pools[pool.pool_id] is not pool:
            return False
        pools[pool.pool_id] = None
        for oid in list(pool.objs):
            self._destroy_obj(pool, oid, pool_destroy=True)
        self.pamops.free_pool(pool)
        return True

    # ---- pages -------------------------------------------------------------------

    def put(self, pool: Pool, oid: int, index: int, pampd: int) -> None:
        """Link pampd under the handle; a duplicate put frees the old pampd."""
        obj = pool.objs.get(oid)
        if obj is None:
            obj = pool.objs[oid] = {}
            self.obj_count += 1
            if self.obj_count > self.obj_count_max:
                self.obj_count_max = self.obj_count
        leaf = obj.get(index >> OBJNODE_SHIFT)
        if leaf is None:
            leaf = obj[index >> OBJNODE_SHIFT] = _EMPTY_LEAF[:]
            self.objnode_count += 1
            if self.objnode_count > self.objnode_count_max:
                self.objnode_count_max = self.objnode_count
        slot = index & OBJNODE_MASK
        old = leaf[slot]
        leaf[slot] = pampd
        if old:
            self.pamops.free(old, pool, oid, index)
        # The seed's tmem_put ended with pamops.create_finish, which made the new
        # zbud evictable again. Nothing can run between zbud's prep and this link
        # here, so the synchronous put path pins nothing and there is nothing to
        # finish; only reservations that wait for data (RAMster) pin a frame.

    def lookup(self, pool: Pool, oid: int, index: int) -> int:
        """The pampd under the handle, or 0."""
        obj = pool.objs.get(oid)
        if obj is None:
            return 0
        leaf = obj.get(index >> OBJNODE_SHIFT)
        if leaf is None:
            return 0
        return leaf[index & OBJNODE_MASK]

    def get(self, pool: Pool, oid: int, index: int, free: bool):
        """The page (what the pamops return), or None if the slot is empty."""
        # lookup() and delete() inlined: a get is one walk down the index, not two
        obj = pool.objs.get(oid)
        if obj is None:
            return None
        leaf = obj.get(index >> OBJNODE_SHIFT)
        if leaf is None:
            return None
        slot = index & OBJNODE_MASK
        p = leaf[slot]
        if not p:
            return None
        if free:
            data = self.pamops.get_data_and_free(p, pool)
            if data:  # falsy: not served here, the page stays where it is
                leaf[slot] = 0
                if leaf == _EMPTY_LEAF:
                    self._drop_leaf(pool, obj, oid, index)
            return data
        return self.pamops.get_data(p, pool)

    def delete(self, pool: Pool, oid: int, index: int) -> int:
        """Unlink and return the pampd under the handle without freeing it (0 if none)."""
        obj = pool.objs.get(oid)
        if obj is None:
            return 0
        leaf = obj.get(index >> OBJNODE_SHIFT)
        if leaf is None:
            return 0
        slot = index & OBJNODE_MASK
        p = leaf[slot]
        if p:
            leaf[slot] = 0
            if leaf == _EMPTY_LEAF:
                self._drop_leaf(pool, obj, oid, index)
        return p

    def flush_page(self, pool: Pool, oid: int, index: int) -> bool:
        p = self.delete(pool, oid, index)
        if not p:
            return False
        self.pamops.free(p, pool, oid, index)
        return True

    def replace(self, pool: Pool, oid: int, index: int, new: int) -> bool:
        """Overwrite an existing slot in place; the old pampd is freed as by a destroy."""
        obj = pool.objs.get(oid)
        leaf = obj.get(index >> OBJNODE_SHIFT) if obj is not None else None
        if leaf is None or not leaf[index & OBJNODE_MASK]:
            return False
        old = leaf[index & OBJNODE_MASK]
        leaf[index & OBJNODE_MASK] = new
        self.pamops.free(old, pool, None, index)
        return True

    def relink(self, pool: Pool, oid: int, index: int, new: int) -> int:
        """Point an existing slot at a new pampd for the same page (zcache moved it);
        returns the old pampd, not freed, or 0 (and nothing changes) if the slot is empty."""
        obj = pool.objs.get(oid)
        leaf = obj.get(index >> OBJNODE_SHIFT) if obj is not None else None
        if leaf is None or not leaf[index & OBJNODE_MASK]:
            return 0
        old = leaf[index & OBJNODE_MASK]
        leaf[index & OBJNODE_MASK] = new
        return old

    def flush_object(self, pool: Pool, oid: int) -> bool:
        if oid not in pool.objs:
            return False
        self._destroy_obj(pool, oid, pool_destroy=False)
        return True

    def indexes(self, pool: Pool, oid: int) -> list[int]:
        """Every index present in an object, ascending."""
        obj = pool.objs.get(oid)
        if obj is None:
            return []
        out = []
        for key in sorted(obj):
            leaf = obj[key]
            base = key << OBJNODE_SHIFT
            out.extend(base + i for i in range(OBJNODE_SLOTS) if leaf[i])
        return out

    def scan_below(self, pool: Pool, limit: int, oid: int | None = None):
        """(oid, index, pampd) of every slot of the pool (or of one object) whose pampd
        is at most `limit`, ascending by index within an object: a walk of the whole
        index, for the backend's slow paths (a leaf with none is skipped at C speed)."""
        objs = pool.objs
        oids = list(objs) if oid is None else ([oid] if oid in objs else [])
        for o in oids:
            obj = objs.get(o)
            if obj is None:
                continue
            for key in sorted(obj):
                leaf = obj.get(key)
                if leaf is None or min(leaf) > limit:
                    continue
                base = key << OBJNODE_SHIFT
                for slot in range(OBJNODE_SLOTS):
                    p = leaf[slot]
                    if p and p <= limit:
                        yield o, base | slot, p

    def check(self) -> None:
        """Assert the index's structure (tests): no empty object or leaf is kept, counts agree."""
        objs = leaves = 0
        for pool in self.pools():
            for obj in pool.objs.values():
                assert obj, "empty object kept"
                objs += 1
                for leaf in obj.values():
                    assert len(leaf) == OBJNODE_SLOTS and leaf != _EMPTY_LEAF, "empty leaf kept"
                    leaves += 1
        assert objs == self.obj_count and leaves == self.objnode_count

    # ---- internals -----------------------------------------------------------------

    def _drop_leaf(self, pool: Pool, obj: dict, oid: int, index: int) -> None:
        del obj[index >> OBJNODE_SHIFT]
        self.objnode_count -= 1
        if not obj:
            del pool.objs[oid]
            self.obj_count -= 1
            self.pamops.free_obj(pool, oid, False)

    def _destroy_obj(self, pool: Pool, oid: int, pool_destroy: bool) -> None:
        obj = pool.objs.pop(oid)
        self.obj_count -= 1
        self.objnode_count -= len(obj)
        free = self.pamops.free
        for key, leaf in obj.items():
            for slot in range(OBJNODE_SLOTS):
                p = leaf[slot]
                if p:
                    # oid=None: an object-wide destroy, so the backend can act once, in free_obj
                    free(p, pool, None, (key << OBJNODE_SHIFT) | slot)
        self.pamops.free_obj(pool, oid, pool_destroy)
