"""Dedup (Zcache(dedup=True)): identical pages stored once with a refcount, and
every path that frees, evicts, writes back or remotifies a page correct for each
owner of a shared copy."""
import pytest
from pages import page, random_page, sized_page
from xxhash import xxh3_128_intdigest

from ramster import Zcache
from ramster.config import ConfigError, build
from ramster.zcache import ON_PEER


def zc_(frames=64, **kw):
    return Zcache(frames, reserve_pageframes=max(frames, 64), dedup=True, **kw)


def dedup_stats(zc):
    s = zc.stats()
    return {k[len("zcache.dedup_"):]: v for k, v in s.items() if k.startswith("zcache.dedup_")}


def empty(zc):
    zc.check()
    # plain index values outlive their pages (dedup.py): only entries' keys must be gone
    return (zc.pageframes_in_use == 0 and zc.dedup.entries == 0
            and all(v > 0 for v in zc.dedup.index.values()))


def test_identical_pages_share_one_copy():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    pg = sized_page(1, 1500)
    for i in range(10):
        assert zc.put_page(pid, i % 3, i, pg)
    zc.check()
    s = zc.stats()
    assert s["zbud.pers_zpages"] == 1 and zc.pageframes_in_use == 1
    assert dedup_stats(zc) == {"hits": 9, "collisions": 0, "pages": 1, "saved_pages": 9}
    assert all(zc.get_page(pid, i % 3, i) == pg for i in range(10))
    # a different page is a copy of its own
    assert zc.put_page(pid, 5, 0, sized_page(2, 1500))
    assert zc.stats()["zbud.pers_zpages"] == 2 and dedup_stats(zc)["pages"] == 1
    zc.check()


def test_a_write_to_one_copy_changes_no_other():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    a, b = page(1), page(2)
    for i in range(3):
        assert zc.put_page(pid, 1, i, a)
    assert zc.put_page(pid, 1, 1, b)
    assert [zc.get_page(pid, 1, i) for i in range(3)] == [a, b, a]
    assert dedup_stats(zc)["saved_pages"] == 1
    # the same page again under a handle that holds it: nothing changes
    assert zc.put_page(pid, 1, 0, a)
    assert dedup_stats(zc)["saved_pages"] == 1
    zc.check()


def test_refcounts_flush_page_object_and_pool():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    pg = page(3)
    for oid in range(3):
        for i in range(4):
            assert zc.put_page(pid, oid, i, pg)
    assert dedup_stats(zc)["saved_pages"] == 11
    assert zc.flush_page(pid, 0, 0)
    assert dedup_stats(zc)["saved_pages"] == 10 and zc.pageframes_in_use == 1
    assert zc.flush_object(pid, 1)
    assert dedup_stats(zc)["saved_pages"] == 6
    assert zc.get_page(pid, 2, 3) == pg and zc.get_page(pid, 0, 1) == pg
    zc.check()
    assert zc.destroy_pool(pid)
    assert empty(zc) and dedup_stats(zc)["pages"] == 0 and dedup_stats(zc)["saved_pages"] == 0


def test_exclusive_get_takes_one_reference():
    zc = zc_()
    pers = zc.new_pool(persistent=True)
    eph = zc.new_pool(persistent=False)
    pg = page(4)
    for i in range(3):
        assert zc.put_page(pers, 1, i, pg) and zc.put_page(eph, 1, i, pg)
    # the two classes never share: an ephemeral copy may vanish, a persistent one may not
    assert zc.stats()["zbud.eph_zpages"] == 1 and zc.stats()["zbud.pers_zpages"] == 1
    assert zc.get_page(pers, 1, 0, free=True) == pg and zc.get_page(pers, 1, 0) is None
    assert zc.get_page(eph, 1, 0) == pg and zc.get_page(eph, 1, 0) is None  # ephemeral gets are exclusive
    assert dedup_stats(zc)["saved_pages"] == 2
    assert zc.get_page(pers, 1, 1) == pg  # a non-exclusive get leaves its reference
    assert zc.peek_page(eph, 1, 1) == pg and zc.contains(eph, 1, 1) and not zc.on_peer(eph, 1, 1)
    for i in (1, 2):
        assert zc.get_page(pers, 1, i, free=True) == pg and zc.get_page(eph, 1, i) == pg
    assert empty(zc)


