"""Cold groups (zcache_cold.py): cold persistent pages of a dense node compressed together.

Real Zcaches with the dense allocator, real codecs, real pages of every kind
(tests/pages.py). Each test reads every page back byte for byte, and
Zcache.check() (frames, the log, the counters, every cold slot's member
live) holds after each step that changes anything.
"""
import pytest
from pages import page, random_page, sized_page

from ramster import Zcache
from ramster.pampd import COLD_BASE, COLD_GROUP, is_cold
from ramster.units import PAGE_SIZE
from ramster.zbud import EPH, PERS

KINDS = ([page(i) for i in range(200)] + [bytes(PAGE_SIZE), b"\x5a" * PAGE_SIZE, b"ab" * 2048]
         + [sized_page(i, 700) for i in range(20)] + [random_page(i) for i in range(5)])


def cold_pass(zc) -> int:
    zc.mark_idle()
    n = zc.recompress()
    while zc.recompress_pending():
        n += zc.recompress()
    zc.check()
    return n


def stats(zc):
    return {k[len("dense."):]: v for k, v in zc.stats().items() if k.startswith("dense.cold")}


def filled(frames=2048, pages=KINDS, **kw):
    zc = Zcache(frames, allocator="dense", **kw)
    pid = zc.new_pool(persistent=True)
    for i, pg in enumerate(pages):
        assert zc.put_page(pid, 1, i, pg, huge=True)
    return zc, pid


def reads_back(zc, pid, pages):
    for i, pg in pages.items():
        assert zc.get_page(pid, 1, i) == pg, i


def test_every_kind_of_page_reads_back_from_a_group():
    zc, pid = filled()
    frames = zc.pageframes_in_use
    n = cold_pass(zc)
    s = stats(zc)
    assert n >= 200 and s["cold_grouped"] == s["cold_pages"] == n and s["cold_groups"] >= n // COLD_GROUP
    assert zc.pageframes_in_use < frames and s["cold_pageframes"] > 0
    pool = zc.pool(pid)
    assert sum(is_cold(zc.lookup(pool, 1, i)) for i in range(len(KINDS))) == n
    reads_back(zc, pid, dict(enumerate(KINDS)))
    zc.check()


def test_groups_keep_fewer_frames_than_pages_recompressed_one_by_one():
    pages = [page(i) for i in range(600)]
    grouped, pid = filled(pages=pages)
    single, _ = filled(pages=pages, cold_groups=False)
    cold_pass(grouped)
    cold_pass(single)
    single.compact()
    assert grouped.pageframes_in_use < single.pageframes_in_use * 0.95


def test_flush_overwrite_and_exclusive_get_free_members_and_the_last_frees_the_group():
    pages = {i: page(i) for i in range(64)}
    zc, pid = filled(pages=list(pages.values()))
    cold_pass(zc)
    assert stats(zc)["cold_pages"] == 64
    zc.flush_page(pid, 1, 0)
    pages.pop(0)
    assert zc.put_page(pid, 1, 1, page(500))  # an overwrite: the new version is an ordinary page
    pages[1] = page(500)
    assert zc.get_page(pid, 1, 2, free=True) == page(2)
    pages.pop(2)
    zc.check()
    assert stats(zc)["cold_pages"] == 61
    reads_back(zc, pid, pages)
    for i in list(pages):
        zc.flush_page(pid, 1, i)
    zc.check()
    s = stats(zc)
    assert s["cold_pages"] == s["cold_groups"] == s["cold_pageframes"] == 0
    assert zc.pageframes_in_use == 0 and zc.zbytes[PERS] == zc.zpages[PERS] == 0


def test_a_page_replaced_between_two_calls_of_a_pass_is_not_grouped_stale():
    """The queue of a pass waits between calls while puts run; a handle freed and
    handed out again (here to the same slot) must not put the old bytes in a group."""
    pages = {i: page(i) for i in range(40)}
    zc, pid = filled(pages=list(pages.values()))
    zc.mark_idle()
    zc.recompress(max_pages=5)  # fewer than a group: queued, not grouped yet
    assert stats(zc)["cold_pages"] == 0
    pool = zc.pool(pid)
    for i in range(5):
        h = zc.lookup(pool, 1, i)
        zc.flush_page(pid, 1, i)
        assert zc.put_page(pid, 1, i, page(300 + i))
        pages[i] = page(300 + i)
        assert zc.lookup(pool, 1, i) == h  # the same handle, now holding another page
    while zc.recompress_pending():
        zc.recompress()
    zc.check()
    reads_back(zc, pid, pages)


