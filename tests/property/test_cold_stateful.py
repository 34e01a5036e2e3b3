"""Stateful property test of cold groups: a dense node's persistent pages grouped by
recompression passes (resumed across calls while puts, overwrites, flushes and
exclusive gets run), written back under a shrinking budget or on the idle
verb to a sink that refuses some pages, regrouped when sparse, against a dict
model.

Checked: every page stored and not flushed reads back as its last version,
from memory or from the sink, never an older one; a page the sink refused is
still in memory; and Zcache.check() (frames, the cold log, the counters,
every cold slot's member live) holds after every step.
"""
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pages import page, random_page, sized_page

from ramster import Zcache
from ramster.units import PAGE_SIZE

PAGES = ([page(i) for i in range(40)] + [sized_page(i, s) for i, s in enumerate((300, 1500, 3000))]
         + [random_page(1), bytes(PAGE_SIZE), b"\x5a" * PAGE_SIZE])
page_st = st.sampled_from(PAGES)
index_st = st.integers(0, 150)


class ColdMachine(RuleBasedStateMachine):
    @initialize(frames=st.integers(8, 80), refuse=st.sets(index_st, max_size=4), dedup=st.booleans())
    def setup(self, frames, refuse, dedup):
        self.disk = {}
        self.refuse = refuse
        self.zc = Zcache(frames, reserve_pageframes=128, allocator="dense", dedup=dedup, writeback_sink=self._sink)
        self.pid = self.zc.new_pool(persistent=True)
        self.model = {}

    def _sink(self, pool, oid, index, data):
        if index in self.refuse:
            return False
        self.disk[index] = bytes(data)
        return True

    @rule(index=index_st, data=page_st)
    def put(self, index, data):
        ok = self.zc.put_page(self.pid, 1, index, data, huge=True)
        # the put may have made room by writing the page's old version to the sink
        self.disk.pop(index, None)
        if ok:
            self.model[index] = data
        else:
            self.model.pop(index, None)

    @rule(first=index_st, n=st.integers(1, 40), base=st.integers(0, 40))
    def put_run(self, first, n, base):
        for i in range(first, min(first + n, 151)):
            self.put(i, PAGES[(base + i) % len(PAGES)])

    @rule(index=index_st, free=st.booleans())
    def get(self, index, free):
        got = self.zc.get_page(self.pid, 1, index, free=free)
        if index in self.disk:
            assert got is None
            if free:
                del self.disk[index]
                self.model.pop(index, None)
            return
        assert got == self.model.get(index)
        if free:
            self.model.pop(index, None)

    @rule(index=index_st)
    def flush(self, index):
        self.zc.flush_page(self.pid, 1, index)
        self.model.pop(index, None)
        self.disk.pop(index, None)

    @rule(mark=st.booleans(), max_pages=st.none() | st.integers(1, 40))
    def recompress(self, mark, max_pages):
        if mark:
            self.zc.mark_idle()
        self.zc.recompress(max_pages)

    @rule(frames=st.integers(0, 80))
    def budget(self, frames):
        self.zc.set_max_pageframes(frames)

    @rule(max_pages=st.none() | st.integers(1, 40))
    def writeback_idle(self, max_pages):
        self.zc.writeback_idle(max_pages)

    @rule()
    def read_everything(self):
        for index, data in self.model.items():
            got = self.zc.get_page(self.pid, 1, index)
            assert got == data or (got is None and self.disk.get(index) == data), index
        for index in self.refuse & set(self.model):
            assert index not in self.disk

    @invariant()
    def consistent(self):
        if hasattr(self, "zc"):
            self.zc.check()

    def teardown(self):
        if hasattr(self, "zc"):
            self.zc.close()


TestCold = ColdMachine.TestCase
TestCold.settings = settings(max_examples=60, stateful_step_count=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