def test_eviction_of_a_shared_ephemeral_copy_drops_every_owner():
    zc = zc_(frames=2)
    eph = zc.new_pool(persistent=False)
    pers = zc.new_pool(persistent=True)
    shared = sized_page(7, 2200)  # a frame of its own
    for i in range(5):
        assert zc.put_page(eph, 1, i, shared)
    assert zc.put_page(eph, 2, 0, sized_page(8, 2200))
    assert zc.pageframes_in_use == 2
    # persistent puts eat the ephemeral frames, least recently used first
    assert zc.put_page(pers, 1, 0, sized_page(9, 2200))
    zc.check()
    assert all(zc.get_page(eph, 1, i) is None for i in range(5))
    assert dedup_stats(zc)["pages"] == 0 and dedup_stats(zc)["saved_pages"] == 0
    assert zc.stats()["zcache.evicted_eph_zpages"] == 1
    assert zc.put_page(pers, 1, 1, sized_page(10, 2200))
    assert zc.get_page(eph, 2, 0) is None
    zc.check()


def test_shared_persistent_copies_never_lose_to_ephemeral_ones():
    zc = zc_(frames=2)
    pers = zc.new_pool(persistent=True)
    eph = zc.new_pool(persistent=False)
    pg = sized_page(11, 2200)
    for i in range(4):
        assert zc.put_page(pers, 1, i, pg)
    assert zc.put_page(pers, 2, 0, sized_page(12, 2200))
    assert not zc.put_page(eph, 1, 0, sized_page(13, 2200))  # no frame to eat
    assert all(zc.get_page(pers, 1, i) == pg for i in range(4))
    zc.check()


class Disk:
    """A writeback sink: what it took, by handle; `refuse` names handles it has no place for."""

    def __init__(self, refuse=()):
        self.pages = {}
        self.refuse = set(refuse)

    def __call__(self, pool, oid, index, data):
        self.pages[(oid, index)] = data
        return True

    def accepts(self, pool, oid, index):
        return (oid, index) not in self.refuse


def test_writeback_reaches_every_owner_or_keeps_the_copy():
    disk = Disk(refuse={(1, 2)})
    zc = zc_(frames=4, writeback_sink=disk)
    pid = zc.new_pool(persistent=True)
    pg = sized_page(14, 2200)
    for i in range(4):
        assert zc.put_page(pid, 1, i, pg)
    assert zc.put_page(pid, 2, 0, sized_page(15, 2200))
    assert zc.set_max_pageframes(0) == 1  # the copy stays for the owner the disk refused
    assert disk.pages == {(1, 0): pg, (1, 1): pg, (1, 3): pg, (2, 0): sized_page(15, 2200)}
    assert zc.get_page(pid, 1, 2) == pg and all(zc.get_page(pid, 1, i) is None for i in (0, 1, 3))
    assert dedup_stats(zc)["saved_pages"] == 0 and zc.stats()["zcache.writtenback_pages"] == 4
    zc.check()
    disk.refuse.clear()
    assert zc.set_max_pageframes(0) == 0
    assert disk.pages[(1, 2)] == pg and empty(zc)


def test_writeback_idle_of_a_shared_copy():
    disk = Disk()
    zc = zc_(frames=8, writeback_sink=disk)
    pid = zc.new_pool(persistent=True)
    pg = sized_page(16, 2000)
    for i in range(3):
        assert zc.put_page(pid, 1, i, pg)
    zc.mark_idle()
    assert zc.writeback_idle() == 3
    assert sorted(disk.pages) == [(1, 0), (1, 1), (1, 2)] and empty(zc)


class Remote:
    def __init__(self):
        self.freed = []

    def free_remote(self, r, pool, oid, index):
        self.freed.append((r, oid, index))

    def free_obj(self, pool, oid, pool_destroy):
        pass

    def free_pool(self, pool):
        pass

    def stats(self):
        return {}


