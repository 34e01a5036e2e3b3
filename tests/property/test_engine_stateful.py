"""Stateful property tests: Zcache, Frontswap and Cleancache driven at random under a
tiny budget (ouroboros, rejections and writeback all the time) against simple models.

Checked after every step: the coherency rules of SPEC §1.5, "a persistent page that
was stored and not flushed is always returned intact" (from memory or, once written
back, from the sink), the §4.6 frame invariant and zbud's structure (Zcache.check).
"""
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pages import page, random_page, sized_page

from ramster import Cleancache, Frontswap, Zcache

SETTINGS = settings(max_examples=60, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# pages of every kind the put path treats differently
PAGES = (
    [page(i) for i in range(12)]
    + [sized_page(i, s) for i, s in enumerate((100, 1000, 1900, 2000, 2500, 3000, 3500, 3900))]
    + [random_page(1), random_page(2), bytes(4096), b"\x5a" * 4096, b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512]
)
page_st = st.sampled_from(PAGES)
oid_st = st.sampled_from([0, 1, 2, (1 << 191) + 5])
index_st = st.sampled_from([0, 1, 2, 63, 64, 65, 1000, (1 << 32) - 1])


class ZcacheMachine(RuleBasedStateMachine):
    allocator = "zbud"
    # frames a put may need at once: with fewer free (and nothing to evict) it is refused
    put_frames = 1

    @initialize(frames=st.integers(0, 8), writeback=st.booleans())
    def setup(self, frames, writeback):
        self.zc = Zcache(max_pageframes=frames, reserve_pageframes=16, allocator=self.allocator)
        self.pers = self.zc.new_pool(persistent=True)
        self.eph = self.zc.new_pool(persistent=False)
        self.model = {}  # (pool, oid, index) -> page: persistent exact, ephemeral "latest or gone"
        self.disk = {}
        # frames in use may exceed the budget only after a shrink left persistent
        # pages above it; this is the most that may be in use then (0: none over)
        self.over_budget = 0
        if writeback:
            self.zc.writeback_sink = self._sink

    def _sink(self, pool, oid, index, data):
        self.disk[(pool.pool_id, oid, index)] = data
        return True

    def _pool(self, persistent):
        return self.pers if persistent else self.eph

    @rule(persistent=st.booleans(), oid=oid_st, index=index_st, data=page_st, huge=st.booleans())
    def put(self, persistent, oid, index, data, huge):
        h = (self._pool(persistent), oid, index)
        self.disk.pop(h, None)
        full = self.zc.pageframes_in_use + self.put_frames > self.zc.max_pageframes
        if self.zc.put_page(*h, data, huge):
            self.model[h] = data
        else:
            self.model.pop(h, None)
            assert self.zc.get_page(*h) is None, "a failed put left an older copy"
            if huge and persistent:
                # without a lower tier only a full budget refuses a page, whatever its content
                assert full

    @rule(persistent=st.booleans(), oid=oid_st, index=index_st, free=st.booleans())
    def get(self, persistent, oid, index, free):
        h = (self._pool(persistent), oid, index)
        got = self.zc.get_page(*h, free=free)
        want = self.model.get(h)
        if persistent:
            if got is None and want is not None:
                assert self.disk.get(h) == want, "persistent page lost"
                self.model.pop(h)  # it lives on the disk now
            else:
                assert got == want
            if free:
                self.model.pop(h, None)
        else:
            assert got is None or got == want, "ephemeral get returned a stale page"
            self.model.pop(h, None)  # exclusive on a hit; on a miss, a miss stays a miss

    @rule(persistent=st.booleans(), oid=oid_st, index=index_st)
    def flush_page(self, persistent, oid, index):
        h = (self._pool(persistent), oid, index)
        found = self.zc.flush_page(*h)
        if persistent and h in self.model and h not in self.disk:
            assert found
        self.model.pop(h, None)
        self.disk.pop(h, None)

    @rule(persistent=st.booleans(), oid=oid_st)
    def flush_object(self, persistent, oid):
        pool = self._pool(persistent)
        self.zc.flush_object(pool, oid)
        for d in (self.model, self.disk):
            for h in [h for h in d if h[0] == pool and h[1] == oid]:
                del d[h]

    @rule(persistent=st.booleans())
    def destroy_and_recreate(self, persistent):
        pool = self._pool(persistent)
        assert self.zc.destroy_pool(pool)
        new = self.zc.new_pool(persistent=persistent)
        assert new == pool  # the first free id
        for d in (self.model, self.disk):
            for h in [h for h in d if h[0] == pool]:
                del d[h]

    @rule(frames=st.integers(0, 12))
    def resize(self, frames):
        left = self.zc.set_max_pageframes(frames)
        assert left == max(0, self.zc.pageframes_in_use - frames)
        self.over_budget = self.zc.pageframes_in_use if left else 0
        if self.zc.writeback_sink is None:
            # only ephemeral frames may go: every persistent page must still be there
            for h, want in self.model.items():
                if h[0] == self.pers:
                    assert self.zc.get_page(*h) == want

    @invariant()
    def structure(self):
        self.zc.check()
        s = self.zc.stats()
        # SPEC §4.6: a frame is taken only within the budget. Only a shrink leaves more
        # in use, all of it persistent (every ephemeral frame was evicted first), and
        # from then on the count can only fall until it is back within the budget.
        in_use, budget = self.zc.pageframes_in_use, self.zc.max_pageframes
        if in_use > budget:
            assert in_use <= self.over_budget, "a frame was taken beyond the budget"
            assert s["zcache.eph_pageframes"] == 0, "an ephemeral frame kept above the budget"
            self.over_budget = in_use
        else:
            self.over_budget = 0
        if self.allocator == "zbud":
            assert s["zbud.eph_zpages"] <= 2 * s["zbud.eph_pageframes"]
            assert s["zbud.pers_zpages"] <= 2 * s["zbud.pers_pageframes"]

    @invariant()
    def persistent_pages_intact(self):
        for h, want in self.model.items():
            if h[0] == self.pers and h not in self.disk:
                assert self.zc.get_page(*h) == want


class FrontswapMachine(RuleBasedStateMachine):
    @initialize(frames=st.integers(1, 6), exclusive=st.booleans())
    def setup(self, frames, exclusive):
        self.fs = Frontswap(Zcache(frames, reserve_pageframes=8), exclusive_gets=exclusive)
        self.fs.init(0, no_swap_disk=True)  # incompressible pages kept as huge pages
        self.fs.init(1)
        self.model = {}

    @rule(t=st.sampled_from([0, 1]), off=st.integers(0, 600), data=page_st, active=st.booleans())
    def store(self, t, off, data, active):
        if self.fs.store(t, off, data, was_active=active):
            self.model[(t, off)] = data
        else:
            self.model.pop((t, off), None)

    @rule(t=st.sampled_from([0, 1]), off=st.integers(0, 600))
    def load(self, t, off):
        got = self.fs.load(t, off)
        assert got == self.model.get((t, off))
        if self.fs.exclusive_gets:
            self.model.pop((t, off), None)

    @rule(t=st.sampled_from([0, 1]), off=st.integers(0, 600))
    def invalidate_page(self, t, off):
        assert self.fs.invalidate_page(t, off) == ((t, off) in self.model)
        self.model.pop((t, off), None)

    @rule(t=st.sampled_from([0, 1]))
    def invalidate_area(self, t):
        self.fs.invalidate_area(t)
        self.fs.init(t, no_swap_disk=t == 0)  # swapon again
        for k in [k for k in self.model if k[0] == t]:
            del self.model[k]

    @invariant()
    def intact(self):
        self.fs.zc.check()
        for (t, off), want in self.model.items():
            from ramster.frontends.frontswap import swiz

            assert self.fs.zc.get_page(self.fs.pool_id, *swiz(t, off)) == want


class CleancacheMachine(RuleBasedStateMachine):
    @initialize(frames=st.integers(0, 6))
    def setup(self, frames):
        self.cc = Cleancache(Zcache(frames, reserve_pageframes=8))
        self.fsids = [self.cc.init_fs(), self.cc.init_fs()]
        self.model = {}
        self.misses = set()

    @rule(f=st.sampled_from([0, 1]), inode=oid_st, index=index_st, data=page_st)
    def put(self, f, inode, index, data):
        self.cc.put_page(self.fsids[f], inode, index, data)
        self.model[(f, inode, index)] = data  # may be dropped at any time

    @rule(f=st.sampled_from([0, 1]), inode=oid_st, index=index_st)
    def get(self, f, inode, index):
        got = self.cc.get_page(self.fsids[f], inode, index)
        want = self.model.pop((f, inode, index), None)
        assert got is None or got == want

    @rule(f=st.sampled_from([0, 1]), inode=oid_st)
    def invalidate_inode(self, f, inode):
        self.cc.invalidate_inode(self.fsids[f], inode)
        for k in [k for k in self.model if k[:2] == (f, inode)]:
            del self.model[k]

    @rule(f=st.sampled_from([0, 1]))
    def remount(self, f):
        self.cc.invalidate_fs(self.fsids[f])
        self.fsids[f] = self.cc.init_fs()
        for k in [k for k in self.model if k[0] == f]:
            del self.model[k]

    @precondition(lambda self: True)
    @invariant()
    def structure(self):
        self.cc.zc.check()


TestZcache = ZcacheMachine.TestCase
TestZcache.settings = SETTINGS
TestFrontswap = FrontswapMachine.TestCase
TestFrontswap.settings = SETTINGS
TestCleancache = CleancacheMachine.TestCase
TestCleancache.settings = SETTINGS
