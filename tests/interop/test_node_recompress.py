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
