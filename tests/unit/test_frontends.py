"""frontswap and cleancache contracts (SPEC §1.6, §1.7, §6.1, §6.2)."""
import pytest
from pages import page, random_page

from ramster import Cleancache, Frontswap, TmemError, Zcache
from ramster.frontends.frontswap import swiz, unswiz


def test_swizzle_spreads_offsets_over_256_objects_and_reverses():
    assert swiz(0, 0x1234) == (0x34, 0x12)
    assert swiz(3, 0xFF) == (0x3FF, 0)
    for t, off in [(0, 0), (1, 255), (2, 256), (31, (1 << 40) - 1)]:
        assert unswiz(*swiz(t, off)) == (t, off)


def test_store_load_exclusive_by_default():
    zc = Zcache(64)
    fs = Frontswap(zc)
    fs.init(0)
    assert fs.store(0, 1000, page(1))
    assert fs.load(0, 1000) == page(1)
    assert fs.load(0, 1000) is None  # exclusive: the copy left tmem
    s = fs.stats()
    assert s == {"frontswap.loads": 1, "frontswap.succ_stores": 1, "frontswap.failed_stores": 0, "frontswap.invalidates": 0}


def test_non_exclusive_load_keeps_page():
    fs = Frontswap(Zcache(64), exclusive_gets=False)
    fs.init(1)
    fs.store(1, 7, page(2))
    assert fs.load(1, 7) == page(2) and fs.load(1, 7) == page(2)


def test_one_persistent_pool_for_all_types():
    zc = Zcache(64)
    fs = Frontswap(zc)
    fs.init(0)
    fs.init(1)
    assert zc.is_persistent(fs.pool_id)
    fs.store(0, 5, page(1))
    fs.store(1, 5, page(2))
    assert fs.load(0, 5) == page(1) and fs.load(1, 5) == page(2)


def test_failed_duplicate_store_leaves_no_stale_copy():
    fs = Frontswap(Zcache(64))
    fs.init(0)
    assert fs.store(0, 3, page(3))
    assert not fs.store(0, 3, random_page(3))
    assert fs.load(0, 3) is None
    assert fs.stats()["frontswap.failed_stores"] == 1


def test_was_active_filter_returns_false_and_counts():
    zc = Zcache(64)
    fs = Frontswap(zc)
    fs.init(0)
    fs.store(0, 9, page(1))
    assert fs.store(0, 9, page(2), was_active=False) is False
    assert fs.load(0, 9) is None  # the older copy must not survive
    assert zc.stats()["zcache.pers_nonactive_puts_ignored"] == 1
    fs2 = Frontswap(Zcache(64), ignore_nonactive=False)
    fs2.init(0)
    assert fs2.store(0, 9, page(2), was_active=False)


def test_invalidate_page_and_area():
    fs = Frontswap(Zcache(1024))
    fs.init(0)
    fs.init(1)
    for off in range(600):
        fs.store(0, off, page(off))
    fs.store(1, 1, page(1))
    assert fs.invalidate_page(0, 5) is True and fs.invalidate_page(0, 5) is False
    assert fs.load(0, 5) is None
    fs.invalidate_area(0)
    assert fs.zc.stats()["zcache.obj_count"] == 1  # only type 1's object is left
    assert fs.load(1, 1) == page(1)
    # as in the seed: a type that is not initialised misses and refuses stores until init() again
    assert fs.load(0, 6) is None
    assert fs.store(0, 6, page(6)) is False
    assert fs.invalidate_page(0, 6) is False
    fs.invalidate_area(0)  # twice is harmless
    fs.init(0)
    assert fs.load(0, 6) is None
    assert fs.store(0, 6, page(6)) is True and fs.load(0, 6) == page(6)


def test_never_initialised_type_misses():
    fs = Frontswap(Zcache(16))
    assert fs.load(3, 0) is None
    assert fs.store(3, 0, page(0)) is False
    assert fs.stats()["frontswap.failed_stores"] == 1
    assert fs.invalidate_page(3, 0) is False


def test_front_end_flushes_count_in_zcache():
    zc = Zcache(64)
    fs = Frontswap(zc)
    fs.init(0)
    fs.store(0, 1, page(1))
    fs.invalidate_page(0, 1)
    fs.invalidate_page(0, 2)
    s = zc.stats()
    assert (s["zcache.flush_total"], s["zcache.flush_found"]) == (2, 1)
    fs.invalidate_area(0)
    assert zc.stats()["zcache.flobj_total"] == 256
    cc = Cleancache(zc)
    fsid = cc.init_fs()
    cc.put_page(fsid, 7, 0, page(7))
    cc.invalidate_page(fsid, 7, 0)
    cc.invalidate_inode(fsid, 8)
    s = zc.stats()
    assert (s["zcache.flush_total"], s["zcache.flush_found"]) == (3, 2)
    assert s["zcache.flobj_total"] == 257