def test_remotify_sends_a_single_entry_and_keeps_a_shared_copy():
    zc = zc_(frames=8)
    zc.attach_remote(Remote())
    pid = zc.new_pool(persistent=True)
    pool = zc.pool(pid)
    lone, shared = sized_page(17, 2200), sized_page(18, 2200)
    assert zc.put_page(pid, 1, 0, lone)
    for i in range(2):
        assert zc.put_page(pid, 2, i, shared)
    pages, taken = zc.take_lru(True, 2)
    assert [(pg[2], pg[3]) for pg in pages] == [(1, 0)] and len(taken) == 2
    assert zc.decode(pages[0][4]) == lone and zc.still_taken(*pages[0][:4])
    assert zc.commit_remote(*pages[0][:4], 0)
    assert zc.release_taken(taken) == 1  # the shared copy's frame goes back to its LRU
    assert zc.on_peer(pid, 1, 0) and zc.get_page(pid, 1, 0) is ON_PEER
    assert [(o, i) for _, o, i, _ in zc.remote_slots()] == [(1, 0)]
    assert zc.remote_entry(pool, 2, 0) == -1 and zc.get_page(pid, 2, 1) == shared
    assert zc.get_raw(pool, 2, 0, free=False) == zc.get_raw(pool, 2, 1, free=False)
    zc.check()


def test_a_page_on_the_wire_is_not_shared_it_leaves_as_its_owners():
    zc = zc_(frames=8)
    zc.attach_remote(Remote())
    pid = zc.new_pool(persistent=True)
    pg = sized_page(19, 2200)
    assert zc.put_page(pid, 1, 0, pg)
    pages, taken = zc.take_lru(True, 1)
    assert len(pages) == 1
    assert zc.put_page(pid, 1, 1, pg)  # the copy is taken: this put stores its own
    assert dedup_stats(zc) == {"hits": 0, "collisions": 0, "pages": 0, "saved_pages": 0}
    assert zc.commit_remote(*pages[0][:4], 0)  # the first owner's page now lives on a peer
    assert zc.release_taken(taken) == 1  # its frame goes: nothing else holds the copy
    assert zc.on_peer(pid, 1, 0) and zc.get_page(pid, 1, 1) == pg
    zc.check()
    assert zc.put_page(pid, 1, 2, pg)  # the second copy answers for the key now
    assert dedup_stats(zc) == {"hits": 1, "collisions": 0, "pages": 1, "saved_pages": 1}
    assert zc.get_page(pid, 1, 1) == pg and zc.get_page(pid, 1, 2) == pg
    zc.check()


def test_a_put_that_shares_an_entry_on_the_wire_keeps_it():
    zc = zc_(frames=8)
    zc.attach_remote(Remote())
    pid = zc.new_pool(persistent=True)
    pg, other = sized_page(19, 1800), sized_page(20, 1800)
    assert zc.put_page(pid, 1, 0, pg) and zc.put_page(pid, 1, 1, pg)  # an entry of two owners
    assert zc.put_page(pid, 1, 2, other)  # a plain page in the same frame
    pages, taken = zc.take_lru(True, 1)
    assert [x[:4] for x in pages] == [x[:4] for x in pages if x[2:4] == (1, 2)], "only the plain page travels"
    assert zc.put_page(pid, 1, 3, pg)  # shares the entry's copy while its frame is taken
    assert dedup_stats(zc)["saved_pages"] == 2
    assert zc.commit_remote(*pages[0][:4], 0)
    assert zc.release_taken(taken) == 0  # the owners still hold the copy
    assert all(zc.get_page(pid, 1, i) == pg for i in (0, 1, 3)) and zc.on_peer(pid, 1, 2)
    zc.check()


def test_a_hash_collision_is_never_shared():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    a, b = page(20), page(21)
    assert zc.put_page(pid, 1, 0, a)
    # file a's page under b's key, as a colliding hash would
    dt = zc.dedup
    (key_a, p), = dt.index.items()
    key_b = xxh3_128_intdigest(zc.codec.compress(b), 1)
    del dt.index[key_a]
    dt.index[key_b] = p
    dt.keyof[p] = key_b
    assert zc.put_page(pid, 1, 1, b)
    assert zc.get_page(pid, 1, 0) == a and zc.get_page(pid, 1, 1) == b
    assert dedup_stats(zc) == {"hits": 0, "collisions": 1, "pages": 0, "saved_pages": 0}
    zc.check()
    assert zc.put_page(pid, 1, 2, b)  # b's own copy answers for the key now, and is shared
    assert dedup_stats(zc) == {"hits": 1, "collisions": 1, "pages": 1, "saved_pages": 1}
    assert zc.stats()["zbud.pers_zpages"] == 2
    assert [zc.get_page(pid, 1, i) for i in range(3)] == [a, b, b]
    zc.flush_object(pid, 1)
    assert empty(zc)


