"""zcache (SPEC §1, §4): the public API, policies, ouroboros, counters, bad input."""
import pytest
from pages import page, random_page, sized_page

import ramster
from ramster import TmemError, Zcache
from ramster.compress import NAMES


def zc_(frames=64, **kw):
    return Zcache(max_pageframes=frames, **kw)


def test_put_get_persistent_keeps_page_and_free_removes_it():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    assert zc.put_page(pid, 1, 0, page(0)) is True
    assert zc.get_page(pid, 1, 0) == page(0)
    assert zc.get_page(pid, 1, 0) == page(0)  # persistent gets keep it
    assert zc.get_page(pid, 1, 0, free=True) == page(0)
    assert zc.get_page(pid, 1, 0) is None
    zc.check()


def test_ephemeral_get_removes_page():
    zc = zc_()
    pid = zc.new_pool(persistent=False)
    assert zc.put_page(pid, 5, 9, page(1))
    assert zc.get_page(pid, 5, 9) == page(1)
    assert zc.get_page(pid, 5, 9) is None  # get-get: a miss stays a miss
    zc.check()


def test_put_put_get_returns_latest():
    zc = zc_()
    for persistent in (True, False):
        pid = zc.new_pool(persistent=persistent)
        zc.put_page(pid, 1, 1, page(2))
        zc.put_page(pid, 1, 1, page(3))
        assert zc.get_page(pid, 1, 1) == page(3)
        zc.check()


def test_failed_duplicate_put_flushes_old_copy():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    assert zc.put_page(pid, 1, 1, page(4))
    assert zc.put_page(pid, 1, 1, random_page(1)) is False  # incompressible
    assert zc.get_page(pid, 1, 1) is None  # never the stale old value
    assert zc.stats()["zcache.compress_poor"] == 1
    assert zc.stats()["zcache.failed_pers_puts"] == 1
    zc.check()


def test_flush_page_and_object_results():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    for i in range(5):
        zc.put_page(pid, 3, i, page(i))
    assert zc.flush_page(pid, 3, 2) is True
    assert zc.flush_page(pid, 3, 2) is False
    assert zc.get_page(pid, 3, 2) is None
    assert zc.flush_object(pid, 3) is True
    assert zc.flush_object(pid, 3) is False
    assert all(zc.get_page(pid, 3, i) is None for i in range(5))
    s = zc.stats()
    assert (s["zcache.flush_total"], s["zcache.flush_found"], s["zcache.flobj_total"], s["zcache.flobj_found"]) == (2, 1, 2, 1)
    assert s["zcache.pers_zpages"] == 0 and s["zcache.pers_pageframes"] == 0
    zc.check()


def test_sixteen_pools_then_tmem_error_and_ids_reused():
    zc = zc_()
    ids = [zc.new_pool(persistent=bool(i % 2)) for i in range(16)]
    assert ids == list(range(16))
    with pytest.raises(TmemError):
        zc.new_pool()
    assert zc.destroy_pool(7) is True
    assert zc.destroy_pool(7) is False
    assert zc.new_pool() == 7


def test_destroy_pool_frees_everything():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    for i in range(40):
        zc.put_page(pid, i % 3, i, page(i))
    assert zc.stats()["zcache.pers_pageframes"] > 0
    zc.destroy_pool(pid)
    s = zc.stats()
    assert s["zcache.pers_pageframes"] == 0 and s["zcache.obj_count"] == 0 and s["zcache.objnode_count"] == 0
    zc.check()
    with pytest.raises(TmemError):
        zc.get_page(pid, 0, 0)


def test_oid_forms_and_limits():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    big = (1 << 192) - 1
    assert zc.put_page(pid, big, (1 << 32) - 1, page(1))
    assert zc.get_page(pid, (2**64 - 1, 2**64 - 1, 2**64 - 1), (1 << 32) - 1) == page(1)
    assert zc.put_page(pid, (5, 0, 1), 0, page(2))
    assert zc.get_page(pid, 5 | 1 << 128, 0) == page(2)


