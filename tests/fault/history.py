"""A history of NBD operations on one export, and its checker (DESIGN.md, "The trust contract").

Every write and read is recorded with when it was issued, when its reply came
and what it carried, per half page ("slot", 2048 bytes: every operation of the
workload covers whole slots). Only digests are kept, not bytes.

For a read of a slot, the values it may return are those of the writes that
could be the slot's latest when the read ran: a write that started before the
read ended, and was not superseded, i.e. no write that surely took effect
started after it ended and ended before the read started (the register
linearizability rule for overlapping operations). Before any write, a slot
is zeros. What "surely took effect" means for each outcome:

- acknowledged: took effect, supersedes what came before;
- ENOSPC: the export had no room, and its contract drops the old version:
  the page reads as EIO (or, for pages of a multi-page write that were
  stored, the new bytes), never as the old bytes; supersedes;
- EIO, or the connection died (restart): unknown, may or may not have
  applied; never supersedes.

A read may fail with EIO only where no copy can exist: the page's latest
write failed with ENOSPC (so it was lost), or the test's own rule says so
(`eio_ok`, e.g. after every holder of a page was killed). Anything else is
a violation: wrong bytes (zeros, an older version, another page's bytes) or
an EIO where a copy exists. A write that fails with EIO is judged like a read
of the page (a read-modify-write reads first); one that fails with ENOSPC is a
violation unless `enospc_ok` allows it (memory, peers and disk truly full).
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

PAGE = 4096
SLOT = 2048
SLOTS_PER_PAGE = PAGE // SLOT
ZERO_DIGEST = xxhash.xxh3_64_intdigest(bytes(SLOT))
INF = math.inf


def digests(data) -> tuple[int, ...]:
    mv = memoryview(data)
    return tuple(xxhash.xxh3_64_intdigest(mv[i:i + SLOT]) for i in range(0, len(mv), SLOT))


@dataclass(slots=True)
class Op:
    id: int
    kind: str  # "w" | "r"
    offset: int
    length: int
    client: str
    label: str
    start: float
    end: float = INF
    status: str = "pending"  # pending | ok | error | unknown | hung (no reply in time, given up)
    errno: str | None = None
    values: tuple[int, ...] = ()  # slot digests written, or read back
    message: str = ""

    @property
    def first_slot(self) -> int:
        return self.offset // SLOT

    @property
    def slots(self) -> range:
        return range(self.offset // SLOT, (self.offset + self.length) // SLOT)

    @property
    def pages(self) -> range:
        return range(self.offset // PAGE, (self.offset + self.length - 1) // PAGE + 1)

    def where(self) -> str:
        first, last = self.offset // PAGE, (self.offset + self.length - 1) // PAGE
        span = f"page {first}" if first == last else f"pages {first}-{last}"
        if self.length % PAGE or self.offset % PAGE:
            span += f" (+{self.offset % PAGE}, {self.length} bytes)"
        return span

    def describe(self, t0: float = 0.0) -> str:
        end = "never" if self.end == INF else f"{self.end - t0:.3f}"
        out = f"#{self.id} {'write' if self.kind == 'w' else 'read'} {self.where()} [{self.label}, {self.client}] " \
              f"{self.start - t0:.3f}..{end} s: {self.status}{' ' + self.errno if self.errno else ''}"
        return out

    def destructive(self) -> bool:
        return self.kind == "w" and self.status == "error" and self.errno == "ENOSPC"

    def supersedes(self) -> bool:
        return self.kind == "w" and (self.status == "ok" or self.destructive())


class History:
    """Thread-safe record of operations; t0 is the start of the test's clock."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str]] = []  # nemesis actions, for reports

    def begin(self, kind: str, offset: int, length: int, client: str, label: str, values=()) -> Op:
        assert offset % SLOT == 0 and length % SLOT == 0 and length > 0, (offset, length)
        with self._lock:
            op = Op(len(self.ops), kind, offset, length, client, label, time.monotonic(), values=tuple(values))
            self.ops.append(op)
        return op

    @staticmethod
    def ok(op: Op, data=None) -> None:
        op.end = time.monotonic()
        if data is not None:
            op.values = digests(data)
        op.status = "ok"

    @staticmethod
    def failed(op: Op, errno: str | None, message: str = "") -> None:
        op.end = time.monotonic()
        # EIO and ENOSPC are the export's answers; anything else means the connection went away
        op.status = "error" if errno in ("EIO", "ENOSPC") else "unknown"
        op.errno = errno
        op.message = message[:300]

    @staticmethod
    def hung(op: Op, after: float) -> None:
        op.status = "hung"
        op.message = f"no reply within {after:g} s"

    def event(self, what: str) -> None:
        with self._lock:
            self.events.append((time.monotonic(), what))

    def dump(self, path) -> None:
        """Every operation and event as JSON lines, times relative to t0: for digging into a failure."""
        import json

        with open(path, "w") as f:
            for t, what in self.events:
                f.write(json.dumps({"event": what, "t": round(t - self.t0, 6)}) + "\n")
            for op in self.ops:
                f.write(json.dumps({"id": op.id, "kind": op.kind, "offset": op.offset, "length": op.length,
                                    "client": op.client, "label": op.label, "start": round(op.start - self.t0, 6),
                                    "end": None if op.end == INF else round(op.end - self.t0, 6),
                                    "status": op.status, "errno": op.errno,
                                    "values": [f"{v:016x}" for v in op.values]}) + "\n")


