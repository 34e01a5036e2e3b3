"""zram's verbs on Zcache: mark_idle, writeback_idle, writeback_huge, against a model.

The model keeps, per page, its bytes, where it is (memory or the sink's disk),
whether it is idle, and its place in the LRU the way zcache orders it: a zbud
frame moves to the tail on a put or a hit (peek), a huge frame on a put. With
2400-byte payloads every zbud page has a frame of its own, so frame-granular
idleness is page-granular and the model can say exactly which pages each
writeback must move, in which order.
"""
import random

import pytest
from pages import random_page, sized_page

from ramster import Zcache

FRAMES = 96


class Sink:
    """A writeback sink that refuses the pages of `refused` indexes."""

    def __init__(self, refused=()):
        self.disk = {}
        self.order = []
        self.refused = set(refused)

    def __call__(self, pool, oid, index, page):
        if index in self.refused:
            return False
        self.disk[index] = bytes(page)
        self.order.append(index)
        return True


class Model:
    def __init__(self):
        self.mem = {}  # index -> (bytes, huge)
        self.idle = set()
        self.lru = []  # zbud pages, least recently used first
        self.huge = []  # huge pages, least recently stored first
        self.disk = {}

    def _lru_for(self, i):
        return self.huge if self.mem[i][1] else self.lru

    def put(self, i, data, huge):
        if i in self.mem:
            self._lru_for(i).remove(i)
        self.mem[i] = (data, huge)
        self.idle.discard(i)
        self.disk.pop(i, None)
        (self.huge if huge else self.lru).append(i)

    def get(self, i):
        self.idle.discard(i)
        if i in self.mem:
            return self.mem[i][0]
        return self.disk.get(i)

    def peek(self, i):
        self.idle.discard(i)
        if i in self.mem and not self.mem[i][1]:
            self.lru.remove(i)
            self.lru.append(i)

    def mark(self):
        self.idle = set(self.mem)
        return len(self.idle)

    def writeback(self, candidates, sink, limit):
        """The pages the sink must receive, in order, and the model after it."""
        written = []
        for i in list(candidates):
            if len(written) >= limit:
                break
            lru = self._lru_for(i)
            if i in sink.refused:  # stays, at the tail, no longer idle
                lru.remove(i)
                lru.append(i)
                self.idle.discard(i)
                continue
            lru.remove(i)
            self.disk[i] = self.mem.pop(i)[0]
            self.idle.discard(i)
            written.append(i)
        return written

    def writeback_idle(self, sink, limit):
        huge = self.writeback([i for i in self.huge if i in self.idle], sink, limit)
        return huge + self.writeback([i for i in self.lru if i in self.idle], sink, limit - len(huge))

    def writeback_huge(self, sink, limit):
        return self.writeback(list(self.huge), sink, limit)


def page_for(rnd):
    """(page, whether zcache stores it raw): incompressible pages are huge."""
    if rnd.random() < 0.25:
        return random_page(rnd.randrange(1 << 30)), True
    return sized_page(rnd.randrange(1 << 30), 2400), False


@pytest.mark.parametrize("seed", range(6))
def test_against_the_model(seed):
    rnd = random.Random(seed)
    sink = Sink(refused=range(0, 48, 5))
    zc = Zcache(FRAMES, writeback_sink=sink)
    pid = zc.new_pool(persistent=True)
    m = Model()
    for step in range(600):
        op = rnd.random()
        i = rnd.randrange(48)
        if op < 0.35:
            data, huge = page_for(rnd)
            assert zc.put_page(pid, 1, i, data, huge=True)
            m.put(i, data, huge)
        elif op < 0.55:
            got = zc.get_page(pid, 1, i)
            assert (got if got is not None else sink.disk.get(i)) == m.get(i)
        elif op < 0.65:
            zc.peek_page(pid, 1, i)
            m.peek(i)
        elif op < 0.72:
            assert zc.mark_idle() == m.mark()
        elif op < 0.85:
            limit = rnd.choice([None, 0, 1, 3, 10])
            before = len(sink.order)
            want = m.writeback_idle(sink, 1 << 62 if limit is None else limit)
            assert zc.writeback_idle(limit) == len(want)
            assert sink.order[before:] == want
        elif op < 0.9:
            limit = rnd.choice([None, 1, 2])
            before = len(sink.order)
            want = m.writeback_huge(sink, 1 << 62 if limit is None else limit)
            assert zc.writeback_huge(limit) == len(want)
            assert sink.order[before:] == want
        assert zc.idle_pages() == len(m.idle), step
        zc.check()
    for i in range(48):
        got = zc.get_page(pid, 1, i)
        assert (got if got is not None else sink.disk.get(i)) == m.get(i)


