"""zbud (SPEC §3): frame layout, lists, fit order, LRU rules, eviction, zombies."""
from array import array

import pytest

from ramster.frames import FrameArena
from ramster.zbud import (
    CHUNK_SIZE,
    EPH,
    HANDLE,
    HANDLE_SIZE,
    MAX_BUDDY_SIZE,
    MAX_SIZE,
    NSENTINELS,
    PAGE_SIZE,
    PERS,
    Zbud,
    handle_tag,
)


@pytest.fixture
def zb():
    arena = FrameArena(16, 16)
    z = Zbud(arena.buf, 16)
    z.arena = arena
    yield z
    z.check()


def oidb(oid):
    return oid.to_bytes(24, "little")


def create(z, c, frame, payload, oid=1, index=0, pool=0, client=0xFFFF):
    return z.create_prep(c, frame, len(payload) + HANDLE_SIZE, payload, oidb(oid), handle_tag(client, pool, index))


def match(z, c, payload, oid=1, index=0, pool=0, client=0xFFFF):
    return z.match_prep(c, len(payload) + HANDLE_SIZE, payload, oidb(oid), handle_tag(client, pool, index))


def test_constants_match_the_seed():
    assert (CHUNK_SIZE, HANDLE_SIZE, MAX_SIZE, MAX_BUDDY_SIZE) == (64, 32, 4032, 4000)
    assert HANDLE.size == 32