def test_zero_and_same_filled_pages_take_no_frame():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    assert zc.put_page(pid, 1, 0, bytes(4096))
    assert zc.put_page(pid, 1, 1, b"\xab\xcd\x00\x01\x02\x03\x04\x05" * 512)
    assert zc.put_page(pid, 1, 2, b"\xab\xcd\x00\x01\x02\x03\x04\x05" * 512)
    s = zc.stats()
    assert s["zcache.zero_filled_pages"] == 1 and s["zcache.same_filled_pages"] == 2
    assert s["zcache.pers_pageframes"] == 0 and s["zcache.pers_zpages"] == 3
    assert zc.get_page(pid, 1, 0) == bytes(4096)
    assert zc.get_page(pid, 1, 2, free=True) == b"\xab\xcd\x00\x01\x02\x03\x04\x05" * 512
    zc.flush_object(pid, 1)
    s = zc.stats()
    assert s["zcache.zero_filled_pages"] == 0 and s["zcache.same_filled_pages"] == 0 and s["zcache.pers_zpages"] == 0
    zc.check()


def test_ephemeral_ouroboros_eats_lru_frame():
    zc = zc_(frames=4)
    pid = zc.new_pool(persistent=False)
    big = [sized_page(i, 3000) for i in range(6)]  # one per frame
    for i, p in enumerate(big):
        assert zc.put_page(pid, 1, i, p)
        zc.check()
    s = zc.stats()
    assert s["zcache.eph_ate_tail"] == 2 and s["zcache.evicted_eph_pageframes"] == 2
    assert s["zcache.evicted_eph_zpages"] == 2 and s["zcache.failed_get_free_pages"] == 2
    # the two oldest are gone, the rest are there
    assert [zc.get_page(pid, 1, i) is not None for i in range(6)] == [False, False, True, True, True, True]
    zc.check()


def test_persistent_put_eats_ephemeral_never_persistent():
    zc = zc_(frames=4)
    eph = zc.new_pool(persistent=False)
    pers = zc.new_pool(persistent=True)
    for i in range(2):
        zc.put_page(eph, 1, i, sized_page(i, 3000))
    for i in range(4):
        assert zc.put_page(pers, 2, i, sized_page(10 + i, 2000))
    s = zc.stats()
    assert s["zcache.pers_ate_eph"] >= 1 and s["zcache.eph_pageframes"] == 0
    assert not zc.put_page(pers, 2, 99, sized_page(20, 2000))  # only persistent frames left
    s = zc.stats()
    assert s["zcache.pers_ate_eph_failed"] == 1 and s["zcache.failed_pers_puts"] == 1
    assert all(zc.get_page(pers, 2, i) == sized_page(10 + i, 2000) for i in range(4))
    # an ephemeral put cannot eat persistent frames either
    assert not zc.put_page(eph, 1, 5, sized_page(30, 3000))
    assert zc.stats()["zcache.eph_ate_tail_failed"] == 1
    zc.check()


def test_persistent_size_policy():
    zc = zc_(frames=64)
    pid = zc.new_pool(persistent=True)
    assert not zc.put_page(pid, 1, 0, sized_page(1, 3700))  # over 3584
    assert zc.stats()["zcache.compress_poor"] == 1
    assert zc.put_page(pid, 1, 1, sized_page(2, 3000))  # first large page: no mean yet
    assert not zc.put_page(pid, 1, 2, sized_page(3, 3000))  # mean 3000+ > 2560
    assert zc.stats()["zcache.mean_compress_poor"] == 1
    for i in range(4):
        assert zc.put_page(pid, 2, i, sized_page(100 + i, 300))  # pull the mean down
    assert zc.put_page(pid, 1, 2, sized_page(3, 3000))
    eid = zc.new_pool(persistent=False)
    assert zc.put_page(eid, 1, 0, sized_page(4, 3900))  # ephemeral limit is 4000
    assert not zc.put_page(eid, 1, 1, random_page(5))
    zc.check()


