"""NBD clients that write and read one export the way a swapping kernel would, recording a History.

Several libnbd handles (one per worker thread) and several commands in flight
on each (aio), so two writes of one page, or a write and a read of it, are in
flight together: within a handle as two half-page writes issued at once,
across handles on a small set of hot pages every worker uses.
"""
from __future__ import annotations

import random
import struct
import threading
import time

from pages import page as corpus_page

from .env import import_nbd
from .history import PAGE, SLOT, History, Op, digests

# what a page holds: real memory pages (compress ~3x), random bytes (do not compress),
# one 8-byte pattern (zcache keeps those without a frame), zeros
KINDS = ("text", "random", "same", "zero")
KIND_WEIGHTS = (55, 30, 12, 3)
BATCH_TIMEOUT = 12.0  # a request is hung after this long: no fault here lasts that long
TIME_BOUND = 150.0  # seconds a Workload may issue requests: a node that hangs must not hang the suite


class OutOfTime(AssertionError):
    """The workload's time bound passed: something hangs, or the machine is far too slow."""


def make_bytes(kind: str, tag: int, length: int) -> bytes:
    """`length` bytes (whole slots) of a kind, unique to `tag` (except zeros): each slot starts
    with the tag, so a slot read back says which write (and which slot of it) it came from."""
    if kind == "zero":
        return bytes(length)
    if kind == "same":
        return struct.pack("<Q", (tag << 1) | 1) * (length // 8)
    if kind == "random":
        return random.Random(tag).randbytes(length)
    out = bytearray()
    for s in range(length // SLOT):
        base = corpus_page(tag + s)
        half = s % 2
        out += struct.pack("<QQ", tag, s) + base[half * SLOT + 16:(half + 1) * SLOT]
    return bytes(out)


class Client:
    """One libnbd handle that runs batches of commands at once and reconnects when its
    connection dies (a restarted node)."""

    def __init__(self, uri: str, history: History, name: str, connect_timeout: float = 20.0,
                 deadline: float = float("inf")):
        self.nbd = import_nbd()
        self.deadline = deadline
        self.uri = uri
        self.history = history
        self.name = name
        self.connect_timeout = connect_timeout
        self.h = None
        self.size = 0

    def connect(self, deadline: float | None = None) -> None:
        deadline = deadline or time.monotonic() + self.connect_timeout
        last = None
        while True:
            h = self.nbd.NBD()
            try:
                h.connect_uri(self.uri)
                self.h, self.size = h, h.get_size()
                return
            except self.nbd.Error as e:
                last = e
                del h  # the last reference: libnbd closes the handle
            if time.monotonic() > deadline:
                raise ConnectionError(f"{self.name}: cannot connect to {self.uri}: {last}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.h is not None:
            try:
                self.h.shutdown()
            except self.nbd.Error:
                pass
            self.h = None

    def abandon(self) -> None:
        """Drop a handle whose commands hang, without waiting for them."""
        self.h = None  # the handle closes with its last reference

    def batch(self, reqs: list[tuple], timeout: float = BATCH_TIMEOUT) -> list[Op]:
        """Issue every request of `reqs` at once and wait for all replies.
        A request is ("w", offset, data, label) or ("r", offset, length, label)."""
        nbd = self.nbd
        if time.monotonic() > self.deadline:
            raise OutOfTime(f"{self.name}: the workload ran past its time bound")
        if self.h is None:
            self.connect()
        h = self.h
        pending: dict[int, tuple[Op, object]] = {}
        ops = []
        for kind, offset, arg, label in reqs:
            if kind == "w":
                op = self.history.begin("w", offset, len(arg), self.name, label, digests(arg))
                buf = nbd.Buffer.from_bytearray(bytearray(arg))
            else:
                op = self.history.begin("r", offset, arg, self.name, label)
                buf = nbd.Buffer(arg)
            ops.append(op)
            try:
                cookie = h.aio_pwrite(buf, offset) if kind == "w" else h.aio_pread(buf, offset)
            except nbd.Error as e:
                History.failed(op, e.errno or "ENOTCONN", e.string)
                continue
            pending[cookie] = (op, buf)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                for op, _ in pending.values():
                    History.hung(op, timeout)
                self.abandon()
                return ops
            try:
                h.poll(100)
            except nbd.Error as e:
                for op, _ in pending.values():
                    History.failed(op, "ENOTCONN", f"connection lost: {e.string}")
                self.abandon()
                return ops
            for cookie in list(pending):
                op, buf = pending[cookie]
                try:
                    done = h.aio_command_completed(cookie)
                except nbd.Error as e:
                    History.failed(op, e.errno or "ENOTCONN", e.string)
                    del pending[cookie]
                    continue
                if done:
                    History.ok(op, buf.to_bytearray() if op.kind == "r" else None)
                    del pending[cookie]
        if h.aio_is_dead() or h.aio_is_closed():
            self.abandon()
        return ops


class Workload:
    """Page contents and operation mixes for one export of `npages` pages, from a seed."""

    def __init__(self, uri: str, npages: int, seed: int, history: History | None = None,
                 hot_pages: int = 32, kinds=KIND_WEIGHTS, time_bound: float = TIME_BOUND):
        self.uri = uri
        self.deadline = time.monotonic() + time_bound
        self.npages = npages
        self.seed = seed
        self.history = history or History()
        self.hot = min(hot_pages, npages)
        self.kind_weights = kinds
        self._tags = 0
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []

    def client(self, name: str) -> Client:
        return Client(self.uri, self.history, name, deadline=self.deadline)

    def tag(self) -> int:
        with self._lock:
            self._tags += 1
            return self._tags

    def data(self, rnd: random.Random, length: int, kind: str | None = None) -> bytes:
        """Content of whole pages or a half page; each page of a multi-page write picks its own kind."""
        out = bytearray()
        step = min(length, PAGE)
        for _ in range(length // step):
            k = kind or rnd.choices(KINDS, self.kind_weights)[0]
            out += make_bytes(k, (self.seed << 40) | self.tag(), step)
        return bytes(out)

    # ---- phases -----------------------------------------------------------------------------------

    def fill(self, pages: range | None = None, per_write: int = 16, depth: int = 8, name: str = "fill") -> list[Op]:
        """Write every page once, in order (as a swap-out storm would)."""
        pages = pages or range(self.npages)
        rnd = random.Random(self.seed * 7919 + 1)
        c = self.client(name)
        ops = []
        try:
            reqs = []
            for p in range(pages.start, pages.stop, per_write):
                n = min(per_write, pages.stop - p)
                reqs.append(("w", p * PAGE, self.data(rnd, n * PAGE), name))
                if len(reqs) == depth:
                    ops += c.batch(reqs)
                    reqs = []
            if reqs:
                ops += c.batch(reqs)
        finally:
            c.close()
        return ops

    def verify(self, pages: range | None = None, per_read: int = 64, depth: int = 4,
               name: str = "verify") -> list[Op]:
        """Read every page; a chunk that fails is read again page by page, to say which."""
        pages = pages or range(self.npages)
        c = self.client(name)
        ops = []
        try:
            chunks = [(p, min(per_read, pages.stop - p)) for p in range(pages.start, pages.stop, per_read)]
            for i in range(0, len(chunks), depth):
                group = chunks[i:i + depth]
                got = c.batch([("r", p * PAGE, n * PAGE, name) for p, n in group])
                ops += got
                for op, (p, n) in zip(got, group):
                    if op.status != "ok":
                        for q in range(p, p + n, depth * 4):
                            ops += c.batch([("r", x * PAGE, PAGE, name + "-page")
                                            for x in range(q, min(q + depth * 4, p + n))])
        finally:
            c.close()
        return ops

    def run(self, workers: int, stop: threading.Event, deadline: float) -> list[threading.Thread]:
        """Start `workers` threads of random operations; they end when `stop` is set or at `deadline`."""
        threads = []
        for w in range(workers):
            t = threading.Thread(target=self._worker, args=(w, stop, deadline), name=f"worker-{w}", daemon=True)
            t.start()
            threads.append(t)
        return threads

    def _pick(self, rnd: random.Random) -> int:
        return rnd.randrange(self.hot) if rnd.random() < 0.35 else rnd.randrange(self.npages)

    def _worker(self, w: int, stop: threading.Event, deadline: float) -> None:
        rnd = random.Random(self.seed * 1_000_003 + w)
        c = self.client(f"worker-{w}")
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    c.batch(self.batch(rnd))
                except OutOfTime:
                    break  # the schedule reports its own time bound
                except ConnectionError:
                    if stop.is_set() or time.monotonic() >= deadline:
                        break
                    raise
        except BaseException as e:  # reported by the test
            self.errors.append(e)
        finally:
            c.close()

    def batch(self, rnd: random.Random) -> list[tuple]:
        """One batch of requests issued together."""
        r = rnd.random()
        if r < 0.25:
            # both halves of one page at once: two read-modify-writes of one page in flight
            p = self._pick(rnd)
            first, second = self.data(rnd, SLOT), self.data(rnd, SLOT)
            reqs = [("w", p * PAGE, first, "half-pair"), ("w", p * PAGE + SLOT, second, "half-pair")]
            if rnd.random() < 0.3:
                reqs.append(("r", p * PAGE, PAGE, "read-in-pair"))
            rnd.shuffle(reqs)
            return reqs
        reqs = []
        for _ in range(rnd.randint(1, 4)):
            p = self._pick(rnd)
            x = rnd.random()
            if x < 0.30:
                reqs.append(("w", p * PAGE, self.data(rnd, PAGE), "page"))
            elif x < 0.52:
                half = rnd.randrange(2)
                reqs.append(("w", p * PAGE + half * SLOT, self.data(rnd, SLOT), "half"))
            elif x < 0.60:
                n = min(rnd.randint(2, 4), self.npages - p)
                reqs.append(("w", p * PAGE, self.data(rnd, n * PAGE), "pages"))
            elif x < 0.82:
                reqs.append(("r", p * PAGE, PAGE, "page"))
            elif x < 0.92:
                reqs.append(("r", p * PAGE + rnd.randrange(2) * SLOT, SLOT, "half"))
            else:
                n = min(rnd.randint(2, 8), self.npages - p)
                reqs.append(("r", p * PAGE, n * PAGE, "pages"))
        return reqs
