"""The dense allocator (dense.py) on its own and behind Zcache (allocator="dense")."""
import pytest
from pages import sized_page

from ramster import Zcache
from ramster.config import ConfigError, build
from ramster.dense import CLASS_FRAMES, CLASS_OBJS, CLASS_SIZE, MAX_SIZE, MAX_ZSPAGE_FRAMES, NCLASSES, class_of
from ramster.units import PAGE_SIZE
from ramster.zbud import HANDLE_SIZE


def test_class_table_wastes_little_and_covers_every_size():
    assert CLASS_SIZE == sorted(CLASS_SIZE) and CLASS_SIZE[-1] == MAX_SIZE
    for ci in range(NCLASSES):
        k, n, s = CLASS_FRAMES[ci], CLASS_OBJS[ci], CLASS_SIZE[ci]
        assert 1 <= k <= MAX_ZSPAGE_FRAMES and n * s <= k * PAGE_SIZE
        assert (k * PAGE_SIZE - n * s) / (k * PAGE_SIZE) < 0.03, f"class {s} wastes too much"
    for stored in range(HANDLE_SIZE + 1, MAX_SIZE + 1):
        ci = class_of(stored)
        assert CLASS_SIZE[ci] >= stored
        # a merged class costs no more per object than the class the size would have had
        assert ci == 0 or CLASS_SIZE[ci - 1] < stored or CLASS_OBJS[ci - 1] == CLASS_OBJS[ci]


def _fill(zc, pid, pages):
    for i, pg in enumerate(pages):
        assert zc.put_page(pid, 1, i, pg)


def test_round_trip_and_denser_than_zbud():
    # about 1000-byte payloads: zbud fits two per frame (half the frame wasted), dense four
    pages = [sized_page(i, 1000) for i in range(200)]
    frames = {}
    for alloc in ("zbud", "dense"):
        zc = Zcache(256, allocator=alloc)
        pid = zc.new_pool(persistent=True)
        _fill(zc, pid, pages)
        zc.check()
        for i, pg in enumerate(pages):
            assert zc.get_page(pid, 1, i) == pg
        frames[alloc] = zc.pageframes_in_use
        s = zc.stats()
        assert f"{alloc}.pers_zpages" in s and s[f"{alloc}.pers_zpages"] == 200
        zc.close()
    assert frames["dense"] * 3 < frames["zbud"] * 2, frames


def test_objects_that_cross_frames_read_back():
    # sizes from small to large: many objects start in one frame of their zspage and end in the next
    zc = Zcache(512, allocator="dense")
    pid = zc.new_pool(persistent=True)
    pages = [sized_page(i, 100 + 37 * i) for i in range(90)]
    _fill(zc, pid, pages)
    zc.check()
    assert [zc.get_page(pid, 1, i) for i in range(90)] == pages


def test_persistent_put_eats_ephemeral_never_persistent():
    zc = Zcache(16, allocator="dense")
    eph, pers = zc.new_pool(False), zc.new_pool(True)
    for i in range(64):
        zc.put_page(eph, 1, i, sized_page(i, 1500))
    assert zc.stats()["zcache.eph_pageframes"] > 0
    stored = []
    for i in range(200):
        if not zc.put_page(pers, 2, i, sized_page(1000 + i, 1500)):
            break
        stored.append(i)
        zc.check()
    assert zc.stats()["zcache.eph_pageframes"] == 0 and zc.pers_ate_eph > 0
    for i in stored:  # the budget is full of persistent pages: every one is still there
        assert zc.get_page(pers, 2, i) == sized_page(1000 + i, 1500)
    s = zc.stats()
    assert s["dense.eph_evicted_pageframes"] == s["zcache.evicted_eph_pageframes"] > 0


def test_ephemeral_eviction_takes_least_recently_used_zspage_first():
    zc = Zcache(8, allocator="dense")
    eph = zc.new_pool(False)
    for i in range(40):
        zc.put_page(eph, 1, i, sized_page(i, 1500))
        zc.check()
    present = [zc.contains(eph, 1, i) for i in range(40)]
    # the oldest went first: what is left is a run at the end
    first = present.index(True)
    assert first > 0 and all(present[first:])


def test_compaction_moves_objects_and_frees_frames():
    zc = Zcache(512, allocator="dense")
    pid = zc.new_pool(persistent=True)
    pages = [sized_page(i, 700) for i in range(300)]
    _fill(zc, pid, pages)
    for i in range(300):
        if i % 4:
            zc.flush_page(pid, 1, i)
    before = zc.pageframes_in_use
    freed = zc.compact()
    zc.check()
    assert freed > 0 and zc.pageframes_in_use == before - freed
    s = zc.stats()
    assert s["dense.objects_moved"] > 0 and s["dense.compactions"] == 1
    for i in range(0, 300, 4):
        assert zc.get_page(pid, 1, i) == pages[i]
    assert Zcache(4).compact() == 0  # zbud never moves a page


