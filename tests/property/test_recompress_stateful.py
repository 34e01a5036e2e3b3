"""Stateful property test: recompression among puts, gets, flushes, idle marks, writeback
and remotify, on a small budget, with either allocator, with and without dedup,
against a dict model.

Checked: every persistent page stored and not flushed reads back byte-exact, from
memory (recompressed or not) or from the sink it was written back to; an ephemeral
page reads back as its latest version or not at all; a remotify batch's payloads
decode (with the node's own codec, as a peer's owner would) to the pages they
stand for; and after every step Zcache.check() (frames, zbud's lists and LRU,
the counters) holds.
"""
import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pages import page, random_page, sized_page

from ramster import Zcache
from ramster.units import PAGE_SIZE

SETTINGS = settings(max_examples=60, stateful_step_count=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def nibble_page(seed: int) -> bytes:
    """Huge for lz4, about half a frame for zstd."""
    rng = random.Random(seed)
    return bytes(rng.choice(b"abcdefghijklmnop") for _ in range(PAGE_SIZE))


PAGES = ([page(i) for i in range(10)] + [nibble_page(i) for i in range(4)]
         + [sized_page(i, s) for i, s in enumerate((300, 1500, 2100, 3000))]
         + [random_page(1), bytes(PAGE_SIZE), b"\x5a" * PAGE_SIZE])
page_st = st.sampled_from(PAGES)
key_st = st.tuples(st.sampled_from([0, 1, (1 << 191) + 3]), st.integers(0, 70))


class RecompressMachine(RuleBasedStateMachine):
    @initialize(frames=st.integers(4, 40), writeback=st.booleans(), recompressor=st.sampled_from(["zstd", "zlib", "lz4"]),
                allocator=st.sampled_from(["zbud", "dense"]), dedup=st.booleans())
    def setup(self, frames, writeback, recompressor, allocator, dedup):
        self.disk = {}
        self.zc = Zcache(frames, reserve_pageframes=64, recompressor=recompressor, allocator=allocator, dedup=dedup,
                         writeback_sink=self._sink if writeback else None)
        self.pers = self.zc.new_pool(persistent=True)
        self.eph = self.zc.new_pool()
        self.model = {}  # (pool, oid, index) -> page

    def _sink(self, pool, oid, index, data):
        self.disk[(pool.pool_id, oid, index)] = bytes(data)
        return True

    @rule(persistent=st.booleans(), key=key_st, data=page_st, huge=st.booleans())
    def put(self, persistent, key, data, huge):
        h = (self.pers if persistent else self.eph, *key)
        self.disk.pop(h, None)
        if self.zc.put_page(*h, data, huge):
            self.model[h] = data
        else:
            self.model.pop(h, None)

    @rule(persistent=st.booleans(), key=key_st, free=st.booleans())
    def get(self, persistent, key, free):
        h = (self.pers if persistent else self.eph, *key)
        got = self.zc.get_page(*h, free=free)
        want = self.model.get(h)
        if persistent:
            if h in self.disk:
                assert got is None
                if free:
                    self.disk.pop(h)
                    self.model.pop(h, None)
                return
            assert got == want
            if free:
                self.model.pop(h, None)
        else:
            assert got is None or got == want
            self.model.pop(h, None)  # an ephemeral get takes the page

    @rule(persistent=st.booleans(), key=key_st)
    def flush(self, persistent, key):
        h = (self.pers if persistent else self.eph, *key)
        self.zc.flush_page(*h)
        self.model.pop(h, None)
        self.disk.pop(h, None)

    @rule(persistent=st.booleans(), oid=st.sampled_from([0, 1, (1 << 191) + 3]))
    def flush_object(self, persistent, oid):
        pool = self.pers if persistent else self.eph
        self.zc.flush_object(pool, oid)
        for h in [h for h in self.model if h[:2] == (pool, oid)]:
            del self.model[h]
        for h in [h for h in self.disk if h[:2] == (pool, oid)]:
            del self.disk[h]

    @rule()
    def mark_idle(self):
        self.zc.mark_idle()

    @rule(max_pages=st.none() | st.integers(0, 8), idle_only=st.booleans())
    def recompress(self, max_pages, idle_only):
        self.zc.recompress(max_pages, idle_only)

    @rule(max_pages=st.none() | st.integers(1, 4))
    def writeback_idle(self, max_pages):
        self.zc.writeback_idle(max_pages)
        self._settle_disk()

    @rule()
    def writeback_huge(self):
        self.zc.writeback_huge()
        self._settle_disk()

    @rule(persistent=st.booleans(), nframes=st.integers(1, 4))
    def remotify_and_give_back(self, persistent, nframes):
        """A remotify batch whose peers all failed: the payloads must be the pages,
        in the node's codec, and everything goes back as it was."""
        pages, taken = self.zc.take_lru(persistent, nframes)
        for _, pool, oid, index, payload in pages:
            h = (pool.pool_id, oid, index)
            assert self.zc.decode(payload) == self.model[h]
        self.zc.release_taken(taken)

    def _settle_disk(self):
        # pages the sink took left memory: the model keeps them, on the disk
        for h in self.disk:
            if h[0] == self.eph:
                self.model.pop(h, None)

    @rule()
    def read_everything(self):
        for h, data in list(self.model.items()):
            pool, oid, index = h
            if pool == self.pers:
                got = self.zc.get_page(*h)
                assert got == data or (got is None and self.disk.get(h) == data)

    @invariant()
    def consistent(self):
        if hasattr(self, "zc"):
            self.zc.check()

    def teardown(self):
        if hasattr(self, "zc"):
            self.zc.close()


TestRecompress = RecompressMachine.TestCase
TestRecompress.settings = SETTINGS
