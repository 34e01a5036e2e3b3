"""The swap and cache exports, driven directly (no sockets) against a real Zcache and real files."""
from __future__ import annotations

import asyncio
import errno
import random
from pathlib import Path

import pytest
from pages import corpus_files, synthetic_pages

from ramster import Cleancache, Frontswap, Zcache
from ramster.frontends.frontswap import unswiz
from ramster.nbd.base import STATE_HOLE, STATE_ZERO, ExportError
from ramster.nbd.cache import CacheExport
from ramster.nbd.swap import SwapExport
from ramster.storage import BackingFile, SwapWriteback

PAGE = 4096
REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus(npages: int) -> bytes:
    """`npages` real pages: the shared corpus, else synthetic pages with its mix."""
    files = corpus_files()
    if files:
        per = -(-npages // len(files))
        data = b"".join(f.read_bytes()[: per * PAGE] for f in files)
    else:
        data = b"".join(synthetic_pages(npages))
    data = data[: npages * PAGE]
    assert len(data) == npages * PAGE
    return data


def run(coro):
    return asyncio.run(coro)


class Node:
    """The node's wiring (Node does the same), small enough to see in a test."""

    def __init__(self, frames: int):
        self.sink = SwapWriteback(unswiz)
        self.zc = Zcache(max_pageframes=frames, writeback_sink=self.sink)
        self.fs = Frontswap(self.zc, exclusive_gets=False)
        self.cc = Cleancache(self.zc)
        self.files: list[BackingFile] = []

    def swap(self, size: int, swap_type: int = 0, backing: Path | None = None) -> SwapExport:
        f = None
        if backing is not None:
            f = BackingFile(backing, size)
            self.files.append(f)
        e = SwapExport(f"swap{swap_type}", size, self.fs, swap_type, f, writeback=self.sink)
        return e

    def cache(self, size: int, backing: Path) -> CacheExport:
        f = BackingFile(backing, size)
        self.files.append(f)
        return CacheExport("disk", size, self.cc, f)

    def close(self):
        for f in self.files:
            f.close()


@pytest.fixture
def node():
    made = []

    def make(frames: int) -> Node:
        n = Node(frames)
        made.append(n)
        return n

    yield make
    for n in made:
        n.zc.check()
        n.close()


async def write_all(export, data: bytes, chunk: int, base: int = 0):
    for off in range(0, len(data), chunk):
        await export.write(base + off, data[off:off + chunk])


async def read_all(export, length: int, chunk: int, base: int = 0) -> bytes:
    out = []
    for off in range(0, length, chunk):
        out.append(bytes(await export.read(base + off, min(chunk, length - off))))
    return b"".join(out)


# ---- swap --------------------------------------------------------------------------------

def test_swap_with_backing_under_small_budget_reads_back_intact(node, tmp_path):
    n = node(64)  # 256 KiB of frames for 4 MiB of data
    data = corpus(1024)
    exp = n.swap(len(data), backing=tmp_path / "swap.img")

    async def go():
        await write_all(exp, data, 4096)
        assert await read_all(exp, len(data), 4096) == data
        assert await read_all(exp, len(data), 65536) == data
        # overwrite a middle slice with unaligned, multi-page writes and read it back
        new = corpus(1024)[::-1][:300_000]
        await exp.write(12345, new)
        want = data[:12345] + new + data[12345 + len(new):]
        assert await read_all(exp, len(data), 100_000) == want
        await exp.flush()
        assert not exp.backing.dirty

    run(go())
    s = n.zc.stats()
    assert s["zcache.writtenback_pages"] > 0
    assert s["zcache.outstanding_writeback_pages"] == 0
    assert s["zcache.pers_pageframes"] <= 64
    assert exp.counters.errors == 0
    assert not exp.lost


def test_swap_without_backing_enospc_then_eio(node):
    n = node(16)
    data = corpus(512)
    exp = n.swap(len(data))

    async def go():
        failed = None
        for p in range(512):
            try:
                await exp.write(p * PAGE, data[p * PAGE:(p + 1) * PAGE])
            except ExportError as e:
                assert e.errno == errno.ENOSPC
                failed = p
                break
        assert failed is not None, "a 16-frame budget took 512 pages"
        with pytest.raises(ExportError) as info:
            await exp.read(failed * PAGE, PAGE)
        assert info.value.errno == errno.EIO
        # a read spanning the lost page fails too, and never returns old or zero data
        with pytest.raises(ExportError) as info:
            await exp.read((failed - 1) * PAGE, 3 * PAGE)
        assert info.value.errno == errno.EIO
        # a partial write cannot complete a lost page
        with pytest.raises(ExportError) as info:
            await exp.write(failed * PAGE + 10, b"abc")
        assert info.value.errno == errno.EIO
        # earlier pages are intact
        assert await read_all(exp, failed * PAGE, PAGE) == data[:failed * PAGE]
        # make room, rewrite: readable again
        await exp.trim(0, 8 * PAGE)
        await exp.write(failed * PAGE, data[failed * PAGE:(failed + 1) * PAGE])
        assert await exp.read(failed * PAGE, PAGE) == data[failed * PAGE:(failed + 1) * PAGE]
        assert failed not in exp.lost
        # a lost page that is trimmed reads as zeros
        exp.lost.add(300)
        await exp.trim(300 * PAGE, PAGE)
        assert await exp.read(300 * PAGE, PAGE) == bytes(PAGE)
        return failed

    failed = run(go())
    assert exp.counters.failed_writes >= 1
    assert n.zc.stats()["zcache.failed_pers_puts"] >= 1
    assert n.fs.failed_stores >= 1 and failed > 0


def test_swap_reads_do_not_consume_pages(node):
    n = node(64)
    exp = n.swap(64 * PAGE)
    page = corpus(1)

    async def go():
        await exp.write(5 * PAGE, page)
        for _ in range(3):
            assert await exp.read(5 * PAGE, PAGE) == page

    run(go())
    assert n.zc.stats()["zcache.pers_zpages"] == 1


def test_swap_model(node, tmp_path):
    """Random reads, writes, trims and zeroes of any length and alignment, checked against a bytearray."""
    rng = random.Random(7)
    size = 256 * PAGE
    n = node(40)
    exp = n.swap(size, backing=tmp_path / "s.img")
    src = corpus(256)
    model = bytearray(size)

    async def go():
        for _ in range(400):
            op = rng.choice("wwwrrtz")
            off = rng.randrange(size)
            ln = rng.randint(1, min(size - off, 12 * PAGE))
            if rng.random() < 0.3:  # page aligned
                off &= ~(PAGE - 1)
                ln = min(size - off, max(PAGE, ln & ~(PAGE - 1)))
            if op == "w":
                s = rng.randrange(len(src) - ln + 1)
                data = src[s:s + ln]
                await exp.write(off, data, fua=rng.random() < 0.1)
                model[off:off + ln] = data
            elif op == "r":
                assert bytes(await exp.read(off, ln)) == model[off:off + ln], (off, ln)
            elif op == "t":
                await exp.trim(off, ln)
                first, stop = -(-off // PAGE), (off + ln) // PAGE
                model[first * PAGE:stop * PAGE] = bytes(max(0, stop - first) * PAGE)
            else:
                await exp.zero(off, ln)
                model[off:off + ln] = bytes(ln)
        assert await read_all(exp, size, 64 * 1024) == model

    run(go())
    assert n.zc.writtenback_pages > 0


def test_swap_block_status(node, tmp_path):
    n = node(64)
    exp = n.swap(64 * PAGE)
    data = corpus(4)

    async def go():
        await exp.write(4 * PAGE, data)  # pages 4..7 data
        await exp.write(10 * PAGE, bytes(PAGE))  # a stored zero page
        await exp.trim(5 * PAGE, PAGE)

    run(go())
    hz = STATE_HOLE | STATE_ZERO
    assert exp.block_status(0, 64 * PAGE) == [
        (4 * PAGE, hz), (PAGE, 0), (PAGE, hz), (2 * PAGE, 0), (2 * PAGE, hz), (PAGE, STATE_ZERO), (53 * PAGE, hz)]
    # an unaligned start: the first extent starts at the offset
    assert exp.block_status(4 * PAGE + 100, PAGE)[0] == (PAGE - 100, 0)


def test_swap_block_status_with_backing(node, tmp_path):
    n = node(8)
    data = corpus(128)
    exp = n.swap(256 * PAGE, backing=tmp_path / "s.img")
    run(write_all(exp, data, 16 * PAGE))
    assert n.zc.writtenback_pages > 0
    ext = exp.block_status(0, 256 * PAGE)
    # written pages are data (in memory or in the file), the rest a hole
    assert sum(ln for ln, _ in ext) == 256 * PAGE
    assert ext[-1] == (128 * PAGE, STATE_HOLE | STATE_ZERO)
    assert all(st in (0, STATE_ZERO) for _, st in ext[:-1])


def test_swap_trim_whole_device(node, tmp_path):
    n = node(64)
    exp = n.swap(32 * PAGE, backing=tmp_path / "s.img")
    data = corpus(32)

    async def go():
        await write_all(exp, data, 8 * PAGE)
        exp.lost.add(3)
        await exp.trim(0, 32 * PAGE)
        assert await exp.read(0, 32 * PAGE) == bytes(32 * PAGE)
        assert not exp.lost
        await exp.write(0, data[:PAGE])  # the swap type still works after a whole-device discard
        assert await exp.read(0, PAGE) == data[:PAGE]

    run(go())
    assert n.zc.stats()["zcache.pers_zpages"] == 1


def test_two_swap_exports_are_separate(node):
    n = node(256)
    a, b = n.swap(16 * PAGE, 0), n.swap(16 * PAGE, 1)
    data = corpus(2)

    async def go():
        await a.write(0, data[:PAGE])
        await b.write(0, data[PAGE:])
        assert await a.read(0, PAGE) == data[:PAGE]
        assert await b.read(0, PAGE) == data[PAGE:]
        await a.trim(0, 16 * PAGE)
        assert await b.read(0, PAGE) == data[PAGE:]

    run(go())


# ---- cache -------------------------------------------------------------------------------

def test_cache_second_read_hits(node, tmp_path):
    n = node(1024)
    data = corpus(256)
    img = tmp_path / "disk.img"
    img.write_bytes(data)
    exp = n.cache(len(data), img)

    async def go():
        assert await read_all(exp, len(data), 128 * 1024) == data
        assert exp.counters.cache_misses == 256 and exp.counters.cache_hits == 0
        assert await read_all(exp, len(data), 128 * 1024) == data
        assert exp.counters.cache_hits == 256 and exp.counters.cache_misses == 256
        # and again, one page at a time: hits stay hits
        assert await read_all(exp, len(data), PAGE) == data

    run(go())
    assert exp.counters.cache_hits == 512
    assert n.cc.succ_gets == 512


def test_cache_writes_go_through(node, tmp_path):
    n = node(1024)
    data = corpus(64)
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(len(data)))
    exp = n.cache(len(data), img)

    async def go():
        await exp.read(0, len(data))  # cache the zeros
        await exp.write(0, data, fua=True)
        assert not exp.backing.dirty
        assert img.read_bytes() == data
        hits = exp.counters.cache_hits
        assert await exp.read(0, len(data)) == data  # the cached copies were updated, not left stale
        assert exp.counters.cache_hits == hits + 64
        await exp.write(100, b"hello")  # partial page: the cached copy is patched
        want = bytearray(data)
        want[100:105] = b"hello"
        assert await exp.read(0, PAGE) == want[:PAGE]
        await exp.flush()
        assert img.read_bytes() == want

    run(go())


def test_cache_model(node, tmp_path):
    rng = random.Random(11)
    size = 128 * PAGE
    src = corpus(128)
    img = tmp_path / "disk.img"
    img.write_bytes(src)
    model = bytearray(src)
    n = node(24)  # the cache holds a fraction of the image
    exp = n.cache(size, img)

    async def go():
        for _ in range(300):
            op = rng.choice("wrrrtzc")
            off = rng.randrange(size)
            ln = rng.randint(1, min(size - off, 10 * PAGE))
            if op == "w":
                s = rng.randrange(len(src) - ln + 1)
                await exp.write(off, src[s:s + ln])
                model[off:off + ln] = src[s:s + ln]
            elif op == "r":
                assert bytes(await exp.read(off, ln)) == model[off:off + ln]
            elif op == "t":
                await exp.trim(off, ln)
                first, stop = -(-off // PAGE), (off + ln) // PAGE
                model[first * PAGE:stop * PAGE] = bytes(max(0, stop - first) * PAGE)
            elif op == "z":
                await exp.zero(off, ln)
                model[off:off + ln] = bytes(ln)
            else:
                await exp.cache(off, ln)
        assert await read_all(exp, size, 32 * 1024) == model
        await exp.flush()

    run(go())
    assert img.read_bytes() == model
    assert exp.counters.cache_hits > 0 and n.zc.evicted_eph_pageframes > 0


def test_swap_eats_cache_frames_not_the_reverse(node, tmp_path):
    n = node(64)
    data = corpus(256)
    img = tmp_path / "disk.img"
    img.write_bytes(data)
    cache = n.cache(len(data), img)
    swap = n.swap(len(data))

    async def go():
        await read_all(cache, len(data), 64 * 1024)  # fill memory with ephemeral pages
        assert n.zc.zbud.pageframes[0] > 0
        await write_all(swap, data[:100 * PAGE], 4 * PAGE)  # persistent pages take their frames
        assert await read_all(swap, 100 * PAGE, 8 * PAGE) == data[:100 * PAGE]
        assert await read_all(cache, len(data), 64 * 1024) == data  # misses, but correct

    run(go())
    assert n.zc.pers_ate_eph > 0
    assert swap.counters.errors == 0


def test_cache_block_status_from_file(node, tmp_path):
    n = node(64)
    img = tmp_path / "disk.img"
    exp = n.cache(64 * PAGE, img)

    async def go():
        await exp.write(8 * PAGE, corpus(8))
        await exp.trim(10 * PAGE, 2 * PAGE)

    run(go())
    ext = exp.block_status(0, 64 * PAGE)
    assert sum(ln for ln, _ in ext) == 64 * PAGE
    assert ext[0] == (8 * PAGE, STATE_HOLE | STATE_ZERO)
    if exp.backing.punch_supported:
        assert ext[1:4] == [(2 * PAGE, 0), (2 * PAGE, STATE_HOLE | STATE_ZERO), (4 * PAGE, 0)]