def test_writeback_and_idle_with_dense():
    disk = {}
    zc = Zcache(16, allocator="dense",
                writeback_sink=lambda pool, oid, index, data: disk.__setitem__((oid, index), data) or True)
    pid = zc.new_pool(True)
    pages = [sized_page(i, 1500) for i in range(100)]
    kept = [i for i, pg in enumerate(pages) if zc.put_page(pid, 1, i, pg)]
    zc.check()
    assert disk and len(kept) == 100  # the LRU persistent zspages went to the sink to make room
    assert zc.zbud.zspages[1] >= 2  # so that one read leaves another zspage idle
    for i in kept:
        assert zc.get_page(pid, 1, i) or disk[(1, i)] == pages[i]
    assert zc.mark_idle() == zc.idle_pages() > 0
    zc.get_page(pid, 1, kept[-1])
    n = zc.writeback_idle()
    zc.check()
    assert n > 0 and zc.get_page(pid, 1, kept[-1]) == pages[kept[-1]]
    for i in kept:
        assert zc.get_page(pid, 1, i) == pages[i] or disk[(1, i)] == pages[i]


@pytest.mark.parametrize("allocator", ["zbud", "dense"])
def test_writeback_idle_moves_every_idle_page(allocator):
    # Writing a page back is not a read of it: with dense, the "seen" byte a read
    # sets is shared with a handle in another zspage, which then stopped looking idle.
    disk = {}
    zc = Zcache(4096, allocator=allocator,
                writeback_sink=lambda pool, oid, index, data: disk.__setitem__((oid, index), data) or True)
    pid = zc.new_pool(True)
    pages = [sized_page(i, 300 + (i * 37) % 1500) for i in range(600)]
    _fill(zc, pid, pages)
    assert zc.mark_idle() == 600
    for i in range(0, 600, 50):
        assert zc.get_page(pid, 1, i) == pages[i]
    idle = zc.idle_pages()
    assert 0 < idle < 600
    assert zc.writeback_idle() == idle == len(disk)
    assert zc.idle_pages() == 0
    zc.check()
    for i, page in enumerate(pages):
        assert zc.get_page(pid, 1, i) == page or disk[(1, i)] == page


def test_take_lru_and_release_with_dense():
    zc = Zcache(64, allocator="dense")
    pid = zc.new_pool(True)
    pages = [sized_page(i, 1500) for i in range(10)]
    _fill(zc, pid, pages)
    got, taken = zc.take_lru(True, 1)
    assert taken and got and all(zc.still_taken(p, zc.pool(pid), oid, index) for p, _, oid, index, _ in got)
    for p, _, oid, index, payload in got:
        assert zc.decode(payload) == pages[index]
    assert zc.release_taken(taken) == 0  # nothing left: the zspage is back on its LRU
    zc.check()
    got, taken = zc.take_lru(True, 1)
    for p, pool, oid, index, _ in got:
        zc.flush_page(pid, oid, index)
    assert zc.release_taken(taken) == 1
    zc.check()


def test_allocator_is_chosen_by_name():
    with pytest.raises(ValueError, match="unknown allocator"):
        Zcache(4, allocator="slab")
    assert build(None, memory="64M", allocator="Dense").allocator == "dense"
    assert build(None, memory="64M").allocator == "zbud"
    with pytest.raises(ConfigError, match="unknown allocator"):
        build(None, memory="64M", allocator="slab")


def test_recompression_moves_cold_objects_to_smaller_classes():
    from pages import page
    zc = Zcache(2048, allocator="dense", cold_groups=False)  # page by page
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(600)}
    for i, pg in pages.items():
        assert zc.put_page(pid, 1, i, pg, huge=True)
    frames, zbytes = zc.pageframes_in_use, zc.zbytes[1]
    assert zc.recompress() == 0  # nothing is idle before a mark
    zc.mark_idle()
    zc.get_page(pid, 1, 7)  # read after the mark: its zspage is not cold
    n = zc.recompress()
    zc.check()
    assert n > 100 and zc.recompress_saved_bytes == zbytes - zc.zbytes[1] > 0
    assert zc.zbud.codec(zc.lookup(zc.pool(pid), 1, 7)) == 0
    zc.compact()
    zc.check()
    assert zc.pageframes_in_use < frames
    for i, pg in pages.items():
        assert zc.get_page(pid, 1, i) == pg
    # flushed and overwritten recompressed pages
    for i in range(0, 600, 3):
        zc.flush_page(pid, 1, i)
        assert zc.put_page(pid, 1, i + 1, pages[i])
    zc.check()
    for i in range(0, 600, 3):
        assert zc.get_page(pid, 1, i) is None and zc.get_page(pid, 1, i + 1) == pages[i]