def test_counters_have_seed_names():
    s = zc_().stats()
    names = """obj_count obj_count_max objnode_count objnode_count_max flush_total flush_found flobj_total
    flobj_found failed_eph_puts failed_pers_puts failed_get_free_pages failed_alloc put_to_flush compress_poor
    mean_compress_poor eph_ate_tail eph_ate_tail_failed pers_ate_eph pers_ate_eph_failed evicted_eph_zpages
    evicted_eph_pageframes eph_pageframes eph_pageframes_max pers_pageframes pers_pageframes_max eph_zpages
    eph_zpages_max pers_zpages pers_zpages_max eph_zbytes eph_zbytes_max pers_zbytes pers_zbytes_max
    last_active_file_pageframes last_inactive_file_pageframes last_active_anon_pageframes
    last_inactive_anon_pageframes eph_nonactive_puts_ignored pers_nonactive_puts_ignored zero_filled_pages
    same_filled_pages outstanding_writeback_pages writtenback_pages pageframes_alloced pageframes_freed""".split()
    for n in names:
        assert f"zcache.{n}" in s, n
    assert all(k.startswith(("zcache.", "zbud.")) for k in s)


def test_maxima_track_peaks():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    for i in range(10):
        zc.put_page(pid, 1, i, page(i))
    peak = zc.stats()
    zc.flush_object(pid, 1)
    s = zc.stats()
    assert s["zcache.pers_zpages_max"] == peak["zcache.pers_zpages"] == 10
    assert s["zcache.pers_zbytes_max"] == peak["zcache.pers_zbytes"] > 0
    assert s["zcache.pers_pageframes_max"] == peak["zcache.pers_pageframes"]
    assert s["zcache.obj_count_max"] == 1 and s["zcache.obj_count"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_every_compressor_round_trips(name):
    zc = zc_(compressor=name)
    pid = zc.new_pool(persistent=True)
    for i in range(20):
        assert zc.put_page(pid, 1, i, page(i))
    for i in range(20):
        assert zc.get_page(pid, 1, i) == page(i)
    zc.check()


def test_unknown_compressor_lists_choices():
    with pytest.raises(ValueError, match="lz4.*lzo.*zstd.*zlib"):
        Zcache(8, compressor="snappy")


def test_bytes_like_pages_accepted():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    p = page(5)
    assert zc.put_page(pid, 1, 0, bytearray(p))
    assert zc.put_page(pid, 1, 1, memoryview(p))
    import array

    assert zc.put_page(pid, 1, 2, array.array("I", p))
    assert zc.get_page(pid, 1, 0) == zc.get_page(pid, 1, 1) == zc.get_page(pid, 1, 2) == p


def test_bytes_like_same_filled_and_zero_pages():
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    assert zc.put_page(pid, 1, 0, bytearray(b"ab" * 2048))
    assert zc.put_page(pid, 1, 1, memoryview(bytes(4096)))
    assert zc.put_page(pid, 1, 2, memoryview(bytearray(b"\x07" * 4096)))
    assert zc.get_page(pid, 1, 0) == b"ab" * 2048 and zc.get_page(pid, 1, 1) == bytes(4096)
    assert zc.get_page(pid, 1, 2) == b"\x07" * 4096
    assert zc.stats()["zcache.same_filled_pages"] == 2 and zc.stats()["zcache.zero_filled_pages"] == 1


def test_set_max_pageframes_shrinks_ephemeral_and_reports_persistent_leftover():
    zc = zc_(frames=16)
    eph = zc.new_pool(persistent=False)
    pers = zc.new_pool(persistent=True)
    for i in range(8):
        zc.put_page(eph, 1, i, sized_page(i, 3000))
        zc.put_page(pers, 1, i, sized_page(100 + i, 3000) if i == 0 else sized_page(100 + i, 2000))
    assert zc.stats()["zcache.eph_pageframes"] == 8 and zc.stats()["zcache.pers_pageframes"] == 8
    assert zc.set_max_pageframes(10) == 0
    assert zc.stats()["zcache.eph_pageframes"] == 2
    left = zc.set_max_pageframes(4)
    assert left == 4 and zc.stats()["zcache.eph_pageframes"] == 0
    assert all(zc.get_page(pers, 1, i) is not None for i in range(8))
    assert zc.set_max_pageframes(32) == 0
    assert zc.put_page(eph, 2, 0, page(1))
    zc.check()


def test_writeback_lru_moves_oldest_persistent_frames_to_sink():
    zc = zc_(frames=4)
    pid = zc.new_pool(persistent=True)
    disk = {}

    def sink(pool, oid, index, data):
        disk[(oid, index)] = data
        return True

    zc.writeback_sink = sink
    for i in range(12):
        assert zc.put_page(pid, 1, i, sized_page(i, 2400))  # one per frame: forces writeback
        zc.check()
    s = zc.stats()
    assert s["zcache.writtenback_pages"] == 8 and s["zcache.outstanding_writeback_pages"] == 0
    assert sorted(disk) == [(1, i) for i in range(8)]  # oldest first
    for i in range(12):
        got = zc.get_page(pid, 1, i)
        assert (got if got is not None else disk[(1, i)]) == sized_page(i, 2400)


def test_writeback_refused_keeps_frame_and_data():
    zc = zc_(frames=2)
    pid = zc.new_pool(persistent=True)
    zc.writeback_sink = lambda *a: False
    assert zc.put_page(pid, 1, 0, sized_page(0, 2400))
    assert zc.put_page(pid, 1, 1, sized_page(1, 2400))
    assert not zc.put_page(pid, 1, 2, sized_page(2, 2400))
    assert zc.get_page(pid, 1, 0) == sized_page(0, 2400)
    assert zc.stats()["zbud.pers_zombie_count"] == 0
    zc.check()


def test_shrink_evicts_to_file_lru_size():
    zc = zc_(frames=16)
    eid = zc.new_pool(persistent=False)
    for i in range(10):
        zc.put_page(eid, 1, i, sized_page(i, 3000))
    assert zc.shrink(active_file=3, inactive_file=2, active_anon=100, inactive_anon=100) == 0
    s = zc.stats()
    assert s["zcache.eph_pageframes"] == 5 and s["zcache.last_active_file_pageframes"] == 3
    zc.check()


# ---- bad input: every public call -------------------------------------------------------


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda zc, p: zc.put_page(p, -1, 0, page(0)), ValueError, "oid"),
        (lambda zc, p: zc.put_page(p, 1 << 192, 0, page(0)), ValueError, "oid"),
        (lambda zc, p: zc.put_page(p, (1, 2), 0, page(0)), ValueError, "oid"),
        (lambda zc, p: zc.put_page(p, (1, 2, 1 << 64), 0, page(0)), ValueError, "oid"),
        (lambda zc, p: zc.put_page(p, "x", 0, page(0)), TypeError, "oid"),
        (lambda zc, p: zc.put_page(p, 1.5, 0, page(0)), TypeError, "oid"),
        (lambda zc, p: zc.put_page(p, 1, -1, page(0)), ValueError, "index"),
        (lambda zc, p: zc.put_page(p, 1, 1 << 32, page(0)), ValueError, "index"),
        (lambda zc, p: zc.put_page(p, 1, "0", page(0)), TypeError, "index"),
        (lambda zc, p: zc.put_page(p, 1, 0, b"x" * 4095), ValueError, "page"),
        (lambda zc, p: zc.put_page(p, 1, 0, b"x" * 4097), ValueError, "page"),
        (lambda zc, p: zc.put_page(p, 1, 0, "x" * 4096), TypeError, "page"),
        (lambda zc, p: zc.put_page(p, 1, 0, None), TypeError, "page"),
        (lambda zc, p: zc.put_page("0", 1, 0, page(0)), TypeError, "pool_id"),
        (lambda zc, p: zc.get_page(p, -5, 0), ValueError, "oid"),
        (lambda zc, p: zc.get_page(p, 1, None), TypeError, "index"),
        (lambda zc, p: zc.flush_page(p, 1, -1), ValueError, "index"),
        (lambda zc, p: zc.flush_page(p, None, 0), TypeError, "oid"),
        (lambda zc, p: zc.flush_object(p, -1), ValueError, "oid"),
        (lambda zc, p: zc.set_max_pageframes(-1), ValueError, "max_pageframes"),
        (lambda zc, p: zc.set_max_pageframes("9"), TypeError, "max_pageframes"),
    ],
)
def test_bad_arguments_name_the_argument(call, exc, words):
    zc = zc_()
    pid = zc.new_pool(persistent=True)
    with pytest.raises(exc, match=words):
        call(zc, pid)


