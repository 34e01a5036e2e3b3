"""The stores `ramster bench density` measures: ramster nodes with each allocator and feature, zram, nbdkit.

Each is a target of nbd_targets.py (start, seqwrite, snapshot, stop) with a
settle() step between the write and the measurement: for the +recompress
variants, every page is marked idle and recompressed first (ramster through
`ramster ctl`, zram through its sysfs files). A variant whose feature this
ramster or this kernel lacks is named by why_unavailable(), never run.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..units import PAGE_SIZE
from . import common, runners
from .nbd_targets import NbdkitTarget, RamsterTarget, ZramTarget

# name -> (node flags, recompress before measuring)
RAMSTER = {
    "ramster-zbud": ([], False),
    "ramster-zbud+recompress": ([], True),
    "ramster-dense": (["--allocator", "dense"], False),
    "ramster-dense+recompress": (["--allocator", "dense"], True),
    "ramster-dense+dedup": (["--allocator", "dense", "--dedup"], False),
}
TARGETS = (*RAMSTER, "zram-lz4", "zram-lz4+zstd", "nbdkit-zstd")
RECOMPRESS_TIMEOUT = 600


class RamsterVariant(RamsterTarget):
    """A ramster node with extra flags; memory = the image, so every variant keeps what it can."""

    def __init__(self, name: str, flags: list[str], recompress: bool, *a):
        super().__init__(*a)
        self.name, self.flags, self.recompress = name, flags, recompress
        short = f"r{list(RAMSTER).index(name)}"  # a Unix socket's path is at most 107 bytes
        self.sock = self.tmp / f"{short}.sock"
        self.log = self.tmp / f"{short}.log"
        self.backing = self.tmp / f"{short}.backing"
        self.control = self.tmp / f"{short}.ctl"

    def command(self, size: int) -> list[str]:
        return super().command(size) + self.flags + ["--control", str(self.control)]

    def describe(self) -> str:
        return super().describe() + (" " + " ".join(self.flags) if self.flags else "") + \
            (" + ctl mark-idle, ctl recompress" if self.recompress else "")

    def settle(self) -> dict:
        if not self.recompress:
            return {}
        return _recompress_node(self)

    def _settle_tiny(self) -> None:
        """The tiny node goes through the same steps, so the second codec's own state (its
        library, its contexts) is in the baseline and only what the pages cost is counted."""
        if self.recompress:
            _recompress_node(self)

    def snapshot(self) -> dict:
        st = common.wait_quiet_heap(f"http://127.0.0.1:{self.port}/stats", self.proc)
        rss = common.rss_bytes(self.proc.pid)
        backing = common.allocated_bytes(self.backing)
        c = st["counters"]
        used = rss - self.baseline_rss + backing
        # every frame of the arena: the allocator's, huge pages' and the cold log's
        frames = c.get("zcache.pageframes_alloced", 0) - c.get("zcache.pageframes_freed", 0)
        keep = ("zcache.pers_zpages", "zcache.pers_zbytes", "zcache.pers_pageframes", "zcache.huge_pages",
                "zcache.same_filled_pages", "zcache.zero_filled_pages", "zcache.writtenback_pages")
        return {"memory_bytes": used, "memory_per_original_byte": used / self.size, "rss_bytes": rss,
                "baseline_rss_bytes": self.baseline_rss, "backing_file_bytes": backing,
                "frames_bytes": frames * PAGE_SIZE,
                "memory_source": "node VmRSS once it trimmed its heap, minus that of the same node holding 64 KiB "
                                 "(same steps), + backing file bytes",
                "counters": {k: v for k, v in c.items()
                             if k in keep or k.startswith(("dense.", "zcache.dedup", "zcache.recomp"))}}


def _ctl(t: RamsterVariant, *verb: str) -> dict:
    r = common.run([sys.executable, "-m", "ramster.cli", "ctl", "--control", str(t.control), "--json", *verb],
                   timeout=RECOMPRESS_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError(f"ramster ctl {' '.join(verb)} failed: {(r.stderr.strip() or r.stdout.strip())[-300:]}")
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"output": r.stdout.strip()}


def _recompress_node(t: RamsterVariant) -> dict:
    """Mark every page idle, then ask for recompression until a pass finds nothing more to do.

    The verb runs a pass on the node's loop and answers when it ends; /stats
    then says what the passes did (recompressed + skipped = pages looked at)."""
    _ctl(t, "mark-idle")
    t0 = time.monotonic()
    calls = pages = 0
    while True:
        calls += 1
        n = _ctl(t, "recompress").get("result", {}).get("pages", 0)
        pages += n
        if n == 0 or calls >= 100:
            break
    c = common.get_json(f"http://127.0.0.1:{t.port}/stats", t.proc)["counters"]
    return {"recompress_seconds": time.monotonic() - t0, "ctl_calls": calls, "recompressed_pages": pages,
            "counters": {k: c[k] for k in RECOMPRESS_COUNTERS if k in c}}


RECOMPRESS_COUNTERS = ("zcache.recompressed", "zcache.recompress_skipped", "zcache.recompress_saved_bytes")


class ZramVariant(ZramTarget):
    def __init__(self, name: str, recompress: bool, *a):
        super().__init__(*a)
        self.name, self.recompress = name, recompress

    def start(self) -> None:
        self.dev = runners.ZramDevice(self.size, "lz4", recompress="zstd" if self.recompress else None)

    def describe(self) -> str:
        return super().describe() + (", recomp_algorithm zstd, idle pages recompressed" if self.recompress else "")

    def settle(self) -> dict:
        if not self.recompress:
            return {}
        t0 = time.monotonic()
        (self.dev.sysdir / "idle").write_text("all")
        (self.dev.sysdir / "recompress").write_text("type=idle")  # returns when it is done
        return {"recompress_seconds": time.monotonic() - t0}


class NbdkitVariant(NbdkitTarget):
    def settle(self) -> dict:
        return {}


def node_features() -> dict[str, bool]:
    """Which of the variants' flags and verbs this ramster has."""
    node = common.run([sys.executable, "-m", "ramster.cli", "node", "--help"], timeout=60).stdout
    ctl = common.run([sys.executable, "-m", "ramster.cli", "ctl", "--help"], timeout=60).stdout
    return {"--allocator": "--allocator" in node, "--dedup": "--dedup" in node,
            "ctl recompress": "recompress" in ctl.split("options:")[0]}


def why_unavailable(name: str, features: dict[str, bool]) -> str | None:
    if name in RAMSTER:
        flags, recompress = RAMSTER[name]
        missing = [f for f in flags if f.startswith("--") and not features[f]]
        if recompress and not features["ctl recompress"]:
            missing.append("ctl recompress")
        return f"not available: this ramster has no {', '.join(missing)}" if missing else None
    if name.startswith("zram"):
        why = runners.zram_unavailable()
        if why:
            return f"not available: {why}"
        if name == "zram-lz4+zstd":
            return runners.zram_recompress_unavailable("zstd")
    return None


def make(name: str, tmp: Path, procs: common.Procs, cpus: dict, size: int):
    if name in RAMSTER:
        flags, recompress = RAMSTER[name]
        return RamsterVariant(name, flags, recompress, size, tmp, procs, cpus, size)
    if name.startswith("zram"):
        return ZramVariant(name, name.endswith("+zstd"), tmp, procs, cpus, size)
    return NbdkitVariant("zstd", tmp, procs, cpus, size)