def test_huge_pages_recompressed_into_dense_classes():
    import random
    zc = Zcache(256, allocator="dense")
    pid = zc.new_pool(persistent=True)
    def nibble_page(seed):  # lz4 keeps it raw, zstd's entropy coder halves it
        rng = random.Random(seed)
        return bytes(rng.choice(b"abcdefghijklmnop") for _ in range(PAGE_SIZE))

    nib = {i: nibble_page(i) for i in range(20)}
    for i, pg in nib.items():
        assert zc.put_page(pid, 1, i, pg, huge=True)
    assert zc.huge_pages == 20
    before = zc.pageframes_in_use
    assert zc.recompress() == 20
    zc.check()
    assert zc.huge_pages == 0 and zc.pageframes_in_use < before  # about 2.3 KiB each, not a frame
    for i, pg in nib.items():
        assert zc.get_page(pid, 1, i) == pg


def test_ctl_compact_moves_pages_and_counts(tmp_path, caplog):
    import asyncio

    from ramster.control import Control
    from ramster.control_protocol import Request
    f = tmp_path / "node.toml"
    f.write_text('[node]\nmemory = "8M"\nallocator = "dense"\n')
    cfg = build(f)
    zc = Zcache(cfg.memory // PAGE_SIZE, allocator=cfg.allocator)
    control = Control(zc, cfg)
    pid = zc.new_pool(persistent=True)
    pages = [sized_page(i, 700) for i in range(200)]
    _fill(zc, pid, pages)
    for i in range(200):
        if i % 4:
            zc.flush_page(pid, 1, i)
    with caplog.at_level("INFO", logger="ramster.control"):
        reply = asyncio.run(control.handle(Request("compact", ())))
    assert reply.ok and reply.result["frames"] > 0 and reply.result["moved"] > 0
    assert "compact:" in caplog.text
    assert control.stats()["control.compactions"] == 1
    zc.check()
    for i in range(0, 200, 4):
        assert zc.get_page(pid, 1, i) == pages[i]


def test_shrinking_evicts_whole_zspages_only_as_far_as_needed():
    zc = Zcache(64, allocator="dense")
    eph = zc.new_pool(False)
    for i in range(120):
        zc.put_page(eph, 1, i, sized_page(i, 2500))  # zspages of several frames
    used = zc.pageframes_in_use
    k = zc.zbud.unit_frames(zc.zbud.lru_frames(0)[0])
    assert k >= 2
    assert zc.set_max_pageframes(used - 2) == 0
    zc.check()
    assert used - 2 - k < zc.pageframes_in_use <= used - 2  # one zspage went, not one per frame


def test_a_zspage_grows_a_frame_at_a_time():
    zc = Zcache(64, allocator="dense")
    pid = zc.new_pool(True)
    d = zc.zbud
    frames = []
    for i in range(40):
        assert zc.put_page(pid, 1, i, sized_page(i, 1000))
        frames.append(zc.pageframes_in_use)
        zc.check()  # every used slot lies within the frames its zspage holds
    size = {CLASS_SIZE[d.zcls[z]] for z in range(1, len(d.zcls)) if d.state[z]}
    assert len(size) == 1
    s = size.pop()
    ci = class_of(s)
    # the frames in use are what the objects reach into, never a whole empty zspage
    full, rest = divmod(40, CLASS_OBJS[ci])
    assert frames[-1] == full * CLASS_FRAMES[ci] + -(-rest * s // PAGE_SIZE)
    assert frames[0] == 1 and all(b - a in (0, 1) for a, b in zip(frames, frames[1:]))


def test_a_persistent_zspage_grows_by_evicting_ephemeral_ones():
    zc = Zcache(6, allocator="dense")
    eph, pers = zc.new_pool(False), zc.new_pool(True)
    i = 0
    while zc.pageframes_in_use < 6 and i < 100:  # the budget full of ephemeral pages
        assert zc.put_page(eph, 1, i, sized_page(i, 1000))
        i += 1
    assert zc.pageframes_in_use == 6
    pages = [sized_page(100 + i, 1000) for i in range(20)]
    for i, pg in enumerate(pages):
        assert zc.put_page(pers, 1, i, pg)
        zc.check()
    assert zc.stats()["dense.eph_evicted_pageframes"] > 0
    for i, pg in enumerate(pages):
        assert zc.get_page(pers, 1, i) == pg


def test_compaction_packs_a_lone_zspage_and_gives_back_its_empty_frames():
    zc = Zcache(64, allocator="dense")
    pid = zc.new_pool(True)
    pages = [sized_page(i, 1000) for i in range(12)]
    _fill(zc, pid, pages)
    assert zc.zbud.zspages[1] == 1 and zc.pageframes_in_use >= 3
    for i in range(10):  # the lowest slots go: the two left sit at the top of the zspage
        zc.flush_page(pid, 1, i)
    before = zc.pageframes_in_use
    assert zc.compact() == before - 1 and zc.pageframes_in_use == 1
    zc.check()
    assert zc.get_page(pid, 1, 10) == pages[10] and zc.get_page(pid, 1, 11) == pages[11]