@pytest.mark.parametrize("call", [
    lambda zc: zc.put_page(9, 1, 0, page(0)),
    lambda zc: zc.get_page(9, 1, 0),
    lambda zc: zc.flush_page(9, 1, 0),
    lambda zc: zc.flush_object(9, 1),
    lambda zc: zc.put_page(-1, 1, 0, page(0)),
])  # fmt: skip
def test_unknown_pool_raises_tmem_error(call):
    with pytest.raises(TmemError):
        call(zc_())


def test_destroy_unknown_pool_is_false():
    assert zc_().destroy_pool(3) is False


def test_constructor_bad_arguments():
    with pytest.raises(ValueError, match="max_pageframes"):
        Zcache(-1)
    with pytest.raises(TypeError, match="max_pageframes"):
        Zcache("10")
    with pytest.raises(TypeError, match="compressor"):
        Zcache(4, compressor=3)


def test_public_names():
    assert ramster.PAGE_SIZE == 4096
    for name in ("Zcache", "Frontswap", "Cleancache", "TmemError"):
        assert hasattr(ramster, name)


def test_refused_put_with_keep_old_leaves_the_older_copy():
    import os

    zc = Zcache(2)
    pid = zc.new_pool(persistent=True)
    old, new = page(1), os.urandom(4096)
    assert zc.put_page(pid, 1, 0, old)
    assert zc.put_page(pid, 2, 0, os.urandom(4096), True)  # a huge page fills the second frame
    assert not zc.put_page(pid, 1, 0, new, True, True)  # no room for the new version next to the old
    assert zc.get_page(pid, 1, 0) == old
    assert not zc.put_page(pid, 1, 0, new, True)  # without keep_old the old copy goes
    assert zc.get_page(pid, 1, 0) is None
    zc.check()


