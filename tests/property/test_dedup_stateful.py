"""Stateful property test of dedup: Zcache(dedup=True) driven at random under a tiny
budget, with few distinct pages (so most puts share a copy), against a dict model.

Checked after every step: Zcache.check() (every entry's refcount is the number of
tmem slots that hold it, a shared copy's owners are written down, the counters
agree), persistent pages come back intact (from memory, or from the sink once
written back), an ephemeral page is the latest or gone. At the end of every run,
flushing everything leaves no frame in use and an empty dedup table: refcounts
never free a shared copy early and never leak one.
"""
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pages import page, sized_page

from ramster import Zcache

SETTINGS = settings(max_examples=80, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# few pages, so duplicates are the rule; sizes that fill a frame alone and share one
PAGES = [page(i) for i in range(3)] + [sized_page(i, s) for i, s in enumerate((1500, 2200))] + [bytes(4096)]
page_st = st.sampled_from(PAGES)
oid_st = st.sampled_from([0, 1])
index_st = st.sampled_from([0, 1, 2, 3, 64])


class Remote:
    """RAMster's hooks as a peer would see them: pages it holds, by remote entry."""

    def __init__(self):
        self.held = {}

    def free_remote(self, r, pool, oid, index):
        self.held.pop(r, None)

    def free_obj(self, pool, oid, pool_destroy):
        pass

    def free_pool(self, pool):
        pass

    def stats(self):
        return {}


class DedupMachine(RuleBasedStateMachine):
    @initialize(frames=st.integers(0, 6), writeback=st.booleans(), refuse=st.sets(index_st, max_size=2),
                allocator=st.sampled_from(["zbud", "dense"]))
    def setup(self, frames, writeback, refuse, allocator):
        self.disk = {}
        self.refuse = refuse  # indices the sink has no place for
        self.zc = Zcache(frames, reserve_pageframes=16, dedup=True, allocator=allocator,
                         writeback_sink=self._sink if writeback else None)
        self.remote = Remote()
        self.zc.attach_remote(self.remote)
        self.pers = self.zc.new_pool(persistent=True)
        self.eph = self.zc.new_pool(persistent=False)
        self.model = {}  # (pool, oid, index) -> page: persistent exact, ephemeral "latest or gone"
        self.on_peer = {}  # handle -> page, for pages remotified
        self.next_r = 0

    def _sink(self, pool, oid, index, data):
        if index in self.refuse:
            return False
        self.disk[(pool.pool_id, oid, index)] = data
        return True

    def _pool(self, persistent):
        return self.pers if persistent else self.eph

    def _forget(self, h):
        self.model.pop(h, None)
        self.disk.pop(h, None)
        self.on_peer.pop(h, None)

    @rule(persistent=st.booleans(), oid=oid_st, index=index_st, data=page_st)
    def put(self, persistent, oid, index, data):
        h = (self._pool(persistent), oid, index)
        self._forget(h)
        if self.zc.put_page(*h, data):
            self.model[h] = data
        else:
            assert self.zc.get_page(*h) is None, "a failed put left an older copy"

    @rule(persistent=st.booleans(), oid=oid_st, index=index_st, free=st.booleans())
    def get(self, persistent, oid, index, free):
        h = (self._pool(persistent), oid, index)
        got = self.zc.get_page(*h, free=free)
        if h in self.on_peer:
            assert not got
            return
        want = self.model.get(h)
        if persistent:
            if got is None and want is not None:
                assert self.disk.get(h) == want, "persistent page lost"
                self.model.pop(h)
            else:
                assert got == want
            if free:
                self.model.pop(h, None)
        else:
            assert got is None or got == want, "ephemeral get returned a stale page"
            self.model.pop(h, None)

    @rule(persistent=st.booleans(), oid=oid_st, index=index_st)
    def flush_page(self, persistent, oid, index):
        h = (self._pool(persistent), oid, index)
        found = self.zc.flush_page(*h)
        if persistent and h in self.model and h not in self.disk:
            assert found
        self._forget(h)

    @rule(persistent=st.booleans(), oid=oid_st)
    def flush_object(self, persistent, oid):
        pool = self._pool(persistent)
        self.zc.flush_object(pool, oid)
        for h in [h for h in {**self.model, **self.disk, **self.on_peer} if h[0] == pool and h[1] == oid]:
            self._forget(h)

    @rule(persistent=st.booleans())
    def destroy_and_recreate(self, persistent):
        pool = self._pool(persistent)
        assert self.zc.destroy_pool(pool)
        assert self.zc.new_pool(persistent=persistent) == pool
        for h in [h for h in {**self.model, **self.disk, **self.on_peer} if h[0] == pool]:
            self._forget(h)

    @rule(frames=st.integers(0, 8))
    def resize(self, frames):
        self.zc.set_max_pageframes(frames)
        if self.zc.writeback_sink is None:
            for h, want in self.model.items():
                if h[0] == self.pers and h not in self.on_peer:
                    assert self.zc.get_page(*h) == want

    @precondition(lambda self: self.zc.writeback_sink is not None)
    @rule()
    def writeback_idle(self):
        self.zc.mark_idle()
        self.zc.writeback_idle()

    @rule(persistent=st.booleans(), nframes=st.integers(1, 3), commit=st.lists(st.booleans(), max_size=6),
          meanwhile=st.lists(st.tuples(oid_st, index_st, page_st), max_size=2))
    def remotify(self, persistent, nframes, commit, meanwhile):
        """take_lru, puts while the batch is on the wire, commit some pages, release."""
        zc = self.zc
        pages, taken = zc.take_lru(persistent, nframes)
        for oid, index, data in meanwhile:
            self.put(persistent, oid, index, data)
        for (p, pool, oid, index, payload), ok in zip(pages, commit):
            h = (pool.pool_id, oid, index)
            if ok and zc.still_taken(p, pool, oid, index):
                assert zc.decode(payload) == self.model[h], "a taken page is not its owner's"
                r = self.next_r
                self.next_r += 1
                assert zc.commit_remote(p, pool, oid, index, r)
                self.remote.held[r] = payload
                self.on_peer[h] = self.model[h]
        zc.release_taken(taken)

    @invariant()
    def structure(self):
        self.zc.check()

    @invariant()
    def persistent_pages_intact(self):
        for h, want in self.model.items():
            if h[0] == self.pers and h not in self.disk and h not in self.on_peer:
                assert self.zc.get_page(*h) == want

    def teardown(self):
        zc = getattr(self, "zc", None)
        if zc is None:
            return
        for pool in (self.pers, self.eph):
            for oid in (0, 1):
                zc.flush_object(pool, oid)
        zc.check()
        assert zc.pageframes_in_use == 0, "a copy leaked"
        assert zc.dedup.entries == 0 and not zc.dedup.owners
        assert all(v > 0 for v in zc.dedup.index.values()), "an entry's key outlived it"
        assert not self.remote.held
        zc.close()


DedupMachine.TestCase.settings = SETTINGS
TestDedup = DedupMachine.TestCase