def test_ephemeral_and_foreign_pages_are_never_grouped():
    zc = Zcache(2048, allocator="dense")
    eph = zc.new_pool()
    foreign = zc.foreign_pool(3, 1, True)
    for i in range(100):
        assert zc.put_page(eph, 1, i, page(i))
        assert zc.put_raw(foreign, 1, i, zc._compress(page(i)))
    cold_pass(zc)
    assert stats(zc)["cold_pages"] == 0
    assert zc.recompressed > 0  # the ephemeral ones, one by one
    for i in range(100):
        assert zc.decode(zc.get_raw(foreign, 1, i, False)) == page(i)
        assert zc.get_page(eph, 1, i) == page(i)


def test_remotify_never_takes_a_cold_page():
    zc, pid = filled(pages=[page(i) for i in range(100)])
    cold_pass(zc)
    assert stats(zc)["cold_pages"] == 100
    pages, taken = zc.take_lru(True, 1000)
    assert pages == []
    zc.release_taken(taken)
    assert not zc.on_peer(pid, 1, 5) and zc.get_page(pid, 1, 5) == page(5)


class Disk:
    def __init__(self, refuse=()):
        self.pages = {}
        self.refuse = set(refuse)

    def __call__(self, pool, oid, index, data):
        if index in self.refuse:
            return False
        self.pages[index] = bytes(data)
        return True


