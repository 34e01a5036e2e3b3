"""The backing "swap disk" file and the writeback sink, on real files and a real Zcache."""
from __future__ import annotations

import asyncio
import os

import pytest

from ramster import Frontswap, Zcache
from ramster.frontends.frontswap import swiz, unswiz
from ramster.nbd.swap import SwapExport
from ramster.storage import BackingFile, SwapWriteback
from ramster.storage.pagemap import FILE, MEMORY

PAGE = 4096


def page_of(i: int) -> bytes:
    # compressible but distinct: a counter in text, like real data
    return (f"page {i:08d} ".encode() * 400)[:PAGE]


def test_create_sparse_and_rw(tmp_path):
    path = tmp_path / "swap.img"
    f = BackingFile(path, 64 * PAGE)
    assert path.stat().st_size == 64 * PAGE
    assert os.stat(path).st_blocks == 0  # sparse
    assert f.pread(0, PAGE) == bytes(PAGE)
    f.pwrite(5 * PAGE, page_of(5))
    assert f.dirty
    assert f.pread(5 * PAGE, PAGE) == page_of(5)
    buf = bytearray(3 * PAGE)
    f.preadinto(buf, 4 * PAGE)
    assert bytes(buf) == bytes(PAGE) + page_of(5) + bytes(PAGE)
    f.fsync()
    assert not f.dirty
    f.close()
    f.close()  # idempotent


def test_existing_file_grows_never_shrinks(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(b"x" * 100)
    BackingFile(path, 8 * PAGE).close()
    assert path.stat().st_size == 8 * PAGE
    assert path.read_bytes()[:100] == b"x" * 100
    BackingFile(path, 2 * PAGE).close()
    assert path.stat().st_size == 8 * PAGE


def test_reads_past_eof_are_zero(tmp_path):
    f = BackingFile(tmp_path / "img", 4 * PAGE)
    os.ftruncate(f.fd, PAGE)  # someone shrank it under us
    assert f.pread(2 * PAGE, PAGE) == bytes(PAGE)
    buf = bytearray(b"\xff" * 2 * PAGE)
    f.preadinto(buf, PAGE // 2)
    assert buf == bytes(2 * PAGE)
    f.close()


def test_punch_hole_and_data_runs(tmp_path):
    f = BackingFile(tmp_path / "img", 64 * PAGE)
    for i in range(16, 32):
        f.pwrite(i * PAGE, page_of(i))
    f.fsync()
    runs = list(f.data_runs(0, 64 * PAGE))
    assert runs[0] == (0, 16 * PAGE, False)
    assert (16 * PAGE, 32 * PAGE, True) in runs
    assert runs[-1][1] == 64 * PAGE
    f.punch_hole(20 * PAGE, 4 * PAGE)
    assert f.pread(20 * PAGE, 4 * PAGE) == bytes(4 * PAGE)
    assert f.pread(19 * PAGE, PAGE) == page_of(19)
    assert f.pread(24 * PAGE, PAGE) == page_of(24)
    assert os.fstat(f.fd).st_size == 64 * PAGE  # KEEP_SIZE
    if f.punch_supported:
        runs = list(f.data_runs(16 * PAGE, 32 * PAGE))
        assert runs == [(16 * PAGE, 20 * PAGE, True), (20 * PAGE, 24 * PAGE, False), (24 * PAGE, 32 * PAGE, True)]
    # runs always tile the range exactly
    for start, stop in ((0, 64 * PAGE), (PAGE + 7, 50 * PAGE - 3)):
        runs = list(f.data_runs(start, stop))
        assert runs[0][0] == start and runs[-1][1] == stop
        assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    f.close()


def test_zero_fallback_when_punching_is_unsupported(tmp_path):
    f = BackingFile(tmp_path / "img", 8 * PAGE)
    f.pwrite(0, page_of(0) * 8)
    f.punch_supported = False
    f.punch_hole(PAGE, 2 * PAGE + 100)
    data = f.pread(0, 8 * PAGE)
    assert data[:PAGE] == page_of(0)
    assert data[PAGE:3 * PAGE + 100] == bytes(2 * PAGE + 100)
    assert data[3 * PAGE + 100:4 * PAGE] == page_of(0)[100:]
    f.close()


def test_not_a_file(tmp_path):
    with pytest.raises(OSError):
        BackingFile(tmp_path, PAGE)
    with pytest.raises(OSError):
        BackingFile("/dev/null", PAGE)


def test_sink_moves_lru_pages_to_their_offsets(tmp_path):
    sink = SwapWriteback(unswiz)
    zc = Zcache(max_pageframes=8, writeback_sink=sink)
    fs = Frontswap(zc, exclusive_gets=False)
    backing = BackingFile(tmp_path / "swap.img", 256 * PAGE)
    exp = SwapExport("swap", 256 * PAGE, fs, 3, backing, writeback=sink)
    SwapExport("bare", 256 * PAGE, fs, 4, writeback=sink)  # no backing file: nothing to register

    for off in range(40):
        assert fs.store(3, off, page_of(off))
    assert zc.writtenback_pages > 0
    assert zc.zbud.pageframes[1] <= 8
    # every page is either still in memory or in the file at offset * 4096, never both missing
    for off in range(40):
        oid, index = swiz(3, off)
        in_mem = zc.tmem.lookup(zc.pool(fs.pool_id), oid, index)
        on_disk = backing.pread(off * PAGE, PAGE) == page_of(off)
        assert in_mem or on_disk, off
    assert zc.outstanding_writeback_pages == 0

    # pages of a type without backing stay in memory: the sink has no file for them (None)
    pool = zc.pool(fs.pool_id)
    oid, index = swiz(4, 7)
    assert sink(pool, oid, index, page_of(7)) is None
    oid, index = swiz(9, 7)  # a type nobody registered
    assert sink(pool, oid, index, page_of(7)) is None
    other = zc.pool(zc.new_pool(persistent=True))  # not frontswap's pool
    oid, index = swiz(3, 7)
    assert sink(other, oid, index, page_of(7)) is None
    zc.check()
    backing.close()


def test_sink_writes_the_disk_not_the_export(tmp_path):
    """The sink reaches the swap disk (file + state map) directly; the export only counts."""
    sink = SwapWriteback(unswiz)
    zc = Zcache(max_pageframes=64, writeback_sink=sink)
    fs = Frontswap(zc, exclusive_gets=False)
    backing = BackingFile(tmp_path / "swap.img", 256 * PAGE)
    exp = SwapExport("swap", 256 * PAGE, fs, 2, backing, writeback=sink)
    pool = zc.pool(fs.pool_id)
    asyncio.run(exp.write(44 * PAGE, page_of(1)))
    assert exp.disk.states[44] == MEMORY  # the file's copy (a hole) is stale now
    oid, index = swiz(2, 44)
    assert sink.accepts(pool, oid, index)
    assert sink(pool, oid, index, page_of(1)) is True
    assert backing.pread(44 * PAGE, PAGE) == page_of(1)
    assert exp.disk.states[44] == FILE and exp.counters.written_back == 1
    with pytest.raises(ValueError):  # every swap type is frontswap's one pool
        sink.register(zc.pool(zc.new_pool(persistent=True)), 5, exp.disk)
    sink.close()  # the node stops: no page has a file to go to any more
    assert not sink.accepts(pool, oid, index) and sink(pool, oid, index, page_of(1)) is None
    backing.close()