def test_incompressible_pages_without_a_swap_disk_are_kept_huge():
    import os

    zc = Zcache(8)
    fs = Frontswap(zc)
    fs.init(0, no_swap_disk=True)
    fs.init(1)
    rnd = [os.urandom(4096) for _ in range(9)]
    assert fs.store(1, 0, rnd[0]) is False  # with a swap disk the seed's policy stands
    for i in range(8):
        assert fs.store(0, i, rnd[i]) is True
    assert zc.stats()["zcache.huge_pages"] == 8
    assert fs.store(0, 8, rnd[8]) is False  # memory is full: now it is refused
    assert [fs.load(0, i) for i in range(8)] == rnd[:8]
    zc.check()


def test_offsets_beyond_32bit_index_are_ignored():
    fs = Frontswap(Zcache(16))
    fs.init(0)
    assert fs.store(0, 1 << 40, page(0)) is False
    assert fs.load(0, 1 << 40) is None


@pytest.mark.parametrize("call, exc", [
    (lambda fs: fs.init(-1), ValueError),
    (lambda fs: fs.init("0"), TypeError),
    (lambda fs: fs.store(0, -1, page(0)), ValueError),
    (lambda fs: fs.store(0, 1.0, page(0)), TypeError),
    (lambda fs: fs.store(0, 0, b"short"), ValueError),
    (lambda fs: fs.load(0, "1"), TypeError),
    (lambda fs: fs.store(-5, 0, page(0)), ValueError),
    (lambda fs: fs.invalidate_page(2, -1), ValueError),
    (lambda fs: fs.invalidate_area("2"), TypeError),
])  # fmt: skip
def test_frontswap_bad_input(call, exc):
    fs = Frontswap(Zcache(16))
    fs.init(0)
    with pytest.raises(exc):
        call(fs)


def test_cleancache_put_get_exclusive_and_counters():
    zc = Zcache(64)
    cc = Cleancache(zc)
    fsid = cc.init_fs()
    assert not zc.is_persistent(fsid)
    assert cc.put_page(fsid, 42, 3, page(4)) is None
    assert cc.get_page(fsid, 42, 3) == page(4)
    assert cc.get_page(fsid, 42, 3) is None
    assert cc.stats() == {"cleancache.succ_gets": 1, "cleancache.failed_gets": 1, "cleancache.puts": 1, "cleancache.invalidates": 0}


def test_cleancache_invalidations_and_fs_lifecycle():
    zc = Zcache(64)
    cc = Cleancache(zc)
    a, b = cc.init_fs(), cc.init_shared_fs(b"uuid")
    for i in range(4):
        cc.put_page(a, 1, i, page(i))
        cc.put_page(a, (2, 0, 0), i, page(i + 10))
    cc.put_page(b, 1, 0, page(20))
    cc.invalidate_page(a, 1, 0)
    assert cc.get_page(a, 1, 0) is None
    cc.invalidate_inode(a, 2)
    assert cc.get_page(a, (2, 0, 0), 1) is None
    assert cc.get_page(a, 1, 1) == page(1)
    cc.invalidate_fs(a)
    with pytest.raises(TmemError):
        cc.get_page(a, 1, 2)
    assert cc.get_page(b, 1, 0) == page(20)
    assert cc.stats()["cleancache.invalidates"] == 3


def test_cleancache_was_active_filter():
    zc = Zcache(64)
    cc = Cleancache(zc)
    fsid = cc.init_fs()
    cc.put_page(fsid, 1, 1, page(1), was_active=False)
    assert cc.get_page(fsid, 1, 1) is None
    assert zc.stats()["zcache.eph_nonactive_puts_ignored"] == 1
    cc2 = Cleancache(zc, ignore_nonactive=False)
    f2 = cc2.init_fs()
    cc2.put_page(f2, 1, 1, page(1), was_active=False)
    assert cc2.get_page(f2, 1, 1) == page(1)


def test_cleancache_big_index_ignored_and_bad_input():
    cc = Cleancache(Zcache(16))
    fsid = cc.init_fs()
    cc.put_page(fsid, 1, 1 << 32, page(0))
    assert cc.get_page(fsid, 1, 1 << 32) is None
    with pytest.raises(ValueError):
        cc.init_fs(pagesize=8192)
    with pytest.raises(TmemError):
        cc.get_page(fsid + 1, 1, 0)
    with pytest.raises(TypeError):
        cc.get_page("0", 1, 0)
    with pytest.raises(ValueError):
        cc.put_page(fsid, -1, 0, page(0))
    with pytest.raises(ValueError):
        cc.put_page(fsid, 1, -1, page(0))
    with pytest.raises(TypeError):
        cc.put_page(fsid, 1, 0, 12)
