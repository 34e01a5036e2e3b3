"""Dedup in a running node (`ramster node --dedup`): duplicate pages written through NBD
are stored once, read back intact, and leave memory for each owner's place in the swap
disk, through writeback and through a stop and start."""
from __future__ import annotations

import random

import pytest
from pages import image
from support import NodeProcess

pytestmark = pytest.mark.interop

MiB = 1 << 20
PAGE = 4096


def copies(n: int, size: int) -> bytes:
    """n copies of `size` bytes of corpus pages, one page in eight of each changed by a byte:
    several processes of one program, as their swap sees them."""
    base = image(size, "anon-python.pages")
    rng = random.Random(5)
    out = bytearray()
    for _ in range(n):
        c = bytearray(base)
        for off in range(0, size, PAGE):
            if rng.random() < 0.125:
                c[off + rng.randrange(PAGE)] ^= 0xFF
        out += c
    return bytes(out)


def test_duplicates_stored_once_written_back_and_restarted(tmp_path):
    data = copies(4, 2 * MiB)
    swap = tmp_path / "swap.img"
    args = ("--memory", "8M", "--export", f"swap:swap:8M:{swap}", "--dedup")
    node = NodeProcess(tmp_path / "n", *args)
    try:
        node.swap_io(data)
        c = node.counters()
        assert c["zcache.dedup_saved_pages"] > len(data) // PAGE // 2, c
        assert c["zcache.dedup_pages"] > 0 and c["zcache.dedup_hits"] >= c["zcache.dedup_saved_pages"]
        assert node.stats()["node"]["dedup"] is True
        assert node.swap_io(size=len(data)) == data
        # squeeze memory: shared copies go to the swap disk once per owner, or stay
        node.stop()
        node = NodeProcess(tmp_path / "n", "--memory", "1M", *args[2:])
        assert node.swap_io(size=len(data)) == data  # from the swap disk, every owner's page
        node.swap_io(data[:4 * MiB])  # written again into 1 MiB of memory: writeback makes room
        assert node.counters()["zcache.writtenback_pages"] > 0
        assert node.swap_io(size=len(data)) == data
    finally:
        assert node.stop() == 0
