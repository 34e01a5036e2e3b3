"""tmem (SPEC §2): the index and its calls into pamops."""
import pytest

from ramster.tmem import LOCAL_CLIENT, OBJNODE_SLOTS, Tmem, TmemError


class Recorder:
    """A backend that records the pamops calls tmem makes."""

    def __init__(self):
        self.calls = []

    def get_data(self, p, pool):
        self.calls.append(("get", p))
        return f"data{p}"

    def get_data_and_free(self, p, pool):
        self.calls.append(("getfree", p))
        if p <= -1000:  # "held elsewhere": not served here
            return None
        return f"data{p}"

    def free(self, p, pool, oid, index):
        self.calls.append(("free", p, oid, index))

    def free_obj(self, pool, oid, pool_destroy):
        self.calls.append(("free_obj", oid, pool_destroy))

    def free_pool(self, pool):
        self.calls.append(("free_pool", pool.pool_id))


@pytest.fixture
def t():
    return Tmem(Recorder())


def test_duplicate_put_frees_old(t):
    pool = t.new_pool(LOCAL_CLIENT, True)
    t.put(pool, 1, 5, 10)
    t.put(pool, 1, 5, 12)
    assert t.pamops.calls == [("free", 10, 1, 5)]
    assert t.lookup(pool, 1, 5) == 12


def test_get_free_semantics_and_empty_object_freed(t):
    pool = t.new_pool(LOCAL_CLIENT, True)
    t.put(pool, 1, 5, 10)
    assert t.get(pool, 1, 5, free=False) == "data10"
    assert t.get(pool, 1, 5, free=True) == "data10"
    assert t.get(pool, 1, 5, free=True) is None
    assert t.obj_count == 0 and t.objnode_count == 0 and not pool.objs


def test_leaves_group_64_indexes(t):
    pool = t.new_pool(LOCAL_CLIENT, False)
    for i in range(130):
        t.put(pool, 7, i, 100 + i)
    assert t.objnode_count == 3 and t.obj_count == 1
    assert t.indexes(pool, 7) == list(range(130))
    assert t.flush_page(pool, 7, 129) and not t.flush_page(pool, 7, 129)
    assert t.flush_page(pool, 7, 128)
    assert t.objnode_count == 2
    assert OBJNODE_SLOTS == 64


def test_flush_object_frees_with_oid_none_and_calls_free_obj(t):
    pool = t.new_pool(LOCAL_CLIENT, True)
    t.put(pool, 3, 1, 11)
    t.put(pool, 3, 70, 12)
    t.pamops.calls.clear()
    assert t.flush_object(pool, 3) and not t.flush_object(pool, 3)
    assert sorted(c for c in t.pamops.calls if c[0] == "free") == [("free", 11, None, 1), ("free", 12, None, 70)]
    assert ("free_obj", 3, False) in t.pamops.calls


def test_destroy_pool_frees_all_and_slot_reused(t):
    pools = [t.new_pool(LOCAL_CLIENT, True) for _ in range(16)]
    assert t.new_pool(LOCAL_CLIENT, True) is None
    t.put(pools[4], 1, 1, 9)
    assert t.destroy_pool(pools[4]) and not t.destroy_pool(pools[4])
    assert ("free_obj", 1, True) in t.pamops.calls
    assert t.new_pool(LOCAL_CLIENT, False).pool_id == 4


def test_foreign_clients_have_their_own_pools(t):
    p = t.new_pool(3, True, pool_id=5)
    assert p.pool_id == 5 and t.get_pool(3, 5) is p and t.get_pool(LOCAL_CLIENT, 5) is None
    with pytest.raises(TmemError):
        t.new_pool(99, True)


def test_a_get_the_backend_declines_leaves_the_slot(t):
    pool = t.new_pool(LOCAL_CLIENT, True)
    t.put(pool, 1, 1, -5000)
    assert t.get(pool, 1, 1, free=True) is None  # the pamops' falsy outcome, passed up
    assert t.lookup(pool, 1, 1) == -5000 and t.obj_count == 1  # still there, nothing freed
    assert not [c for c in t.pamops.calls if c[0] == "free"]
    t.check()


def test_scan_below_finds_slots_at_or_below_a_limit(t):
    pool = t.new_pool(LOCAL_CLIENT, True)
    for i, p in ((0, 5), (1, -3), (64, -7), (200, 9)):
        t.put(pool, 1, i, p)
    t.put(pool, 2, 3, -1)
    assert sorted(t.scan_below(pool, -1)) == [(1, 1, -3), (1, 64, -7), (2, 3, -1)]
    assert list(t.scan_below(pool, -5, oid=1)) == [(1, 64, -7)]
    assert list(t.scan_below(pool, 100, oid=3)) == []
    t.check()


def test_replace_frees_old_as_destroy(t):
    pool = t.new_pool(LOCAL_CLIENT, True)
    assert not t.replace(pool, 1, 1, 5)
    t.put(pool, 1, 1, 4)
    assert t.replace(pool, 1, 1, 5)
    assert t.lookup(pool, 1, 1) == 5 and ("free", 4, None, 1) in t.pamops.calls
