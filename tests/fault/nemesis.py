"""Nemeses: the faults a schedule injects, each with how it starts and how it heals.

A fault's `apply` breaks something; after `duration` seconds (the fault's
length, the one wall-clock wait here) `heal` repairs it, and the nemesis then
waits (on the nodes' /stats, with a deadline) for the cluster to reconnect.
The windows during which a fault was in force are kept, so that a checker can
tell what the fault could excuse (a full disk excuses ENOSPC, nothing excuses
wrong bytes).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .cluster import Cluster
from .disk import SmallDisk
from .history import History

RECONNECT_TIMEOUT = 12.0
REPAIR_TIMEOUT = 8.0  # for pages placed with fewer copies during a fault to get them back
# after a heal, reconnecting, repairing copies and draining queued requests take a moment:
# write failures for want of room are excused that much longer
GRACE = 2.0


@dataclass
class Fault:
    kind: str
    target: str  # a node ("b") or a link ("a-b")
    at: float  # seconds after the chaos starts (the first fault) or after the previous one healed
    duration: float = 0.0
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        p = "".join(f" {k}={v}" for k, v in self.params.items())
        return f"{self.kind} {self.target} at +{self.at:.2f}s for {self.duration:.2f}s{p}"

    @property
    def transient(self) -> bool:
        """A fault after which every copy of every page still exists."""
        # a full disk leaves pages remotified meanwhile without their copy on it
        return self.kind not in ("kill", "kill-stay-down", "stop-restart", "mismatch", "disk-full")


class Nemesis:
    """Runs a list of faults, one after another, in a thread."""

    def __init__(self, cluster: Cluster, history: History, faults: list[Fault], disk: SmallDisk | None = None):
        self.cluster = cluster
        self.history = history
        self.faults = faults
        self.disk = disk
        self.windows: list[tuple[float, float, Fault]] = []  # (start, healed and reconnected, fault)
        self.errors: list[str] = []
        self.skipped: list[Fault] = []
        self.done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, t0: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(t0,), name="nemesis", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def in_window(self, t0: float, t1: float, kinds: tuple[str, ...] | None = None) -> bool:
        """Whether [t0, t1] overlaps the window of a fault (of one of `kinds`), grace included."""
        for start, end, f in self.windows:
            if (kinds is None or f.kind in kinds) and t0 <= end + GRACE and t1 >= start:
                return True
        return False

    def _note(self, what: str) -> None:
        self.history.event(what)

    def _run(self, t0: float) -> None:
        base = t0
        try:
            for f in self.faults:
                _sleep_until(base + f.at)
                start = time.monotonic()
                self._note(f"start: {f.describe()}")
                heal = self.apply(f)
                _sleep_until(start + f.duration)
                heal()
                self._note(f"healed: {f.kind} {f.target}")
                self.windows.append((start, float("inf"), f))
                try:
                    self.cluster.wait_connected(RECONNECT_TIMEOUT)
                except AssertionError as e:
                    self.errors.append(f"after {f.describe()}: {e}")
                    return
                finally:
                    self.windows[-1] = (start, time.monotonic(), f)
                self._note(f"reconnected after {f.kind} {f.target}")
                if f is not self.faults[-1] and not self._redundant():
                    # the next fault would be a second one at once: pages placed during this one
                    # may have fewer copies than replicas until they are repaired
                    self.skipped = self.faults[self.faults.index(f) + 1:]
                    self._note(f"not injecting {len(self.skipped)} more fault(s): copies not repaired in time")
                    return
                base = time.monotonic()
        except Exception as e:  # reported by the test
            self.errors.append(f"nemesis failed: {e!r}")
        finally:
            self.done.set()

    def _redundant(self, timeout: float = REPAIR_TIMEOUT) -> bool:
        """Wait until node a has no page short of its copies (ramster.remote_pages_short)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                short = self.cluster["a"].counters().get("ramster.remote_pages_short", 0)
            except OSError:
                short = -1
            if short == 0:
                self._note("every page has its copies again")
                return True
            if time.monotonic() > deadline:
                self._note(f"{short} page(s) still short of copies")
                return False
            time.sleep(0.05)

    # ---- the faults ---------------------------------------------------------------------------------

    def apply(self, f: Fault):
        """Start fault `f`; returns its heal()."""
        cl = self.cluster
        k = f.kind
        if k in ("kill", "kill-stay-down"):
            node = cl[f.target]
            node.kill()
            if k == "kill-stay-down":
                return lambda: None
            return lambda: self._restart(f.target)
        if k == "stop-restart":
            # SIGTERM: node a first writes every page of its export to the swap disk
            cl[f.target].terminate(timeout=30)
            return lambda: self._restart(f.target)
        if k == "mismatch":
            node = cl[f.target]
            node.terminate()
            node.start(compressor=f.params["compressor"])
            node.wait_ready(time.monotonic() + 30)

            def heal() -> None:
                node.terminate()
                self._restart(f.target)
            return heal
        if k == "pause":
            node = cl[f.target]
            node.pause()
            return node.resume
        link = cl.link(*f.target.split("-")) if "-" in f.target else None
        if k == "link-cut":
            link.cut(after=f.params["after"], direction=f.params["direction"], scope=f.params["scope"])
            if f.params["scope"] == "next":
                link.cut(after=0)  # the live connection goes now; the next one is cut at `after`
            return lambda: None
        if k == "link-flap":
            stop = threading.Event()

            def flap() -> None:
                while not stop.wait(f.params["every"]):
                    link.cut(after=f.params["after"], direction="both", scope="next")
                    link.cut(after=0)
            t = threading.Thread(target=flap, daemon=True)
            t.start()

            def heal() -> None:
                stop.set()
                t.join(5)
                link.heal()
            return heal
        if k == "link-delay":
            link.delay(f.params["delay"])
            return link.heal
        if k == "blackhole":
            link.blackhole(f.params["direction"])
            return link.heal
        if k == "partition":
            link.partition(f.params["new"])
            return link.heal
        if k == "isolate":
            links = [p for pair, p in cl.links.items() if f.target in pair]
            for p in links:
                p.partition(f.params["new"])

            def heal() -> None:
                for p in links:
                    p.heal()
            return heal
        if k == "disk-full":
            taken = self.disk.fill()
            self._note(f"disk full: ballast of {taken >> 10} KiB")
            return self.disk.unfill
        raise ValueError(f"unknown fault {k!r}")

    def _restart(self, name: str) -> None:
        node = self.cluster[name]
        node.terminate()
        node.start()
        node.wait_ready(time.monotonic() + 30)


def _sleep_until(t: float) -> None:
    # the fault's own length: waiting for wall-clock time is the fault, not synchronisation
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)
