"""The cold log (coldlog.py): blobs appended over arena frames, freed by members, compacted.

A real FrameArena; a hypothesis state machine checks the log against a dict of
the blobs it should hold, with frames counted against the budget.
"""
import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ramster.coldlog import ColdLog
from ramster.frames import FrameArena
from ramster.units import PAGE_SIZE


def blob(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_a_blob_crosses_frames_and_reads_back():
    arena = FrameArena(16)
    log = ColdLog(arena)
    a, b = blob(1, 5000), blob(2, 9000)
    ga, gb = log.add(a, 3), log.add(b, 2)
    assert (log.blob(ga), log.blob(gb)) == (a, b)
    assert len(log.frames) == arena.in_use == 4  # 14000 bytes: a frame wasted only at the end
    assert log.pages == 5 and log.groups == 2 and log.zbytes == 14000
    log.check()


def test_the_last_member_frees_the_group_and_the_end_gives_frames_back():
    arena = FrameArena(16)
    log = ColdLog(arena)
    ga, gb = log.add(blob(1, 5000), 2), log.add(blob(2, 9000), 1)
    assert not log.free_member(ga, 0)
    assert log.live(ga, 1) and not log.live(ga, 0)
    assert log.free_member(gb, 0)  # the group at the end: its frames go at once
    assert arena.in_use == len(log.frames) == 2 and log.end == 5000
    assert log.free_member(ga, 1)
    assert arena.in_use == 0 and log.end == 0 and log.groups == 0
    log.check()


def test_a_member_freed_twice_is_an_error_not_a_miscount():
    log = ColdLog(FrameArena(4))
    g = log.add(blob(1, 100), 2)
    log.free_member(g, 1)
    try:
        log.free_member(g, 1)
    except ValueError:
        pass
    else:
        raise AssertionError("a second free of one member went unnoticed")
    assert log.pages == 1


def test_holes_are_reclaimed_by_compaction_and_blobs_survive_it():
    arena = FrameArena(32)
    log = ColdLog(arena)
    blobs = {log.add(blob(i, 3000 + 700 * i), 1): blob(i, 3000 + 700 * i) for i in range(8)}
    for g in list(blobs)[::2]:
        log.free_member(g, 0)
        del blobs[g]
    before = arena.in_use
    assert log.hole_bytes() > 0
    freed = log.compact()
    assert freed > 0 and arena.in_use == before - freed and log.hole_bytes() == 0
    assert all(log.blob(g) == b for g, b in blobs.items())
    log.check()


def test_a_full_budget_takes_nothing():
    arena = FrameArena(2)
    log = ColdLog(arena)
    assert log.add(blob(1, 3 * PAGE_SIZE), 1) == -1
    assert arena.in_use == 0 and log.end == 0 and log.groups == 0
    g = log.add(blob(2, PAGE_SIZE + 1), 1)
    assert g >= 0 and arena.in_use == 2
    log.check()


def test_no_group_beyond_the_ids_the_caller_can_name():
    log = ColdLog(FrameArena(16), max_groups=2)
    g0, g1 = log.add(blob(1, 100), 1), log.add(blob(2, 100), 1)
    assert log.add(blob(3, 100), 1) == -1 and log.groups == 2 and log.end == 200
    log.free_member(g1, 0)  # at the end of the log: its id is free again
    assert log.add(blob(4, 100), 1) == g1
    log.check()


def test_a_freed_id_is_reused_only_once_it_left_the_order():
    log = ColdLog(FrameArena(16))
    g0, g1 = log.add(blob(1, 100), 1), log.add(blob(2, 100), 1)
    log.free_member(g0, 0)  # a hole before g1: its id stays taken until compaction
    g2 = log.add(blob(3, 100), 1)
    assert g2 not in (g0, g1)
    log.compact()
    assert log.add(blob(4, 100), 1) == g0
    log.check()


class ColdLogMachine(RuleBasedStateMachine):
    @initialize(budget=st.integers(1, 24))
    def setup(self, budget):
        self.arena = FrameArena(budget)
        self.log = ColdLog(self.arena)
        self.model = {}  # g -> [blob, set of live members]

    @rule(seed=st.integers(0, 1000), size=st.integers(1, 3 * PAGE_SIZE), members=st.integers(1, 32))
    def add(self, seed, size, members):
        b = blob(seed, size)
        free_frames = self.arena.budget - self.arena.in_use
        room = len(self.log.frames) * PAGE_SIZE - self.log.end + free_frames * PAGE_SIZE
        g = self.log.add(b, members)
        if size > room:
            assert g == -1
        else:
            assert g >= 0 and g not in self.model
            self.model[g] = [b, set(range(members))]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free(self, data):
        g = data.draw(st.sampled_from(sorted(self.model)))
        m = data.draw(st.sampled_from(sorted(self.model[g][1])))
        self.model[g][1].discard(m)
        gone = self.log.free_member(g, m)
        assert gone == (not self.model[g][1])
        if gone:
            del self.model[g]

    @rule()
    def compact(self):
        self.log.compact()
        assert self.log.hole_bytes() == 0

    @invariant()
    def agrees(self):
        log = self.log
        log.check()
        assert self.arena.in_use == len(log.frames)
        assert log.groups == len(self.model)
        assert log.pages == sum(len(ms) for _, ms in self.model.values())
        for g, (b, ms) in self.model.items():
            assert log.blob(g) == b
            assert all(log.live(g, m) == (m in ms) for m in range(32))


TestColdLog = ColdLogMachine.TestCase
TestColdLog.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])
