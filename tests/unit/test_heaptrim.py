"""HeapTrimmer: trims only once traffic has stopped after at least MIN_BYTES, counts what it did."""
from __future__ import annotations

import sys

import pytest

from ramster.heaptrim import HeapTrimmer, rss_bytes


class Fake:
    def __init__(self):
        self.traffic = 0
        self.rss = 10 << 20
        self.calls = 0

    def trim(self, pad: int) -> int:
        assert pad == 0
        self.calls += 1
        self.rss -= 1 << 20
        return 1


def make(fake: Fake, min_bytes: int = 1 << 20) -> HeapTrimmer:
    return HeapTrimmer(lambda: fake.traffic, min_bytes=min_bytes, trim=fake.trim, rss=lambda: fake.rss)


def test_trims_once_quiet_after_a_burst():
    fake = Fake()
    t = make(fake)
    assert not t.tick()  # nothing moved
    fake.traffic += 4 << 20
    assert not t.tick()  # still moving: never in the middle of work
    assert t.untrimmed() == 4 << 20
    assert t.tick()  # quiet since the last look
    assert (fake.calls, t.trims, t.trimmed_bytes, t.untrimmed()) == (1, 1, 1 << 20, 0)
    assert not t.tick()  # nothing new to give back
    assert t.stats() == {"heap.trims": 1, "heap.trimmed_bytes": 1 << 20, "heap.untrimmed_traffic_bytes": 0}


def test_small_traffic_waits_until_it_adds_up():
    fake = Fake()
    t = make(fake)
    for _ in range(3):
        fake.traffic += 300 << 10
        t.tick()
        assert not t.tick()
    fake.traffic += 300 << 10  # 1.2 MiB in all
    t.tick()
    assert t.tick() and fake.calls == 1


def test_a_trim_that_frees_nothing_counts_no_bytes():
    fake = Fake()
    t = HeapTrimmer(lambda: fake.traffic, trim=lambda pad: 0, rss=lambda: 5 << 20)
    assert t.trim() == 0 and t.trims == 1 and t.trimmed_bytes == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux's")
def test_glibc_trim_returns_freed_heap():
    t = HeapTrimmer(lambda: 0)
    assert t.available
    blocks = [bytearray(64 << 10) for _ in range(256)]  # 16 MiB from the heap (below the mmap threshold)
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])
    keep = blocks[1::2]  # holes between live blocks: free() cannot give them back, only a trim
    del blocks
    before = rss_bytes()
    freed = t.trim()
    assert t.trims == 1 and freed > 4 << 20 and t.trimmed_bytes == freed
    assert rss_bytes() < before - (4 << 20)
    del keep
