"""Recompression (zcache_recompress.py): cold and huge pages stored again with a second codec.

Real Zcaches, real codecs, real pages (tests/pages.py). "Nibble" pages (random
bytes from a 16-letter alphabet) are what makes a huge page recompression
can save: lz4 finds no repeats in them and cannot code entropy, so they stay
raw, while zstd's entropy coder halves them.
"""
import asyncio
import random
import time

import pytest
from pages import page, random_page, sized_page

from ramster import Zcache
from ramster.compress import CODEC_IDS, get_codec
from ramster.config import ConfigError, build
from ramster.control import Control
from ramster.control_protocol import Request
from ramster.node import Node
from ramster.recompress_task import RecompressTask
from ramster.tmem import LOCAL_CLIENT
from ramster.units import PAGE_SIZE
from ramster.zbud import CODEC_OFFSET, EPH, PERS
from ramster.zcache_recompress import TRIED


def nibble_page(seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(b"abcdefghijklmnop") for _ in range(PAGE_SIZE))


def fill(zc, pid, pages):
    for i, p in pages.items():
        assert zc.put_page(pid, 1, i, p, huge=True)


def codec_byte(zc, pid, i):
    p = zc.lookup(zc.pool(pid), 1, i)
    assert p > 0
    return zc.zbud.codec(p)


@pytest.fixture(params=["zbud", "dense"])
def zc(request):
    # page by page: what cold groups do instead on dense is test_cold_groups.py's
    z = Zcache(2048, allocator=request.param, cold_groups=False)
    yield z
    z.close()


@pytest.fixture
def zb():
    """A zbud Zcache, for what is about zbud's frames."""
    z = Zcache(2048)
    yield z
    z.close()


def test_nibble_pages_are_huge_for_lz4_and_fit_a_buddy_with_zstd():
    p = nibble_page(1)
    assert len(get_codec("lz4").compress(p)) > 3584
    assert len(get_codec("zstd", strong=True).compress(p)) < 2600


def test_idle_pages_are_recompressed_and_read_back_exactly(zc):
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(600)}
    fill(zc, pid, pages)
    zbytes = zc.zbytes[PERS]
    assert zc.recompress() == 0  # nothing is idle before a mark
    zc.mark_idle()
    n = zc.recompress()
    zc.check()
    assert n > 300 and zc.recompressed == n
    assert zc.recompress_saved_bytes == zbytes - zc.zbytes[PERS] > 0
    assert all(codec_byte(zc, pid, i) in (CODEC_IDS["zstd"], TRIED) for i in pages)
    for i, p in pages.items():
        assert zc.get_page(pid, 1, i) == p
    s = zc.stats()
    assert s["zcache.recompressed"] == n and s["zcache.recompress_saved_bytes"] > 0


def test_a_page_read_after_the_mark_is_not_recompressed(zc):
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(40)}
    fill(zc, pid, pages)
    zc.mark_idle()
    zc.get_page(pid, 1, 7)  # its frame (and its buddy) are not idle any more
    zc.recompress()
    assert codec_byte(zc, pid, 7) == 0
    assert zc.recompress(idle_only=False) > 0  # every page, idle or not
    assert codec_byte(zc, pid, 7) != 0
    assert zc.get_page(pid, 1, 7) == pages[7]
    zc.check()


def test_a_pass_looks_at_each_page_once_and_a_new_mark_starts_another(zc):
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(200)}
    fill(zc, pid, pages)
    zc.mark_idle()
    first = zc.recompress(max_pages=10)
    assert zc.recompress_pending() > 0
    tried = zc.recompressed + zc.recompress_skipped
    assert 10 <= tried <= 11  # a zbud frame's two pages go together
    while zc.recompress_pending():
        zc.recompress(max_pages=10)
    looked = zc.recompressed + zc.recompress_skipped
    assert looked == len(pages) and first >= 1
    zc.mark_idle()
    assert zc.recompress() == 0  # every page is recompressed or was tried
    assert zc.recompressed + zc.recompress_skipped == looked
    zc.check()