def test_lru_compaction_keeps_the_mark():
    """Hits append to the LRU queue until it is compacted; idle frames stay idle across it."""
    sink = Sink()
    zc = Zcache(64, writeback_sink=sink)
    pid = zc.new_pool(persistent=True)
    for i in range(40):
        assert zc.put_page(pid, 1, i, sized_page(i, 2400))
    assert zc.mark_idle() == 40
    base = zc.zbud.lru_base[1]
    for k in range(3 * 4096):  # hits on the first 10 pages only
        zc.peek_page(pid, 1, k % 10)
    assert zc.zbud.lru_base[1] != base  # compacted
    assert zc.idle_pages() == 30
    assert zc.writeback_idle() == 30
    assert sorted(sink.order) == list(range(10, 40))
    assert zc.stats()["zcache.written_back_idle"] == 30 and zc.stats()["zcache.idle_pages"] == 0
    zc.check()


def test_a_read_clears_the_frame_buddy_too():
    """Idleness is per zbud frame: two 1500-byte pages share one, and a read of either keeps both."""
    sink = Sink()
    zc = Zcache(16, writeback_sink=sink)
    pid = zc.new_pool(persistent=True)
    for i in range(4):
        assert zc.put_page(pid, 1, i, sized_page(i, 1500))
    assert zc.stats()["zcache.pers_pageframes"] == 2
    assert zc.mark_idle() == 4
    assert zc.get_page(pid, 1, 0) == sized_page(0, 1500)
    assert zc.idle_pages() == 2
    assert zc.writeback_idle() == 2 and sorted(sink.order) == [2, 3]
    assert zc.stats()["zcache.pers_pageframes"] == 1


def test_writeback_stops_at_max_pages_mid_frame():
    sink = Sink()
    zc = Zcache(16, writeback_sink=sink)
    pid = zc.new_pool(persistent=True)
    for i in range(4):
        assert zc.put_page(pid, 1, i, sized_page(i, 1500))
    zc.mark_idle()
    assert zc.writeback_idle(max_pages=1) == 1
    assert len(sink.order) == 1
    zc.check()
    for i in range(4):  # every page is somewhere
        assert (zc.get_page(pid, 1, i) or sink.disk[i]) == sized_page(i, 1500)


def test_ephemeral_idle_pages_are_dropped_not_written():
    """Clean cache pages have their copy below: writeback_idle drops the idle ones."""
    sink = Sink()
    zc = Zcache(32, writeback_sink=sink)
    eid = zc.new_pool(persistent=False)
    for i in range(8):
        assert zc.put_page(eid, 1, i, sized_page(i, 2400))
    assert zc.mark_idle() == 8
    assert zc.peek_page(eid, 1, 0) == sized_page(0, 2400)  # a hit: not idle
    assert zc.put_page(eid, 1, 1, sized_page(100, 2400))  # a new copy: not idle
    assert zc.writeback_idle(max_pages=4) == 4
    assert zc.writeback_idle() == 2
    assert sink.order == []
    s = zc.stats()
    assert s["zcache.dropped_idle"] == 6 and s["zcache.written_back_idle"] == 0
    assert s["zcache.eph_pageframes"] == 2 and s["zcache.marked_idle"] == 8
    assert zc.get_page(eid, 1, 0) == sized_page(0, 2400)
    assert zc.get_page(eid, 1, 1) == sized_page(100, 2400)
    assert all(zc.get_page(eid, 1, i) is None for i in range(2, 8))
    zc.check()


def test_without_a_sink_persistent_pages_stay():
    zc = Zcache(16)
    pid = zc.new_pool(persistent=True)
    assert zc.put_page(pid, 1, 0, sized_page(0, 2400))
    assert zc.put_page(pid, 1, 1, random_page(1), huge=True)
    assert zc.mark_idle() == 2
    assert zc.writeback_idle() == 0 and zc.writeback_huge() == 0
    assert zc.idle_pages() == 2
    with pytest.raises(ValueError):
        zc.writeback_idle(-1)
    with pytest.raises(TypeError):
        zc.writeback_huge(1.5)


def test_writeback_huge_takes_only_huge_pages_oldest_first():
    sink = Sink()
    zc = Zcache(16, writeback_sink=sink)
    pid = zc.new_pool(persistent=True)
    for i in range(6):
        page = random_page(i) if i % 2 else sized_page(i, 2400)
        assert zc.put_page(pid, 1, i, page, huge=True)
    assert zc.writeback_huge(max_pages=2) == 2 and sink.order == [1, 3]
    assert zc.writeback_huge() == 1 and sink.order == [1, 3, 5]
    s = zc.stats()
    assert s["zcache.huge_pages"] == 0 and s["zcache.written_back_huge"] == 3
    assert s["zcache.writtenback_pages"] == 3
    zc.check()
