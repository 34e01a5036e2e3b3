"""Recompression in a running node: `ramster ctl recompress` and the background task,
with pages written and read back through NBD."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from pages import image
from support import RAMSTER, NodeProcess, need_nbd

pytestmark = pytest.mark.interop

MiB = 1 << 20
PAGE = 4096


def nibble_pages(n: int) -> bytes:
    """Pages lz4 keeps raw (huge) and zstd halves: random letters of a 16-letter alphabet."""
    rng = random.Random(3)
    return bytes(rng.choice(b"abcdefghijklmnop") for _ in range(n * PAGE))


def ctl(node: NodeProcess, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RAMSTER, "ctl", "--control", str(node.sock) + ".ctl", *words],
                          capture_output=True, text=True, timeout=60)


def write(node: NodeProcess, data: bytes) -> None:
    nbd = need_nbd()
    h = nbd.NBD()
    h.connect_uri(node.uri("swap"))
    for off in range(0, len(data), MiB):
        h.pwrite(data[off:off + MiB], off)
    h.shutdown()


def read(node: NodeProcess, size: int) -> bytes:
    nbd = need_nbd()
    h = nbd.NBD()
    h.connect_uri(node.uri("swap"))
    out = b"".join(h.pread(min(MiB, size - off), off) for off in range(0, size, MiB))
    h.shutdown()
    return out


def test_ctl_recompress_saves_memory_and_the_pages_read_back(tmp_path):
    data = image(3 * MiB, "anon-python.pages") + nibble_pages(64)
    node = NodeProcess(tmp_path / "n", "--memory", "16M", "--export", "swap:swap:8M")
    try:
        write(node, data)
        before = node.counters()
        assert before["zcache.huge_pages"] >= 64
        r = ctl(node, "recompress")  # before any mark: the huge pages only
        assert r.returncode == 0 and "recompress: " in r.stdout, r.stdout + r.stderr
        c = node.counters()
        assert c["zcache.huge_pages"] == before["zcache.huge_pages"] - 64
        assert ctl(node, "mark-idle").returncode == 0
        r = ctl(node, "recompress", "200")
        assert r.returncode == 0 and "page(s) recompressed with zstd" in r.stdout, r.stdout + r.stderr
        c = node.counters()
        assert c["zcache.recompressed"] + c["zcache.recompress_skipped"] >= 64 + 199
        assert c["zcache.recompress_saved_bytes"] > 64 * 1500
        assert c["control.recompressions"] == 2
        assert "ctl: recompress: " in node.stderr()
        assert read(node, len(data)) == data
    finally:
        assert node.stop() == 0


def test_background_recompression_at_a_cpu_share(tmp_path):
    data = nibble_pages(32)
    node = NodeProcess(tmp_path / "n", "--memory", "8M", "--export", "swap:swap:4M",
                       "--recompress-cpu", "0.5", "--recompress-codec", "zlib")
    try:
        write(node, data)
        node.wait_for(lambda s: s["counters"]["zcache.recompressed"] == 32, "the background recompression")
        assert node.counters()["zcache.huge_pages"] == 0
        assert read(node, len(data)) == data
        assert "recompressing cold pages with zlib in the background" in node.stderr()
        node_stats = node.stats()["node"]
        assert (node_stats["recompress_codec"], node_stats["recompress_cpu"]) == ("zlib", 0.5)
    finally:
        assert node.stop() == 0


def test_cold_groups_through_nbd_overwrites_and_a_restart(tmp_path):
    """A dense node groups the cold pages of its swap export; reads, overwrites,
    trims and a clean restart on the same file all see the last version."""
    size = 8 * MiB
    data = bytearray(image(size, "anon-*.pages"))
    backing = tmp_path / "swap.img"
    flags = ("--memory", "16M", "--allocator", "dense", "--export", f"swap:swap:{size}:{backing}")
    node = NodeProcess(tmp_path / "n", *flags)
    try:
        write(node, bytes(data))
        assert ctl(node, "mark-idle").returncode == 0
        r = ctl(node, "recompress")
        assert r.returncode == 0, r.stdout + r.stderr
        c = node.counters()
        # every page in memory (not those too poor for it, which went to the file) is grouped
        assert c["dense.cold_pages"] > 0.7 * size // PAGE and c["dense.pers_zpages"] == 0
        assert c["zcache.pers_pageframes"] < 0.3 * size // PAGE  # about 0.21 of the bytes, in frames
        assert read(node, size) == data
        nbd = need_nbd()
        h = nbd.NBD()
        h.connect_uri(node.uri("swap"))
        for p in range(0, size // PAGE, 37):  # some members of many groups change
            new = bytes([p & 255]) * 17 + bytes(data[p * PAGE + 17:(p + 1) * PAGE])
            h.pwrite(new, p * PAGE)
            data[p * PAGE:(p + 1) * PAGE] = new
        h.trim(64 * PAGE, 5 * PAGE)
        data[5 * PAGE:69 * PAGE] = bytes(64 * PAGE)
        h.shutdown()
        assert read(node, size) == data
        assert node.counters()["dense.cold_pages"] < c["dense.cold_pages"]
    finally:
        assert node.stop() == 0
    node = NodeProcess(tmp_path / "n", *flags)
    try:
        assert read(node, size) == data  # the stop wrote every grouped page to the file
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.stderr()