def test_huge_pages_become_ordinary_compressed_pages(zb):
    zc = zb
    pid = zc.new_pool(persistent=True)
    pages = {i: nibble_page(i) for i in range(20)}
    pages[99] = random_page(5)  # no codec fits this one in a buddy
    fill(zc, pid, pages)
    assert zc.huge_pages == 21
    frames = zc.pageframes_in_use
    assert zc.recompress() == 20  # huge pages need no mark
    zc.check()
    assert zc.huge_pages == 1 and zc.recompress_skipped == 1
    assert zc.pageframes_in_use == frames  # a frame each still (about 2 KiB each: no pairs) ...
    for i, p in pages.items():
        assert zc.get_page(pid, 1, i) == p
    zc.put_page(pid, 1, 500, sized_page(3, 600), huge=True)  # ... but each has room for a buddy now
    assert zc.pageframes_in_use == frames
    assert zc.recompress() == 0 and zc.recompress_skipped == 1  # the raw one is not tried again
    zc.check()


def test_huge_page_pairs_with_a_half_full_frame(zb):
    zc = zb
    pid = zc.new_pool(persistent=True)
    small = sized_page(1, 600)
    zc.put_page(pid, 1, 0, small)
    zc.put_page(pid, 1, 1, nibble_page(1), huge=True)
    assert zc.pageframes_in_use == 2
    assert zc.recompress() == 1
    assert zc.pageframes_in_use == 1  # moved in beside page 0; its raw frame is free
    assert zc.get_page(pid, 1, 1) == nibble_page(1) and zc.get_page(pid, 1, 0) == small
    zc.check()


def test_get_with_free_flush_and_overwrite_of_recompressed_pages(zc):
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(100)}
    fill(zc, pid, pages)
    zc.recompress(idle_only=False)
    assert zc.get_page(pid, 1, 3, free=True) == pages[3]
    assert zc.get_page(pid, 1, 3) is None
    assert zc.flush_page(pid, 1, 4)
    zc.put_page(pid, 1, 5, page(1000))
    assert codec_byte(zc, pid, 5) == 0  # a put writes a fresh handle
    assert zc.get_page(pid, 1, 5) == page(1000)
    eid = zc.new_pool()
    zc.put_page(eid, 1, 0, page(7))
    zc.recompress(idle_only=False)
    assert zc.get_page(eid, 1, 0) == page(7)  # an ephemeral get frees it
    assert zc.get_page(eid, 1, 0) is None
    zc.check()


def test_a_corrupt_payload_still_fails_loudly(zc):
    pid = zc.new_pool(persistent=True)
    zc.put_page(pid, 1, 0, page(1))
    p = zc.lookup(zc.pool(pid), 1, 0)
    zc.zbud.payload(p)[:16] = b"\xff" * 16
    with pytest.raises(RuntimeError):
        zc.get_page(pid, 1, 0)


@pytest.mark.parametrize("allocator", ["zbud", "dense"])
@pytest.mark.parametrize("codec,recompressor", [("lz4", "lz4"), ("zstd", "zstd"), ("zlib", "zstd"), ("lz4", "zlib")])
def test_codec_pairs(codec, recompressor, allocator):
    zc = Zcache(512, codec, recompressor=recompressor, allocator=allocator)
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(150)}
    pages.update({1000 + i: nibble_page(i) for i in range(5)})
    fill(zc, pid, pages)
    zc.recompress(idle_only=False)
    zc.check()
    assert zc.recompressed + zc.recompress_skipped > 0
    for i, p in pages.items():
        assert zc.get_page(pid, 1, i) == p
    zc.close()


def test_unknown_recompressor_is_refused_at_construction():
    with pytest.raises(ValueError, match="unknown compressor"):
        Zcache(16, recompressor="brotli")


# ---- pages leaving memory ----------------------------------------------------------------------

@pytest.mark.parametrize("allocator", ["zbud", "dense"])
def test_writeback_of_recompressed_pages_writes_the_pages(allocator):
    disk = {}

    def sink(pool, oid, index, data):
        disk[index] = bytes(data)
        return True

    zc = Zcache(512, writeback_sink=sink, allocator=allocator)
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(100)}
    pages.update({200 + i: nibble_page(i) for i in range(4)})
    fill(zc, pid, pages)
    zc.mark_idle()
    assert zc.recompress() > 0
    written = 0
    for _ in range(20):  # dense: a read for the sink can make another zspage look not idle
        zc.mark_idle()
        written += zc.writeback_idle()
        if written == len(pages) or allocator == "zbud":
            break
    assert written == len(pages)
    assert disk == pages
    zc.check()