def test_a_single_page_is_no_entry_and_a_free_unindexes_it():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    pg = sized_page(30, 1500)
    assert zc.put_page(pid, 1, 0, pg)
    dt = zc.dedup
    (key, v), = dt.index.items()
    assert v > 0 and dt.entries == 0 and zc.lookup(zc.pool(pid), 1, 0) == v  # the slot holds the page itself
    assert zc.flush_page(pid, 1, 0)
    assert not dt.index and empty(zc)
    assert zc.put_page(pid, 1, 1, pg) and zc.get_page(pid, 1, 1, free=True) == pg  # an exclusive get too
    assert not dt.index and empty(zc)


@pytest.mark.parametrize("allocator", ["zbud", "dense"])
def test_a_value_left_by_an_evicted_frame_is_checked_not_shared(allocator):
    zc = zc_(frames=4, allocator=allocator)
    eph = zc.new_pool(persistent=False)
    pg, other = sized_page(31, 2200), sized_page(32, 2200)
    assert zc.put_page(eph, 1, 0, pg)
    assert zc.set_max_pageframes(0) == 0 and zc.get_page(eph, 1, 0) is None  # the frame is eaten whole
    dt = zc.dedup
    (key, p), = dt.index.items()
    assert p > 0 and not zc.zbud.stored_size(p)  # left behind, to be checked when found
    zc.set_max_pageframes(4)
    assert zc.put_page(eph, 2, 0, pg)  # found, refused by the check, stored afresh
    (key2, q), = dt.index.items()
    assert key2 == key and zc.zbud.stored_size(q)
    assert dedup_stats(zc)["hits"] == 0 and zc.get_page(eph, 2, 0) == pg  # (an ephemeral get frees it)
    # a reference reused by another page drops what its old key left
    assert zc.set_max_pageframes(0) == 0
    zc.set_max_pageframes(4)
    assert zc.put_page(eph, 3, 0, other)
    assert dedup_stats(zc)["hits"] == 0 and zc.get_page(eph, 3, 0) == other
    zc.check()


def test_a_recompressed_page_keeps_its_key():
    zc = zc_(allocator="dense")
    pid = zc.new_pool()  # ephemeral: recompressed one by one (persistent pages make cold groups)
    pg = page(40)
    assert zc.put_page(pid, 1, 0, pg)
    (key, p), = zc.dedup.index.items()
    zc.mark_idle()
    assert zc.recompress() == 1
    q = zc.lookup(zc.pool(pid), 1, 0)
    assert q != p and zc.zbud.codec(q) and zc.dedup.index == {key: q}
    assert zc.put_page(pid, 1, 1, pg)  # compared as a get decodes it, and shared
    assert dedup_stats(zc) == {"hits": 1, "collisions": 0, "pages": 1, "saved_pages": 1}
    assert zc.get_page(pid, 1, 0) == pg and zc.get_page(pid, 1, 1) == pg
    zc.check()


def test_a_page_in_a_cold_group_leaves_the_index():
    zc = zc_(allocator="dense")
    pid = zc.new_pool(persistent=True)
    pg = page(40)
    assert zc.put_page(pid, 1, 0, pg) and zc.put_page(pid, 1, 1, page(41))
    assert len(zc.dedup.index) == 2
    zc.mark_idle()
    assert zc.recompress() == 2 and zc.stats()["dense.cold_pages"] == 2
    assert zc.dedup.index == {}  # no value leads to a page no longer stored on its own
    assert zc.put_page(pid, 1, 2, pg)  # stored afresh, not shared with the grouped copy
    assert dedup_stats(zc)["hits"] == 0
    assert [zc.get_page(pid, 1, i) for i in range(3)] == [pg, page(41), pg]
    zc.check()


