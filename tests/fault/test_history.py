"""The history checker on hand-made histories: what it must accept, and what it must catch."""
from __future__ import annotations

import pytest

from .history import PAGE, SLOT, History, Op, check, digests

pytestmark = pytest.mark.fault


class Hist(History):
    """Operations with explicit times, so each case says exactly what overlapped what."""

    def w(self, start: float, end: float, data: bytes, offset: int = 0, status: str = "ok",
          errno: str | None = None) -> Op:
        op = self.begin("w", offset, len(data), "t", "w", digests(data))
        op.start, op.end, op.status, op.errno = start, end, status, errno
        return op

    def r(self, start: float, end: float, data: bytes | None, offset: int = 0, length: int = PAGE,
          errno: str | None = None) -> Op:
        op = self.begin("r", offset, length, "t", "r")
        op.start, op.end = start, end
        if data is None:
            op.status, op.errno = "error", errno or "EIO"
        else:
            op.status, op.values = "ok", digests(data)
        return op


A, B, C = b"a" * PAGE, b"b" * PAGE, b"c" * PAGE
ZEROS = bytes(PAGE)


def kinds(h: History, **kw) -> list[str]:
    return [v.kind for v in check(h, now=100.0, **kw).violations]


def test_last_acknowledged_write_or_zeros_before_any():
    h = Hist()
    h.r(0, 1, ZEROS)
    h.w(2, 3, A)
    h.r(4, 5, A)
    h.w(6, 7, B)
    h.r(8, 9, B)
    assert kinds(h) == []


def test_an_older_version_is_stale_and_zeros_are_caught():
    h = Hist()
    h.w(0, 1, A)
    h.w(2, 3, B)
    h.r(4, 5, A)
    h.r(6, 7, ZEROS)
    v = check(h, now=100.0).violations
    assert [x.kind for x in v] == ["stale", "zeros"]
    assert not v[0].during_write


def test_a_read_overlapping_a_write_may_see_either_but_nothing_older():
    h = Hist()
    h.w(0, 1, A)
    h.w(2, 3, B)
    h.w(4, 8, C)
    h.r(5, 6, B)
    h.r(5, 6, C)
    bad = h.r(5, 6, A)
    v = check(h, now=100.0).violations
    assert [(x.kind, x.op.id, x.during_write) for x in v] == [("stale", bad.id, True)]


def test_overlapping_writes_either_may_win():
    h = Hist()
    h.w(0, 5, A)
    h.w(1, 4, B)
    h.r(6, 7, A)
    h.r(6, 7, B)
    assert kinds(h) == []


def test_half_page_writes_are_judged_per_half():
    h = Hist()
    h.w(0, 1, A)
    h.w(2, 3, B[:SLOT], offset=0)
    h.w(2, 3, C[:SLOT], offset=SLOT)  # both halves at once
    h.r(4, 5, B[:SLOT] + C[SLOT:])
    h.r(4, 5, B[:SLOT] + A[SLOT:])  # the second half's write was lost
    v = check(h, now=100.0).violations
    assert [x.kind for x in v] == ["stale"] and "second half" in v[0].detail


def test_another_pages_bytes_are_named():
    h = Hist()
    h.w(0, 1, A, offset=0)
    h.w(0, 1, B, offset=PAGE)
    h.r(2, 3, B, offset=0)
    v = check(h, now=100.0).violations
    assert v[0].kind == "wrong-bytes" and "page 1" in v[0].detail


def test_eio_only_after_a_write_that_found_no_room():
    h = Hist()
    h.w(0, 1, A)
    h.r(2, 3, None)  # a copy existed: a violation
    h.w(4, 5, B, status="error", errno="ENOSPC")
    h.r(6, 7, None)  # the page's last write failed: lost, EIO is right
    h.r(6, 7, B)  # ...or it was stored after all (a multi-page write failing elsewhere)
    stale = h.r(6, 7, A)  # but never the version the failed write replaced
    v = check(h, now=100.0, enospc_ok=lambda op: True).violations
    assert [x.kind for x in v] == ["eio", "stale"] and v[1].op is stale
    assert [x.kind for x in check(h, now=100.0).violations] == ["eio", "write-enospc", "stale"]


def test_eio_allowed_where_the_test_says_no_copy_can_exist():
    h = Hist()
    h.w(0, 1, A)
    h.r(5, 6, None)
    assert kinds(h) == ["eio"]
    assert kinds(h, eio_ok=lambda op: op.start > 4) == []


def test_a_write_cut_off_may_or_may_not_have_happened():
    h = Hist()
    h.w(0, 1, A)
    h.w(2, 3, B, status="unknown", errno="ENOTCONN")
    h.r(4, 5, A)
    h.r(4, 5, B)
    assert kinds(h) == []


def test_a_failed_write_with_eio_is_judged_like_a_read():
    h = Hist()
    h.w(0, 1, A)
    h.w(2, 3, B[:SLOT], status="error", errno="EIO")
    assert kinds(h) == ["write-eio"]


def test_requests_without_reply_are_hung():
    h = Hist()
    op = h.w(0, 1, A)
    op.status, op.end = "pending", float("inf")
    assert kinds(h) == ["hung"]
    History.hung(op, 12)
    assert kinds(h) == ["hung"]


def test_a_write_of_the_other_half_makes_a_read_a_race():
    h = Hist()
    h.w(0, 1, A)
    h.w(2, 5, B[:SLOT], offset=SLOT)  # a read-modify-write of the whole page
    h.r(3, 4, ZEROS[:SLOT], length=SLOT)
    h.r(6, 7, ZEROS[:SLOT], length=SLOT)
    v = check(h, now=100.0).violations
    assert [(x.kind, x.during_write) for x in v] == [("zeros", True), ("zeros", False)]