@pytest.mark.parametrize("allocator", ["zbud", "dense"])
def test_remotify_and_a_peers_return_carry_the_clusters_codec(allocator):
    """take_lru hands RAMster payloads a peer can store and its owner decode; a peer
    never recompresses a foreign page, so get_raw returns the very bytes it was sent
    (the owner checks them against its checksum: a raw page re-encoded, or a codec
    of another build, would fail it)."""
    owner, peer = Zcache(256, allocator=allocator, cold_groups=False), Zcache(256, allocator=allocator)
    pid = owner.new_pool(persistent=True)
    pages = {i: page(i) for i in range(60)}
    pages.update({100 + i: nibble_page(i) for i in range(3)})
    fill(owner, pid, pages)
    owner.recompress(idle_only=False)
    assert owner.recompressed > 0
    out, taken = owner.take_lru(True, 1000)
    assert {h[3] for h in out} == set(pages)
    lz4 = get_codec("lz4")
    foreign = peer.foreign_pool(1, pid, True)
    sent = {}
    for _, pool, oid, index, payload in out:
        assert owner.decode(payload) == pages[index]
        assert len(payload) == PAGE_SIZE or lz4.decompress(payload) == pages[index]
        assert peer.put_raw(foreign, oid, index, payload)
        sent[index] = bytes(payload)
    assert any(len(x) == PAGE_SIZE for x in sent.values()), "no page travelled raw"
    owner.release_taken(taken)
    peer.mark_idle()
    peer.recompress(idle_only=False)
    peer.recompress()
    assert peer.recompressed == 0 and peer.recompress_skipped == 0 and peer.recompress_pending() == 0
    for i, p in pages.items():
        assert peer.get_raw(foreign, 1, i, free=False) == sent[i]
        assert owner.decode(sent[i]) == p
    owner.check()
    peer.check()


def test_codec_byte_is_beside_pool_id_in_the_handle(zb):
    zc = zb
    pid = zc.new_pool(persistent=True)
    zc.put_page(pid, 1, 9, page(2))
    zc.recompress(idle_only=False)
    p = zc.lookup(zc.pool(pid), 1, 9)
    assert zc.zbud.handle(p) == (LOCAL_CLIENT, pid, 1, 9)
    assert zc.zbud.codec(p) == CODEC_IDS["zstd"] and CODEC_OFFSET == 29


# ---- ramster ctl recompress -----------------------------------------------------------------------

