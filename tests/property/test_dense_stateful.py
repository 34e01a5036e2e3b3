"""Stateful property tests of the dense allocator.

DenseMachine drives the allocator alone over a small arena against a dict model
(handle -> the bytes stored): every object reads back byte-exact across stores,
frees, compaction, eviction and zombies; its accounting adds up (Dense.check) and
no frame leaks (the arena's frames in use are exactly the zspages' frames).
DenseZcacheMachine runs the whole engine's stateful test (test_engine_stateful)
with `allocator="dense"`, plus compaction and recompression at random, so
eviction, writeback and shrinking go through the allocator's zspage-sized units
and objects move (compaction under their handles, recompression to new ones).
"""
import random

import test_engine_stateful as engine
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ramster.dense import CLASS_OBJS, CLASS_SIZE, MAX_SIZE, MAX_ZSPAGE_FRAMES, Dense, class_of
from ramster.frames import FrameArena
from ramster.zbud import EPH, HANDLE_SIZE, PERS

SETTINGS = settings(max_examples=60, stateful_step_count=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAMES = 24
# payload sizes: the smallest and largest, class edges, and sizes that straddle frames
SIZES = sorted({1, 16, 17, 100, 500, 1000, 1365, 1500, 2000, 2700, 3000, MAX_SIZE - HANDLE_SIZE}
               | {CLASS_SIZE[i] - HANDLE_SIZE for i in (3, 20, 40, 60)})


class DenseMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.arena = FrameArena(FRAMES, FRAMES)
        self.d = Dense(self.arena)
        self.model: dict[int, tuple[int, bytes, int, int]] = {}  # handle -> (kind, payload, oid, index)
        self.serial = 0

    def teardown(self):
        self.arena.close()

    @rule(c=st.sampled_from([EPH, PERS]), size=st.sampled_from(SIZES), seed=st.integers(0, 1 << 16))
    def store(self, c, size, seed):
        data = random.Random(seed).randbytes(size)
        self.serial += 1
        oid, index = self.serial * 7919, self.serial
        stored = size + HANDLE_SIZE
        oidb = oid.to_bytes(24, "little")
        h = self.d.match_prep(c, stored, data, oidb, index)
        if h <= 0:  # no zspage with room, or its next slot needs a frame: zcache's way, one frame
            f = self.arena.alloc()
            if f < 0:
                assert h == -1 or not self.d.partial[c][class_of(stored)]
                return
            h = self.d.grow_prep(c, stored, f, data, oidb, index)
        assert h > 0 and h not in self.model
        self.model[h] = (c, data, oid, index)

    @rule(c=st.sampled_from([EPH, PERS]), size=st.sampled_from([100, 500, 1500, 2000]), n=st.integers(2, 30),
          seed=st.integers(0, 1 << 16))
    def burst(self, c, size, n, seed):
        """Several zspages of one class, so frees leave them partial and compaction has work."""
        for i in range(n):
            self.store(c, size, seed + i)

    @precondition(lambda self: len(self.model) > 3)
    @rule(pick=st.integers(0, 1 << 30), n=st.integers(1, 20))
    def free_many(self, pick, n):
        for i in range(min(n, len(self.model) - 1)):
            self.free(pick * (i + 1))

    @precondition(lambda self: self.model)
    @rule(pick=st.integers(0, 1 << 30))
    def free(self, pick):
        h = sorted(self.model)[pick % len(self.model)]
        c, data, _, _ = self.model.pop(h)
        assert self.d.free_and_delist(h) == len(data) + HANDLE_SIZE

    @rule()
    def compact(self):
        before = self.arena.in_use
        freed = self.d.compact()
        assert self.arena.in_use == before - freed
        if self.d.compact_starved:  # an object needed a frame for the zspage it joins: none to be had
            return
        for c in (EPH, PERS):  # no class is left with room for a whole zspage in its partial ones
            for ci, stack in enumerate(self.d.partial[c]):
                if len(stack) > 1:
                    assert sum(CLASS_OBJS[ci] - self.d.inuse[z] for z in stack) < CLASS_OBJS[ci]

    @rule(c=st.sampled_from([EPH, PERS]), keep=st.booleans())
    def zombie(self, c, keep):
        """Take the LRU zspage as remotify does; its objects leave (freed) or it is revived."""
        objs = self.d.make_zombie_lru(c, with_data=True)
        if not objs:
            return
        unit = self.d.unit_of(objs[0][0])
        for h, client_id, pool_id, oid, index, data in objs:
            assert self.model[h][1] == data and self.model[h][2:] == (oid, index)
            assert self.d.is_taken(h)
        if keep:
            self.d.revive_zombie(unit)
        else:
            for h, *_ in objs:
                del self.model[h]
                self.d.free_and_delist(h)

    @rule()
    def evict(self):
        z, objs, stored, n = self.d.evict_pageframe_lru()
        if not z:
            assert not any(m[0] == EPH and not self.d.is_taken(h) for h, m in self.model.items())
            return
        assert n == len(objs) and stored == sum(len(self.model[o[0]][1]) + HANDLE_SIZE for o in objs)
        for h, *_ in objs:
            assert self.model.pop(h)[0] == EPH, "eviction took a persistent object"
        self.arena.free(self.d.finish_evict(z))

    @precondition(lambda self: self.model)
    @rule(pick=st.integers(0, 1 << 30))
    def touch(self, pick):
        self.d.touch(sorted(self.model)[pick % len(self.model)])

    @invariant()
    def contents(self):
        for h, (c, data, oid, index) in self.model.items():
            assert bytes(self.d.payload(h)) == data, f"handle {h} reads back wrong"
            assert self.d.handle(h)[2:] == (oid, index)

    @invariant()
    def accounting(self):
        self.d.check()
        for c in (EPH, PERS):
            mine = [m for m in self.model.values() if m[0] == c]
            assert self.d.zpages(c) == len(mine)
            assert self.d.zbytes(c) == sum(len(m[1]) + HANDLE_SIZE for m in mine)
        # no frame leaks: every frame taken from the arena is in a zspage
        assert self.arena.in_use == self.d.pageframes[EPH] + self.d.pageframes[PERS]


class DenseZcacheMachine(engine.ZcacheMachine):
    allocator = "dense"
    put_frames = MAX_ZSPAGE_FRAMES

    @rule()
    def compact(self):
        self.zc.compact()

    @rule(mark=st.booleans(), idle_only=st.booleans(), max_pages=st.integers(1, 8))
    def recompress(self, mark, idle_only, max_pages):
        """Cold objects move to smaller classes; huge pages become objects."""
        if mark:
            self.zc.mark_idle()
        self.zc.recompress(max_pages, idle_only)


DenseMachine.TestCase.settings = SETTINGS
TestDense = DenseMachine.TestCase
DenseZcacheMachine.TestCase.settings = engine.SETTINGS
TestDenseZcache = DenseZcacheMachine.TestCase