def test_buddy0_at_start_buddy1_ends_at_end_with_handles(zb):
    p0 = create(zb, EPH, 0, b"A" * 100, oid=7, index=3, pool=2)
    p1 = match(zb, EPH, b"B" * 1000, oid=(1 << 150) + 9, index=0xFFFFFFFF, pool=5, client=3)
    assert p0 >> 1 == p1 >> 1 and p0 & 1 == 0 and p1 & 1 == 1
    frame = bytes(zb.arena.buf[0:PAGE_SIZE])
    assert frame[:HANDLE_SIZE] == HANDLE.pack(oidb(7), 3, 2, 0, 0xFFFF)
    assert frame[HANDLE_SIZE : HANDLE_SIZE + 100] == b"A" * 100
    stored1 = 1000 + HANDLE_SIZE
    start1 = PAGE_SIZE - ((stored1 + 63) // 64) * 64
    assert frame[start1 : start1 + HANDLE_SIZE] == HANDLE.pack(oidb((1 << 150) + 9), 0xFFFFFFFF, 5, 0, 3)
    assert frame[start1 + HANDLE_SIZE : start1 + stored1] == b"B" * 1000
    assert zb.handle(p1) == (3, 5, (1 << 150) + 9, 0xFFFFFFFF)
    assert bytes(zb.payload(p0)) == b"A" * 100 and bytes(zb.payload(p1)) == b"B" * 1000


def test_two_buddies_fit_only_within_64_chunks(zb):
    create(zb, PERS, 0, b"x" * (32 * 64 - HANDLE_SIZE))  # 32 chunks
    assert not match(zb, PERS, b"y" * (32 * 64 - HANDLE_SIZE + 1))  # 33 chunks: no room
    assert match(zb, PERS, b"y" * (32 * 64 - HANDLE_SIZE))  # exactly 32


def test_classes_never_share_frames(zb):
    create(zb, EPH, 0, b"e" * 10)
    assert not match(zb, PERS, b"p" * 10)


def test_match_prefers_the_frame_left_exactly_enough_room(zb):
    # frames whose single zbud uses 10, 40 and 20 chunks
    big = create(zb, EPH, 0, b"a" * (40 * 64 - HANDLE_SIZE))
    small = create(zb, EPH, 1, b"b" * (10 * 64 - HANDLE_SIZE))
    mid = create(zb, EPH, 2, b"c" * (20 * 64 - HANDLE_SIZE))
    # a 24-chunk zbud fits the 40-chunk frame exactly (40 + 24 = 64): best fit first
    p = match(zb, EPH, b"d" * (24 * 64 - HANDLE_SIZE))
    assert p >> 1 == big >> 1
    # a 30-chunk zbud: 40 is taken, next fullest that fits is the 20-chunk frame
    p = match(zb, EPH, b"e" * (30 * 64 - HANDLE_SIZE))
    assert p >> 1 == mid >> 1
    p = match(zb, EPH, b"f" * (54 * 64 - HANDLE_SIZE))
    assert p >> 1 == small >> 1


def test_same_list_is_lifo(zb):
    a = create(zb, EPH, 0, b"a" * 100)
    b = create(zb, EPH, 1, b"b" * 100)
    assert match(zb, EPH, b"c" * 100) >> 1 == b >> 1
    assert match(zb, EPH, b"d" * 100) >> 1 == a >> 1


def test_create_rejects_oversized(zb):
    assert zb.create_prep(EPH, 0, MAX_SIZE + 1, b"x" * (MAX_SIZE + 1 - 32), oidb(0), 0) == 0


def test_lru_tail_on_create_and_second_zbud_not_on_free(zb):
    a = create(zb, EPH, 0, b"a" * 100, index=0)
    b = create(zb, EPH, 1, b"b" * 3990, index=1)  # 63 chunks: nothing pairs with it
    assert [n - NSENTINELS for n in zb.lru_frames(EPH)] == [0, 1]
    # second zbud into frame 0 moves it to the tail
    a2 = match(zb, EPH, b"c" * 100, index=2)
    assert a2 >> 1 == a >> 1
    assert [n - NSENTINELS for n in zb.lru_frames(EPH)] == [1, 0]
    # freeing a zbud does not move the frame
    assert zb.free_and_delist(a2) > 0
    assert [n - NSENTINELS for n in zb.lru_frames(EPH)] == [1, 0]
    assert zb.free_and_delist(b) < 0  # last zbud: frame handed back
    assert [n - NSENTINELS for n in zb.lru_frames(EPH)] == [0]
    zb.free_and_delist(a)


def test_evict_takes_lru_frame_skips_unevictable_and_reports_handles(zb):
    create(zb, EPH, 0, b"a" * 100, oid=1, index=10)
    p = zb.create_prep(EPH, 1, 132, None, oidb(2), handle_tag(0xFFFF, 0, 20))  # a reservation waiting for data
    zb.pin(p)
    zb.copy_to_zbud(p, b"b" * 100)
    match(zb, EPH, b"c" * 100, oid=3, index=30)  # lands in frame 1 (LIFO), still pinned
    n, buds, stored, zpages = zb.evict_pageframe_lru()
    assert n - NSENTINELS == 0 and zpages == 1 and stored == 132
    assert [(b[2], b[3], b[4]) for b in buds] == [(0, 1, 10)]
    # the evictor owns the dying frame: its zbuds are not freed one by one
    assert zb.finish_evict(n) == 0
    n2, *_ = zb.evict_pageframe_lru()
    assert n2 == 0  # only the unevictable frame is left
    zb.create_finish(p)
    n3, buds3, _, zp3 = zb.evict_pageframe_lru()
    assert n3 - NSENTINELS == 1 and zp3 == 2 and {b[3] for b in buds3} == {2, 3}
    zb.finish_evict(n3)
    assert zb.evicted_pageframes[EPH] == 2


def test_zombie_keeps_data_and_frees_with_last_zbud(zb):
    p0 = create(zb, PERS, 0, b"a" * 100, index=1)
    p1 = match(zb, PERS, b"b" * 200, index=2)
    buds = zb.make_zombie_lru(PERS, with_data=True)
    assert sorted((b[4], b[5]) for b in buds) == [(1, b"a" * 100), (2, b"b" * 200)]
    assert zb.stats()["pers_zombie_count"] == 1
    zb.check()
    # a zombie is not matched into
    assert not match(zb, PERS, b"c" * 10)
    assert zb.free_and_delist(p0) > 0
    zb.check()
    assert zb.free_and_delist(p1) < 0
    assert zb.stats()["pers_zombie_count"] == 0
    zb.free_and_delist(match(zb, PERS, b"c" * 10) or create(zb, PERS, 1, b"c" * 10))


def test_revive_zombie_returns_it_to_the_lists(zb):
    create(zb, PERS, 0, b"a" * 100)
    (bud,) = zb.make_zombie_lru(PERS, with_data=False)
    zb.revive_zombie(bud[0] >> 1)
    zb.check()
    assert zb.lru_frames(PERS) == [bud[0] >> 1]
    zb.free_and_delist(bud[0])


def test_stats_names_and_counts(zb):
    p = create(zb, PERS, 0, b"a" * 100)
    q = match(zb, PERS, b"b" * 100)
    s = zb.stats()
    assert s["pers_zpages"] == 2 and s["pers_zbytes"] == 2 * 132 and s["pers_pageframes"] == 1
    assert s["pers_buddied_count"] == 1 and s["pers_unbuddied_count"] == 0
    assert s["pers_cumul_zpages"] == 2 and s["pers_cumul_zbytes"] == 264
    zb.free_and_delist(p)
    zb.free_and_delist(q)
    s = zb.stats()
    assert s["pers_zpages"] == 0 and s["pers_zbytes"] == 0 and s["pers_cumul_zpages"] == 2
    for name in ("eph_zbytes", "eph_cumul_zbytes", "eph_zpages", "eph_cumul_zpages", "eph_pageframes",
                 "eph_evicted_pageframes", "eph_buddied_count", "eph_unbuddied_count", "pers_zombie_count"):
        assert name in s


def test_lru_queue_compacts_under_churn():
    arena = FrameArena(4, 4)
    z = Zbud(arena.buf, 4)
    p = z.create_prep(EPH, 0, 132, b"a" * 100, oidb(1), 0)
    for i in range(20000):  # match and free the same frame again and again
        q = z.match_prep(EPH, 132, b"b" * 100, oidb(1), 1)
        z.free_and_delist(q)
    assert len(z.lru[EPH]) < 10000
    assert z.lru_frames(EPH) == [p >> 1]
    z.check()
    assert isinstance(z.lru[EPH], array)