@pytest.mark.parametrize("allocator", ["zbud", "dense"])
def test_the_index_stays_bounded_by_the_allocator_whatever_leaves(allocator):
    zc = zc_(frames=4, allocator=allocator)
    eph = zc.new_pool(persistent=False)
    pers = zc.new_pool(persistent=True)
    dt = zc.dedup
    most = 0
    for i in range(3000):  # distinct pages through few slots: frees, evictions and overwrites
        pool = pers if i % 3 == 0 else eph
        zc.put_page(pool, i % 5, i % 7, sized_page(1000 + i, 1000 + i % 900))
        if i % 97 == 0:
            zc.flush_object(pers, i % 5)
        most = max(most, len(dt.index))
    zc.check()
    # one value per reference at most, and the references are the allocator's
    refs = 2 * zc.zbud.nodes if allocator == "zbud" else len(zc.zbud.hsize)
    assert most <= len(dt.keyof) + dt.entries and len(dt.keyof) <= refs + refs // 8 + 1


def test_same_filled_zero_and_huge_pages_are_not_entries():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    for i in range(3):
        assert zc.put_page(pid, 1, i, bytes(4096))
        assert zc.put_page(pid, 2, i, b"\x5a" * 4096)
        assert zc.put_page(pid, 3, i, random_page(1), huge=True)
    assert zc.dedup.entries == 0 and zc.stats()["zcache.huge_pages"] == 3
    assert zc.get_page(pid, 3, 2) == random_page(1) and zc.get_page(pid, 2, 1) == b"\x5a" * 4096
    zc.check()


def test_foreign_pages_are_stored_as_they_came():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    assert zc.put_page(pid, 1, 0, random_page(2), huge=True)  # stored raw: no entry took its key
    fpool = zc.foreign_pool(3, 0, True)
    payload = bytes(zc.codec.compress(page(22)))
    assert zc.put_raw(fpool, 1, 0, payload) and zc.put_raw(fpool, 1, 1, payload)
    assert zc.dedup.entries == 0 and zc.get_raw(fpool, 1, 1, free=True) == payload
    assert zc.destroy_foreign_pool(fpool) and zc.destroy_pool(pid) and empty(zc)


def test_without_dedup_nothing_is_shared():
    zc = Zcache(16)
    pid = zc.new_pool(persistent=True)
    for i in range(4):
        assert zc.put_page(pid, 1, i, page(23))
    assert zc.dedup is None and zc.stats()["zbud.pers_zpages"] == 4
    assert dedup_stats(zc) == {"hits": 0, "collisions": 0, "pages": 0, "saved_pages": 0}
    zc.check()


def test_config_and_flag(tmp_path):
    assert build(memory="16M").dedup is False
    assert build(memory="16M", dedup=True).dedup is True
    f = tmp_path / "ramster.toml"
    f.write_text('[node]\nmemory = "16M"\ndedup = true\n')
    assert build(f).dedup is True
    f.write_text('[node]\nmemory = "16M"\ndedup = "yes"\n')
    with pytest.raises(ConfigError, match="dedup"):
        build(f)


def test_cli_flag():
    from ramster.cli.main import build_parser

    args = build_parser().parse_args(["node", "--dedup"])
    assert args.dedup is True
    assert build_parser().parse_args(["node"]).dedup is None


@pytest.mark.parametrize("allocator", ["zbud", "dense"])
def test_each_allocator_shares_writes_back_and_frees(allocator):
    """The paths above through either allocator, counted in pages rather than frames."""
    disk = Disk()
    zc = Zcache(64, reserve_pageframes=64, dedup=True, allocator=allocator, writeback_sink=disk)
    pers = zc.new_pool(persistent=True)
    eph = zc.new_pool(persistent=False)
    a, b = sized_page(30, 1500), sized_page(31, 2200)
    for i in range(6):
        assert zc.put_page(pers, 1, i, a if i % 2 else b) and zc.put_page(eph, 1, i, a)
    assert zc.zpages_in_memory(True) == 2 and zc.zpages_in_memory(False) == 1
    assert zc.put_page(pers, 1, 1, b)  # a write to one owner
    assert [zc.get_page(pers, 1, i) for i in range(4)] == [b, b, b, a]
    assert zc.get_page(eph, 1, 0) == a and zc.get_page(eph, 1, 0) is None
    zc.check()
    zc.set_max_pageframes(0)  # ephemeral copies dropped, persistent ones written back for each owner
    assert disk.pages == {(1, i): (a if i in (3, 5) else b) for i in range(6)}
    assert all(zc.get_page(eph, 1, i) is None for i in range(6))
    assert empty(zc) and dedup_stats(zc)["saved_pages"] == 0