# ---- the door's other operations (DESIGN.md, "Layout") ------------------------------------------


def test_contains_peek_and_on_peer_have_no_side_effects():
    zc = zc_()
    eid = zc.new_pool(persistent=False)
    assert zc.put_page(eid, 1, 2, page(7))
    before = zc.stats()
    assert zc.contains(eid, 1, 2) and not zc.contains(eid, 1, 3) and not zc.on_peer(eid, 1, 2)
    # an ephemeral pool's get is exclusive; a peek leaves the page for the next reader
    assert zc.peek_page(eid, 1, 2) == page(7) and zc.peek_page(eid, 1, 2) == page(7)
    assert zc.peek_page(eid, 1, 3) is None
    assert zc.stats() == before
    assert zc.get_page(eid, 1, 2) == page(7) and not zc.contains(eid, 1, 2)
    zc.check()


def test_peek_makes_the_frame_the_most_recently_used():
    zc = zc_(frames=2)
    eid = zc.new_pool(persistent=False)
    assert zc.put_page(eid, 1, 0, sized_page(0, 3000))
    assert zc.put_page(eid, 1, 1, sized_page(1, 3000))
    assert zc.peek_page(eid, 1, 0) == sized_page(0, 3000)  # page 0's frame is no longer the LRU one
    assert zc.put_page(eid, 1, 2, sized_page(2, 3000))  # eats one frame
    assert zc.contains(eid, 1, 0) and not zc.contains(eid, 1, 1)
    zc.check()


def test_nonactive_put_is_counted_by_zcache_and_flushes_the_old_copy():
    zc = zc_()
    pid, eid = zc.new_pool(persistent=True), zc.new_pool(persistent=False)
    for p in (pid, eid):
        assert zc.put_page(p, 1, 1, page(1))
        zc.nonactive_put(p, 1, 1)
        assert not zc.contains(p, 1, 1)
    s = zc.stats()
    assert s["zcache.pers_nonactive_puts_ignored"] == 1 and s["zcache.eph_nonactive_puts_ignored"] == 1
    zc.check()


def test_writeback_sink_at_construction_and_frames_in_use():
    disk = {}
    zc = Zcache(2, writeback_sink=lambda pool, oid, index, data: disk.__setitem__((oid, index), data) or True)
    pid = zc.new_pool(persistent=True)
    for i in range(4):
        assert zc.put_page(pid, 1, i, sized_page(i, 2400))
    assert len(disk) == 2 and zc.pageframes_in_use == 2
    zc.close()