@dataclass
class Violation:
    kind: str  # wrong-bytes | zeros | stale | eio | write-eio | write-enospc | hung
    op: Op
    detail: str
    # a write of the same bytes was in flight during the read: a race, whatever the fault
    during_write: bool = False

    def describe(self, t0: float) -> str:
        return f"{self.label}: {self.op.describe(t0)}: {self.detail}"

    @property
    def label(self) -> str:
        return f"{self.kind} (read during a write of the page)" if self.during_write else self.kind


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        s = self.stats
        kinds = Counter(v.label for v in self.violations)
        head = (f"{s['writes']} writes ({s['writes_ok']} ok, {s['write_enospc']} ENOSPC, {s['write_eio']} EIO, "
                f"{s['write_unknown']} cut off), {s['reads']} reads ({s['read_eio']} EIO, "
                f"{s['read_unknown']} cut off)")
        if kinds:
            head += "; violations: " + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        return head

    def details(self, t0: float, limit: int = 12) -> str:
        lines = [v.describe(t0) for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more")
        return "\n".join(lines)


class _SlotWrites:
    """Writes of one slot, with what a read needs fast: supersession boundaries."""

    def __init__(self) -> None:
        self.writes: list[tuple[Op, int]] = []  # (op, index of this slot in op.values)
        self.done_ends: list[float] = []  # ends of superseding writes, sorted
        self.done_starts_prefix_max: list[float] = []

    def add(self, op: Op, i: int) -> None:
        self.writes.append((op, i))

    def freeze(self) -> None:
        done = sorted((op.end, op.start) for op, _ in self.writes if op.supersedes())
        self.done_ends = [e for e, _ in done]
        m = -INF
        self.done_starts_prefix_max = []
        for _, s in done:
            m = max(m, s)
            self.done_starts_prefix_max.append(m)

    def horizon(self, before: float) -> float:
        """The latest start of a superseding write that ended before `before` (-inf: none)."""
        k = bisect.bisect_left(self.done_ends, before)
        return self.done_starts_prefix_max[k - 1] if k else -INF

    def candidates(self, rs: float, re: float) -> tuple[list[tuple[Op, int]], bool, float]:
        """Writes that may be the latest for a read over [rs, re]; whether zeros (no write yet) may be;
        the supersession horizon."""
        h = self.horizon(rs)
        live = [(op, i) for op, i in self.writes if op.start < re and op.end >= h]
        return live, h == -INF, h


def check(history: History, *, eio_ok: Callable[[Op], bool] | None = None,
          enospc_ok: Callable[[Op], bool] | None = None, hung_after: float = 15.0,
          now: float | None = None) -> Report:
    """Judge every read (and failed write) of the history; see the module docstring."""
    rep = Report()
    now = time.monotonic() if now is None else now
    slots: dict[int, _SlotWrites] = {}
    by_value: dict[int, list[tuple[Op, int]]] = {}
    for op in history.ops:
        if op.kind == "w":
            rep.stats["writes"] += 1
            for i, s in enumerate(op.slots):
                slots.setdefault(s, _SlotWrites()).add(op, i)
                by_value.setdefault(op.values[i], []).append((op, s))
    for sw in slots.values():
        sw.freeze()
    empty = _SlotWrites()

    def lost_possible(op: Op) -> bool:
        # a page whose latest write failed for want of room has no current version (EIO)
        for p in op.pages:
            for s in range(p * SLOTS_PER_PAGE, (p + 1) * SLOTS_PER_PAGE):
                live, _, _ = slots.get(s, empty).candidates(op.start, op.end)
                if any(w.destructive() for w, _ in live):
                    return True
        return False

    for op in history.ops:
        if op.status == "hung" or (op.status == "pending" and now - op.start > hung_after):
            # a dead or paused peer must fail a request within the request timeout, never hang it
            rep.violations.append(Violation("hung", op, op.message or f"no reply after {now - op.start:.1f} s"))
            continue
        if op.status == "pending":
            continue
        if op.kind == "w":
            if op.status == "ok":
                rep.stats["writes_ok"] += 1
            elif op.status == "unknown":
                rep.stats["write_unknown"] += 1
            elif op.errno == "ENOSPC":
                rep.stats["write_enospc"] += 1
                if not (enospc_ok and enospc_ok(op)):
                    rep.violations.append(Violation("write-enospc", op, "a write failed for want of room, "
                                                    "but memory, peers or disk had room" + _msg(op)))
            else:
                rep.stats["write_eio"] += 1
                if not (lost_possible(op) or (eio_ok and eio_ok(op))):
                    rep.violations.append(Violation("write-eio", op, "a write failed with EIO while a copy of "
                                                    "the page existed" + _msg(op)))
            continue
        rep.stats["reads"] += 1
        if op.status == "unknown":
            rep.stats["read_unknown"] += 1
            continue
        if op.status == "error":
            rep.stats["read_eio"] += 1
            if not (lost_possible(op) or (eio_ok and eio_ok(op))):
                rep.violations.append(Violation("eio", op, "EIO, but a copy of every page exists" + _msg(op)))
            continue
        for i, s in enumerate(op.slots):
            got = op.values[i]
            live, zeros_ok, _ = slots.get(s, empty).candidates(op.start, op.end)
            if got in {w.values[j] for w, j in live} or (zeros_ok and got == ZERO_DIGEST):
                continue
            v = _wrong(op, s, got, slots.get(s, empty), live, by_value, history.t0)
            # a write of either half is a read-modify-write of the whole page
            page_slots = range(s - s % SLOTS_PER_PAGE, s - s % SLOTS_PER_PAGE + SLOTS_PER_PAGE)
            v.during_write = any(w.start < op.end and w.end > op.start
                                 for x in page_slots for w, _ in slots.get(x, empty).writes)
            rep.violations.append(v)
            break  # one per read is enough to diagnose it
    return rep


def _msg(op: Op) -> str:
    return f" ({op.message})" if op.message else ""


def _wrong(op: Op, s: int, got: int, sw: _SlotWrites, live, by_value, t0: float) -> Violation:
    where = f"slot {s} (page {s // SLOTS_PER_PAGE}, {'first' if s % 2 == 0 else 'second'} half)"
    expect = ", ".join(f"#{w.id}" for w, _ in live) or "zeros"
    if got == ZERO_DIGEST:
        return Violation("zeros", op, f"{where} read as zeros; expected the bytes of {expect}")
    older = [w for w, j in sw.writes if w.values[j] == got]
    if older:
        w = older[-1]
        newer = [x for x, _ in live if x.supersedes()]
        by = f", superseded by #{newer[0].id} (acked {newer[0].end - t0:.3f} s)" if newer else ""
        return Violation("stale", op, f"{where} read an older version: write #{w.id} "
                         f"(acked {w.end - t0:.3f} s){by}; expected {expect}")
    other = by_value.get(got)
    if other:
        w, ws = other[-1]
        return Violation("wrong-bytes", op, f"{where} read the bytes write #{w.id} put in slot {ws} "
                         f"(page {ws // SLOTS_PER_PAGE}); expected {expect}")
    return Violation("wrong-bytes", op, f"{where} read bytes no write ever wrote there; expected {expect}")