def test_a_smaller_budget_writes_cold_groups_back_and_only_acknowledged_pages_leave():
    disk = Disk()
    pages = {i: page(i) for i in range(300)}
    zc, pid = filled(pages=list(pages.values()), writeback_sink=disk)
    cold_pass(zc)
    refused = [i for (_, _, i), _, _ in zc._cold_members(zc._cold.newest()[0])][:2]
    disk.refuse.update(refused)  # two pages of the group at the end of the log, written back first
    used = zc.pageframes_in_use
    over = zc.set_max_pageframes(used // 3)
    zc.check()
    assert stats(zc)["cold_written_back"] > 0 and stats(zc)["cold_refused"] >= 1
    assert zc.pageframes_in_use <= used // 3 + over
    for i, pg in pages.items():
        got = zc.get_page(pid, 1, i)
        assert got == pg or (got is None and disk.pages[i] == pg), i
    for i in refused:  # still in memory
        assert zc.get_page(pid, 1, i) == pages[i]


def test_writeback_idle_moves_cold_pages_to_the_sink():
    disk = Disk()
    pages = {i: page(i) for i in range(100)}
    zc, pid = filled(pages=list(pages.values()), writeback_sink=disk)
    cold_pass(zc)
    zc.mark_idle()
    assert zc.writeback_idle() == 100
    zc.check()
    assert disk.pages == pages and zc.pageframes_in_use == 0 and stats(zc)["cold_pages"] == 0


def test_sparse_groups_merge_at_the_next_pass():
    pages = {i: page(i) for i in range(8 * COLD_GROUP)}
    zc, pid = filled(pages=list(pages.values()))
    cold_pass(zc)
    groups = stats(zc)["cold_groups"]
    for i in list(pages):
        if i % 8:
            zc.flush_page(pid, 1, i)
            del pages[i]
    log = zc._cold
    sparse = [g for g in log.newest() if bin(log.mask[g]).count("1") <= COLD_GROUP // 4]
    assert len(sparse) >= 2
    moved = sum(bin(log.mask[g]).count("1") for g in sparse)
    frames = zc.pageframes_in_use
    cold_pass(zc)
    s = stats(zc)
    assert s["cold_regrouped"] == moved > 0
    assert s["cold_groups"] < groups
    assert zc.pageframes_in_use < frames
    reads_back(zc, pid, pages)


def test_a_put_on_a_full_budget_reuses_the_holes_of_the_log():
    pages = {i: page(i) for i in range(256)}
    zc, pid = filled(pages=list(pages.values()))
    cold_pass(zc)
    zc.set_max_pageframes(zc.pageframes_in_use)
    for g in zc._cold.newest()[1:4]:  # whole groups before the end of the log: holes
        for (_, _, i), _, _ in zc._cold_members(g):
            zc.flush_page(pid, 1, i)
            del pages[i]
    assert zc.pageframes_in_use == zc.max_pageframes
    assert stats(zc)["cold_hole_bytes"] > PAGE_SIZE
    assert zc.put_page(pid, 2, 0, page(900))  # no free frame: compaction gives one
    assert stats(zc)["cold_compactions"] >= 1
    zc.check()
    reads_back(zc, pid, pages)
    assert zc.get_page(pid, 2, 0) == page(900)


@pytest.mark.parametrize("pool_kind", [EPH, PERS])
def test_dedup_copies_stay_shared_and_read_back(pool_kind):
    zc = Zcache(2048, allocator="dense", dedup=True)
    pid = zc.new_pool(persistent=pool_kind == PERS)
    for i in range(100):
        assert zc.put_page(pid, 1, i, page(i % 50))  # every page twice
    cold_pass(zc)
    assert zc.dedup_saved_pages == 50
    if pool_kind == PERS:
        for i in range(100):
            assert zc.get_page(pid, 1, i) == page(i % 50)
    zc.check()


def test_a_group_read_since_the_mark_is_not_idle():
    disk = Disk()
    pages = {i: page(i) for i in range(3 * COLD_GROUP)}
    zc, pid = filled(pages=list(pages.values()), writeback_sink=disk)
    cold_pass(zc)
    zc.mark_idle()
    assert zc.idle_pages() == len(pages)
    assert zc.get_page(pid, 1, 0) == pages[0]  # its group is not idle any more
    assert zc.idle_pages() < len(pages)
    written = zc.writeback_idle()
    zc.check()
    assert 0 < written < len(pages) and 0 not in disk.pages
    assert zc.get_page(pid, 1, 0) == pages[0]
    for i, pg in pages.items():
        assert zc.get_page(pid, 1, i) == pg or disk.pages[i] == pg


def test_the_setting_comes_from_file_and_flags_and_needs_zstd_and_dense(tmp_path):
    from ramster.config import ConfigError, build
    from ramster.node import Node

    f = tmp_path / "node.toml"
    f.write_text('[node]\nmemory = "8M"\nallocator = "dense"\nrecompress_groups = false\n')
    assert build(f).recompress_groups is False
    assert build(f, recompress_groups=True).recompress_groups is True
    assert build(memory="8M").recompress_groups is True
    with pytest.raises(ConfigError, match="recompress_groups"):
        build(memory="8M", recompress_groups="yes")
    assert Node(build(f, metrics="off"), control="off").zc.cold_groups is False
    assert Node(build(memory="8M", allocator="dense", metrics="off"), control="off").zc.cold_groups is True
    assert Zcache(16).cold_groups is False  # zbud: pages one by one
    lz4 = Zcache(2048, allocator="dense", recompressor="lz4")
    assert lz4.cold_groups is False  # the operator chose a fast second codec: no zstd groups
    pid = lz4.new_pool(persistent=True)
    for i in range(64):
        lz4.put_page(pid, 1, i, page(i))
    cold_pass(lz4)
    assert stats(lz4)["cold_pages"] == 0 and lz4.recompressed > 0


def test_the_seed_gauges_count_the_cold_log_and_the_stats_columns_agree():
    from ramster.cli.stats_columns import _memory

    pages = [page(i) for i in range(300)] + [bytes(PAGE_SIZE)] * 3
    zc, pid = filled(pages=pages)
    cold_pass(zc)
    s = zc.stats()
    assert s["dense.cold_pageframes"] > 0
    assert s["zcache.pers_pageframes"] == s["dense.pers_pageframes"] + s["dense.cold_pageframes"]
    assert s["zcache.pers_pageframes_max"] >= s["zcache.pers_pageframes"]
    assert zc.pageframes_in_use == s["zcache.pers_pageframes"] + s["zcache.huge_pages"]
    cols = _memory(s, ("pers",))
    assert cols["ZERO-PAGES"] == 3 and cols["DATA"] == len(pages) * PAGE_SIZE
    assert cols["TOTAL"] == zc.pageframes_in_use * PAGE_SIZE


def test_a_group_holds_neighbouring_slots_whatever_order_the_pass_found_them_in():
    pages = [page(i) for i in range(10 * COLD_GROUP)] + [sized_page(i, 300 + 90 * (i % 30)) for i in range(64)]
    zc, pid = filled(pages=pages)  # sizes spread over many classes: the pass walks them class by class
    cold_pass(zc)
    groups = [[i for (_, _, i), _, _ in zc._cold_members(g)] for g in zc._cold.newest()]
    assert sum(map(len, groups)) == stats(zc)["cold_pages"] > 9 * COLD_GROUP
    for members in groups:
        assert members == list(range(members[0], members[0] + len(members)))


def test_a_swap_areas_neighbouring_offsets_share_a_group():
    from ramster.frontends.frontswap import Frontswap, swiz

    zc = Zcache(4096, allocator="dense")
    fs = Frontswap(zc)
    fs.init(0, no_swap_disk=True)  # pages too poor for memory stay, raw: never grouped
    N = 2048  # eight indexes of frontswap's 256 swizzled oids
    for off in range(N):
        assert fs.store(0, off, page(off))
    cold_pass(zc)
    pool = zc.pool(fs.pool_id)
    pampds = [zc.lookup(pool, *swiz(0, o)) for o in range(N)]
    assert stats(zc)["cold_pages"] == sum(map(is_cold, pampds)) > N * 0.9
    for off in range(0, N, COLD_GROUP):  # 32 consecutive offsets: in one group, or two
        run = pampds[off:off + COLD_GROUP]
        assert len({(COLD_BASE - p) // COLD_GROUP for p in run if is_cold(p)}) <= 2
    for off in range(N):
        assert fs.load(0, off) == page(off)


def test_a_queued_handle_handed_to_a_peers_page_is_not_grouped():
    zc = Zcache(2048, allocator="dense")
    pid = zc.new_pool(persistent=True)
    foreign = zc.foreign_pool(3, 1, True)
    for i in range(40):
        assert zc.put_page(pid, 1, i, page(i))
    zc.mark_idle()
    zc.recompress(max_pages=5)  # queued, not grouped yet
    pool = zc.pool(pid)
    handles = [zc.lookup(pool, 1, i) for i in range(5)]
    for i in range(5):
        zc.flush_page(pid, 1, i)
    for i in range(5):  # the freed handles go to a peer's pages
        assert zc.put_raw(foreign, 1, i, zc._compress(page(100 + i)))
    assert sorted(zc.lookup(foreign, 1, i) for i in range(5)) == sorted(handles)
    while zc.recompress_pending():
        zc.recompress()
    zc.check()
    for i in range(5):
        assert not is_cold(zc.lookup(foreign, 1, i))
        assert zc.get_raw(foreign, 1, i, False) == zc._compress(page(100 + i))  # as it came
    assert stats(zc)["cold_pages"] > 0
    reads_back(zc, pid, {i: page(i) for i in range(5, 40)})


def test_a_pass_in_small_calls_makes_a_group_or_so_per_call_and_finishes():
    """The background task calls recompress(8) at a CPU share: no call may make the
    window's hundreds of groups at once and hold the node's loop meanwhile."""
    pages = {i: page(i) for i in range(1500)}
    zc, pid = filled(pages=list(pages.values()))
    zc.mark_idle()
    calls = 0
    while True:
        before = zc.cold_grouped + zc.cold_regrouped
        zc.recompress(8)
        calls += 1
        assert zc.cold_grouped + zc.cold_regrouped - before <= 2 * COLD_GROUP
        if not zc.recompress_pending():
            break
    zc.check()
    assert stats(zc)["cold_pages"] > 1400 and calls > 1500 // COLD_GROUP
    reads_back(zc, pid, pages)