class RecordingRemote:
    """What RAMster's hooks are told (attach_remote's contract)."""

    def __init__(self):
        self.freed = []

    def free_remote(self, r, pool, oid, index):
        self.freed.append((r, oid, index))

    def free_obj(self, pool, oid, pool_destroy):
        pass

    def free_pool(self, pool):
        pass

    def stats(self):
        return {"ramster.test": 1}


def test_remotify_protocol_take_commit_release():
    zc = zc_(frames=8)
    remote = RecordingRemote()
    zc.attach_remote(remote)
    pid = zc.new_pool(persistent=True)
    for i in range(6):
        assert zc.put_page(pid, 1, i, sized_page(i, 1500))  # two per frame
    assert zc.put_page(pid, 2, 0, random_page(3), huge=True)  # a huge frame goes first
    pool = zc.pool(pid)
    pages, taken = zc.take_lru(True, 2)
    assert len(taken) == 2 and [(pg[2], pg[3]) for pg in pages] == [(2, 0), (1, 0), (1, 1)]
    assert pages[0][4] == random_page(3)  # a huge page's payload is the page
    assert all(zc.decode(pg[4]) == sized_page(pg[3], 1500) for pg in pages[1:])
    assert zc.get_page(pid, 1, 0) == sized_page(0, 1500)  # readable while taken
    assert zc.put_page(pid, 1, 1, page(9))  # overwritten while on the wire: it wins
    for r, (p, pl, oid, index, _) in enumerate(pages):
        assert zc.commit_remote(p, pl, oid, index, r) == (index != 1)
    assert zc.release_taken(taken) == 2  # the huge frame and the zbud frame are free
    assert zc.on_peer(pid, 1, 0) and zc.on_peer(pid, 2, 0) and not zc.on_peer(pid, 1, 1)
    assert zc.remote_entry(pool, 1, 0) == 1 and zc.remote_entry(pool, 1, 1) == -1
    assert sorted((o, i, r) for _, o, i, r in zc.remote_slots()) == [(1, 0, 1), (2, 0, 0)]
    from ramster.zcache import ON_PEER

    assert not ON_PEER and zc.get_page(pid, 1, 0, free=True) is ON_PEER and zc.on_peer(pid, 1, 0)
    assert zc.peek_page(pid, 1, 0) is None and zc.contains(pid, 1, 0)
    assert zc.stats()["ramster.test"] == 1
    zc.check()
    assert zc.flush_page(pid, 1, 0) and remote.freed == [(1, 1, 0)]
    zc.flush_object(pid, 2)
    assert remote.freed[-1] == (0, None, 0)  # an object-wide destroy: no per-page flush
    zc.check()


def test_take_lru_leaves_frames_with_foreign_pages_and_release_revives():
    zc = zc_(frames=4)
    fpool = zc.foreign_pool(3, 0, True)
    assert zc.put_raw(fpool, 1, 0, b"\x01" * 3000)  # a frame of its own
    pid = zc.new_pool(persistent=True)
    assert zc.put_page(pid, 1, 0, sized_page(0, 2000))
    pages, taken = zc.take_lru(True, 4)
    assert [(pg[2], pg[3]) for pg in pages] == [(1, 0)] and len(taken) == 1
    assert zc.release_taken(taken) == 0  # nothing left: the frame is back on its LRU
    assert zc.stats()["zbud.pers_zombie_count"] == 0 and zc.get_page(pid, 1, 0) == sized_page(0, 2000)
    assert zc.find_foreign_pool(3, 0) is fpool and zc.get_raw(fpool, 1, 0, free=True) == b"\x01" * 3000
    assert zc.destroy_foreign_pool(fpool) and zc.find_foreign_pool(3, 0) is None
    zc.check()


def test_attach_remote_once():
    zc = zc_()
    r = RecordingRemote()
    zc.attach_remote(r)
    zc.attach_remote(r)
    with pytest.raises(ValueError):
        zc.attach_remote(RecordingRemote())
