"""Random schedules: from one seed, a cluster, a workload and a fault (or a short sequence of them).

A schedule is a pure function of its seed (make_schedule), so a failure
replays with RAMSTER_FAULT_SEED=<seed>; what the operating system's timing
does with it may differ between runs, the schedule itself does not.

Two configurations, chosen by the seed's parity, each with what it promises
(issue 8's acceptance):

- "r1-disk": replicas = 1 and a backing file (on a tmpfs of its own) behind
  node a's swap export, to which remotified pages are written through: any
  single peer fault gives 0 EIO;
- "r2": replicas = 2 and no backing file: any single fault, pauses
  included, gives 0 EIO.

Node a has little memory (8M), so about half of its export lives on b and c.

What each node stores its pages with is a third choice, by the seed modulo 3
(so 6 consecutive seeds cover every pair with a configuration): the seed's
zbud alone; the dense allocator, dedup and background recompression on every
node; or a mix (a: dense + dedup, b: recompression, c: dense +
recompression), since those are each node's own settings and peers must
work whatever the others chose.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import Cluster, NodeDef
from .disk import SmallDisk
from .history import History, Report, check
from .nemesis import REPAIR_TIMEOUT, Fault, Nemesis
from .workload import Workload

CONFIGS = ("r1-disk", "r2")
DENSE_ALL = ["--allocator", "dense", "--dedup", "--recompress-cpu", "0.3"]
STORES = {  # name -> flags of nodes a, b, c
    "zbud": ([], [], []),
    "dense-dedup-recompress": (DENSE_ALL, DENSE_ALL, DENSE_ALL),
    "mixed": (["--allocator", "dense", "--dedup"], ["--recompress-cpu", "0.3"],
              ["--allocator", "dense", "--recompress-cpu", "0.3"]),
}
NPAGES = 8192  # a 32 MiB export on a node with 8 MiB of memory
WORKERS = 3
CHAOS_MIN = 3.0  # seconds of workload at least
AFTER_HEAL = 1.0  # seconds of workload after the last fault healed
REMOTE_BEFORE_CHAOS = 512  # pages on peers before the chaos starts
SCHEDULE_LIMIT = 60.0  # seconds a schedule may take in all before it counts as hung (typical: 8-12)


@dataclass
class Schedule:
    seed: int
    config: str
    faults: list[Fault]
    npages: int = NPAGES
    workers: int = WORKERS

    @property
    def replicas(self) -> int:
        return 1 if self.config == "r1-disk" else 2

    @property
    def backing(self) -> bool:
        return self.config == "r1-disk"

    @property
    def store(self) -> str:
        return tuple(STORES)[self.seed % len(STORES)]

    def id(self) -> str:
        kinds = "+".join(f.kind + (f"-{f.target}" if f.target != "disk" else "") for f in self.faults)
        return f"seed{self.seed}-{self.config}-{self.store}-{kinds}"

    def describe(self) -> str:
        lines = [f"seed {self.seed}: {self.config} (replicas={self.replicas}, "
                 f"backing file={'yes' if self.backing else 'no'}), {self.npages} pages, {self.workers} workers, "
                 f"stores: {self.store} ({'; '.join(' '.join(f) or 'defaults' for f in STORES[self.store])})"]
        lines += [f"  fault {i + 1}: {f.describe()}" for i, f in enumerate(self.faults)]
        return "\n".join(lines)


# Every kind of fault is a single fault: one node, one link, or the disk. Consecutive seeds of a
# configuration take the kinds in this order (the parameters are random), so the seeds CI runs
# cover the most telling kinds first, and any 2 x len(kinds) consecutive seeds cover them all.
ROTATION = {
    "r2": ["pause-long", "kill", "pause-short", "blackhole", "pause-medium", "partition", "stop-restart",
           "isolate", "pause-a", "link-cut", "mismatch", "link-delay", "kill-stay-down", "link-flap"],
    "r1-disk": ["disk-full", "kill", "pause-long", "blackhole", "restart-a", "partition", "pause-short",
                "isolate", "mismatch", "link-cut", "kill-stay-down", "pause-medium", "link-delay",
                "stop-restart", "link-flap", "pause-a"],
}
_PEER_LINKS = ("a-b", "a-c")
_PAUSES = {"pause-short": (0.2, 0.7), "pause-medium": (1.2, 1.8), "pause-long": (2.4, 3.4)}


def _fault(rnd: random.Random, kind: str, at: float, exclude: set[str]) -> Fault:
    peers = [p for p in ("b", "c") if p not in exclude] or ["b", "c"]
    links = [lk for lk in _PEER_LINKS if lk[-1] not in exclude] or list(_PEER_LINKS)
    if kind in _PAUSES or kind == "pause-a":
        # shorter than the request timeout (1 s), between it and the idle timeout (2 s), or longer
        length = kind.split("-")[1] if kind in _PAUSES else rnd.choice(("short", "medium", "long"))
        lo, hi = _PAUSES[f"pause-{length}"]
        return Fault("pause", "a" if kind == "pause-a" else rnd.choice(peers), at, rnd.uniform(lo, hi),
                     {"length": length})
    if kind in ("kill", "stop-restart"):
        return Fault(kind, rnd.choice(peers), at, rnd.uniform(0.3, 2.0))
    if kind == "kill-stay-down":
        return Fault(kind, rnd.choice(peers), at, 0.0)
    if kind == "restart-a":
        # a clean stop of the node that owns the export: its swap disk takes every page first
        return Fault("stop-restart", "a", at, rnd.uniform(0.0, 0.5))
    if kind == "mismatch":
        return Fault(kind, rnd.choice(peers), at, rnd.uniform(1.0, 2.5),
                     {"compressor": rnd.choice(("zstd", "lzo", "zlib"))})
    if kind == "link-cut":
        return Fault(kind, rnd.choice(links), at, 0.0,
                     {"after": rnd.choice((0, 1, 16, 40, 100, 200, 1000, 5000, 70000)),
                      "direction": rnd.choice(("c2s", "s2c", "both")), "scope": rnd.choice(("now", "next"))})
    if kind == "link-flap":
        return Fault(kind, rnd.choice(links), at, rnd.uniform(1.0, 2.5),
                     {"every": round(rnd.uniform(0.2, 0.6), 2), "after": rnd.choice((0, 30, 120, 4000))})
    if kind == "link-delay":
        # below the request timeout, and (1.5 s) beyond it: a slow peer is a missing one
        return Fault(kind, rnd.choice(links), at, rnd.uniform(1.0, 3.0),
                     {"delay": rnd.choice((0.05, 0.2, 0.6, 1.5))})
    if kind == "blackhole":
        return Fault(kind, rnd.choice(links), at, rnd.choice((rnd.uniform(0.3, 1.5), rnd.uniform(2.4, 3.4))),
                     {"direction": rnd.choice(("c2s", "s2c"))})
    if kind == "partition":
        return Fault(kind, rnd.choice(links), at, rnd.choice((rnd.uniform(0.3, 1.5), rnd.uniform(2.4, 3.4))),
                     {"new": rnd.choice(("refuse", "stall"))})
    if kind == "isolate":
        return Fault(kind, rnd.choice(peers), at, rnd.uniform(0.5, 3.4), {"new": rnd.choice(("refuse", "stall"))})
    if kind == "disk-full":
        return Fault(kind, "disk", at, rnd.uniform(1.0, 3.0))
    raise AssertionError(kind)


def make_schedule(seed: int) -> Schedule:
    rnd = random.Random(seed)
    config = CONFIGS[seed % 2]
    kinds = ROTATION[config]
    first = _fault(rnd, kinds[(seed - 1) // 2 % len(kinds)], rnd.uniform(0.2, 1.5), set())
    faults = [first]
    # a second fault only after one that left every copy in place, on another node or link:
    # each is then a single fault while it lasts
    if first.transient and rnd.random() < 0.3:
        hit = {first.target, first.target[-1]}
        faults.append(_fault(rnd, rnd.choice(kinds), rnd.uniform(0.2, 1.0), hit))
    return Schedule(seed, config, faults)


@dataclass
class Outcome:
    schedule: Schedule
    report: Report
    history: History
    problems: list[str] = field(default_factory=list)  # not per operation: hangs, tracebacks, counters
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems


def build_cluster(schedule: Schedule, root: Path) -> tuple[Cluster, SmallDisk | None]:
    disk = None
    a_export = f"swap:swap:{schedule.npages * 4}K"
    if schedule.backing:
        disk = SmallDisk(root / "disk", size="40m")
        a_export += f":{disk.path / 'a.swap'}"
    fa, fb, fc = STORES[schedule.store]
    nodes = [NodeDef("a", 0, "8M", [a_export], args=list(fa)),
             NodeDef("b", 1, "64M", ["swap:swap:1M"], args=list(fb)),
             NodeDef("c", 2, "64M", ["swap:swap:1M"], args=list(fc))]
    try:
        return Cluster(root, nodes, replicas=schedule.replicas), disk
    except BaseException:
        if disk is not None:
            disk.close()
        raise


def _wait_remote(node, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        remote = node.counters().get("ramster.remote_pers_pages", 0)
        if remote >= at_least or time.monotonic() > deadline:
            return remote
        time.sleep(0.05)


def run_schedule(schedule: Schedule, root: Path) -> Outcome:
    t_begin = time.monotonic()
    cluster, disk = build_cluster(schedule, root)
    history = History()
    report = Report()
    problems: list[str] = []
    timings: dict = {}
    notes: list[str] = []
    try:
        cluster.start()
        cluster.wait_connected()
        timings["start"] = time.monotonic() - t_begin
        a = cluster["a"]
        wl = Workload(a.uri("swap"), schedule.npages, schedule.seed, history,
                      time_bound=SCHEDULE_LIMIT - (time.monotonic() - t_begin))
        history.event("fill begins")
        wl.fill()
        # with a swap disk, pages go to peers by the remotify worker's next pass, not at once
        remote = _wait_remote(a, REMOTE_BEFORE_CHAOS, 5.0)
        notes.append(f"after the fill: {remote} of {schedule.npages} pages on peers")
        if remote < REMOTE_BEFORE_CHAOS:
            problems.append(f"only {remote} pages moved to peers within 5 s of the fill: the faults test nothing")
        timings["fill"] = time.monotonic() - t_begin - timings["start"]

        nemesis = Nemesis(cluster, history, schedule.faults, disk)
        stop = threading.Event()
        t0 = time.monotonic()
        history.event("chaos begins")
        workers = wl.run(schedule.workers, stop, deadline=wl.deadline)
        nemesis.start(t0)
        nemesis.done.wait(max(0.0, wl.deadline - time.monotonic()))
        if not nemesis.done.is_set():
            problems.append("the nemesis did not finish in time (a node did not restart?)")
        t_end = max(t0 + CHAOS_MIN, time.monotonic() + AFTER_HEAL)
        while time.monotonic() < t_end and not stop.is_set():
            time.sleep(0.05)
        stop.set()
        for t in workers:
            t.join(20)
            if t.is_alive():
                problems.append(f"{t.name} did not stop: a request hangs")
        problems += nemesis.errors
        if nemesis.skipped:
            notes.append(f"fault(s) not injected, since copies were not repaired within "
                         f"{REPAIR_TIMEOUT:g} s of the previous one: " + "; ".join(f.describe() for f in nemesis.skipped))
        problems += [f"workload: {e!r}" for e in wl.errors]
        timings["chaos"] = time.monotonic() - t0
        try:
            cluster.wait_connected(10)
        except AssertionError as e:
            problems.append(str(e))
        t1 = time.monotonic()
        history.event("verify begins")
        wl.verify()
        timings["verify"] = time.monotonic() - t1

        def enospc_ok(op) -> bool:
            # memory, peers and disk were not all full outside a fault: only a fault excuses it
            return nemesis.in_window(op.start, op.end)

        report = check(history, enospc_ok=enospc_ok)
        try:
            c = a.counters()
            lost = c.get("ramster.remote_pers_pages_lost", 0)
            if lost:
                problems.append(f"ramster.remote_pers_pages_lost = {lost} after a single fault: a copy of every "
                                f"page still existed (on the other replica or the swap disk)")
            notes.append(f"after the run: {c.get('ramster.remote_pers_pages', 0)} pages on peers, "
                         f"{c.get('ramster.remote_pages_short', 0)} short of copies")
            # what a counts on each peer holding against what the peer holds (flushes lost in a fault leak)
            held = {p["name"]: p["pages_held"] for p in a.stats()["peers"]}
            for n in ("b", "c"):
                if cluster[n].alive():
                    notes.append(f"{n}: a counts {held.get(n)} copies there, it holds "
                                 f"{cluster[n].counters().get('ramster.foreign_pers_pages')}")
        except OSError as e:
            problems.append(f"node a's /stats did not answer: {e}")
    finally:
        cluster.stop()
        if disk is not None:
            disk.close()
    for name, text in cluster.tracebacks().items():
        problems.append(f"node {name} logged a traceback:\n{text}")
    timings["total"] = time.monotonic() - t_begin
    return Outcome(schedule, report, history, problems, timings, notes)


def failure_text(out: Outcome) -> str:
    s = out.schedule
    t0 = out.history.t0
    lines = [f"schedule {s.id()} failed; replay with: RAMSTER_FAULT_SEED={s.seed} pytest tests/fault -k seed{s.seed}-",
             s.describe(), "result: " + out.report.summary()]
    lines += [f"  {n}" for n in out.notes]
    lines += [f"  {t - t0:7.3f} s  {what}" for t, what in out.history.events]
    if out.report.violations:
        lines.append(out.report.details(t0))
    lines += out.problems
    lines.append("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in out.timings.items()))
    return "\n".join(lines)