def test_ctl_recompress_counts_logs_and_says_what_it_saved(tmp_path, caplog):
    f = tmp_path / "node.toml"
    f.write_text('[node]\nmemory = "8M"\n')
    cfg = build(f)
    zc = Zcache(cfg.memory // PAGE_SIZE)
    control = Control(zc, cfg)
    pid = zc.new_pool(persistent=True)
    fill(zc, pid, {i: page(i) for i in range(50)})
    zc.mark_idle()
    with caplog.at_level("INFO", logger="ramster.control"):
        reply = asyncio.run(control.handle(Request("recompress", ("10",))))
    assert reply.ok and 0 < reply.result["pages"] <= 10 and reply.result["saved"] > 0
    assert "recompress:" in caplog.text
    assert control.stats()["control.recompressions"] == 1
    reply = asyncio.run(control.handle(Request("recompress", ("x",))))
    assert not reply.ok


def test_eph_and_pers_are_both_recompressed(zc):
    e, pz = zc.new_pool(), zc.new_pool(persistent=True)
    for i in range(50):
        zc.put_page(e, 1, i, page(i))
        zc.put_page(pz, 1, i, page(i + 50))
    zc.mark_idle()
    zc.recompress()
    for c in (EPH, PERS):
        assert zc.zbytes[c] < zc.zbytes_max[c]
    zc.check()


# ---- configuration and the background task ----------------------------------------------------

def test_config_takes_the_codec_and_the_share_from_file_and_flags(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('[node]\nmemory = "8M"\nrecompress_codec = "zlib"\nrecompress_cpu = 0.1\n')
    cfg = build(f)
    assert (cfg.recompress_codec, cfg.recompress_cpu) == ("zlib", 0.1)
    cfg = build(f, recompress_codec="LZ4", recompress_cpu="0.25")
    assert (cfg.recompress_codec, cfg.recompress_cpu) == ("lz4", 0.25)
    assert (build(memory="8M").recompress_codec, build(memory="8M").recompress_cpu) == ("zstd", 0.0)
    for bad in ({"recompress_codec": "brotli"}, {"recompress_cpu": "lots"}, {"recompress_cpu": "1.5"},
                {"recompress_cpu": "-0.1"}, {"recompress_cpu": "nan"}):
        with pytest.raises(ConfigError):
            build(memory="8M", **bad)


def test_task_marks_by_itself_until_the_operator_marks(zb):
    zc = zb
    pid = zc.new_pool(persistent=True)
    fill(zc, pid, {i: page(i) for i in range(100)})
    fill(zc, pid, {500 + i: nibble_page(i) for i in range(3)})
    task = RecompressTask(zc, 1.0, period=10.0, age=0.0)
    assert task.cycle() > 0 and zc.recompressed == 3  # no mark yet: the huge pages
    assert zc.idle_marks == 0
    task.cycle()  # that pass is over: the task marks, and a new pass takes the idle pages
    assert zc.idle_marks == 1 and zc.recompressed > 50
    zc.mark_idle()  # the operator's
    task.cycle()  # a pass over the operator's mark (everything was tried already)
    assert task.cycle() == 0.0 and zc.idle_marks == 2  # and no mark of its own any more
    zc.check()


def test_task_keeps_to_its_share_of_the_cpu():
    zc = Zcache(4096)
    pid = zc.new_pool(persistent=True)
    fill(zc, pid, {i: page(i) for i in range(3000)})
    zc.mark_idle()
    task = RecompressTask(zc, 0.2, period=0.02)

    async def run_for(seconds):
        task.start()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        await task.stop()
        return time.monotonic() - t0

    elapsed = asyncio.run(run_for(0.5))
    assert 0 < task.busy <= 0.2 * elapsed + 0.02
    assert zc.recompressed > 0 and zc.recompress_pending()  # it stopped with work left
    zc.check()
    zc.close()


def test_node_runs_the_task_only_when_asked(tmp_path):
    cfg = build(memory="8M", listen=[f"unix:{tmp_path}/s"], metrics="off", recompress_cpu="0.5")
    node = Node(cfg, control="off")
    assert isinstance(node.recompress, RecompressTask) and node.zc.recompressor == "zstd"
    assert Node(build(memory="8M", metrics="off"), control="off").recompress is None

    async def main():
        await node.start()
        pid = node.zc.new_pool(persistent=True)
        fill(node.zc, pid, {i: nibble_page(i) for i in range(4)})
        for _ in range(500):  # a huge page needs no mark: the next pass takes it
            if node.zc.recompressed == 4:
                break
            await asyncio.sleep(0.01)
        await node.stop()

    asyncio.run(main())
    assert node.zc.recompressed == 4


def test_dense_pages_move_to_smaller_classes_and_free_frames():
    zc = Zcache(4096, allocator="dense")
    pid = zc.new_pool(persistent=True)
    pages = {i: page(i) for i in range(2000)}
    fill(zc, pid, pages)
    frames = zc.pageframes_in_use
    zc.mark_idle()
    n = zc.recompress()
    zc.zbud.compact()
    zc.check()
    assert n > 1000 and zc.pageframes_in_use < frames * 0.9
    for i, p in pages.items():
        assert zc.get_page(pid, 1, i) == p
    zc.close()


@pytest.mark.parametrize("allocator", ["zbud", "dense"])
def test_dedup_copies_are_recompressed_and_shared_after(allocator):
    zc = Zcache(1024, dedup=True, allocator=allocator)
    pid, eid = zc.new_pool(persistent=True), zc.new_pool()
    pages = {i: page(i % 40) for i in range(120)}  # each page three times
    fill(zc, pid, pages)
    for i in range(10):
        zc.put_page(eid, 2, i, page(i + 200))
    saved = zc.dedup_saved_pages
    zc.mark_idle()
    assert zc.recompress() > 40
    zc.check()
    for i, p in pages.items():
        assert zc.get_page(pid, 1, i) == p
    assert zc.put_page(pid, 3, 0, page(5))  # compared with a recompressed copy, and shared
    assert zc.dedup_saved_pages == saved + 1
    for i in range(0, 120, 2):
        zc.flush_page(pid, 1, i)
    zc.check()
    for i in range(1, 120, 2):
        assert zc.get_page(pid, 1, i) == pages[i]
    assert zc.get_page(pid, 3, 0) == page(5)
    for i in range(10):
        assert zc.get_page(eid, 2, i) in (None, page(i + 200))
    zc.check()
    zc.close()
