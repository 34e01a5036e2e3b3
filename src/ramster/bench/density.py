"""`ramster bench density`: memory per original byte of ramster's allocators and features, zram and nbdkit.

One run, the same pages for every target. Two images (density_pages.py):
held-out corpus pages, and the memory of several forked workers of one
Python program (the duplicate-heavy case). Each target gets each image
written through the transport `ramster bench nbd` uses (nbdcopy over a Unix
socket; dd with O_DIRECT for zram, which has no server), then what it holds
is measured:

- a ramster node (ramster-zbud, -zbud+recompress, -dense, -dense+recompress,
  -dense+dedup):
  its VmRSS minus that of the same node, same flags, serving a 64 KiB export,
  plus its backing file's allocated bytes (nbd_targets.RamsterTarget). For
  +recompress, every page is marked idle and `ramster ctl recompress` run
  first (`ramster ctl mark-idle`, then `ramster ctl recompress` until a pass
  finds nothing more), and /stats read for what it did; its 64 KiB node
  went through the same steps;
- zram-lz4 and zram-lz4+zstd (recompression of idle pages with zstd, where
  the kernel's zram has recomp_algorithm): mm_stat mem_used_total;
- nbdkit-zstd (`nbdkit memory allocator=zstd`): VmRSS minus its 64 KiB self.

A target whose feature is missing (a node flag or ctl verb not in this
ramster, a zram without recompression, no root for zram) is a row saying
"not available" and why; nothing stands in for it.

Put/get rates (density_rates.py) are measured in this process, pinned to the
server CPU, as ratios to the lz4 floor timed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..units import PAGE_SIZE
from . import common, density_pages, density_rates, runners
from .common import ToolError, fmt
from .corpus import corpus_files
from .nbd_targets import NbdkitTarget, RamsterTarget, ZramTarget

WORKLOADS = ("held-out", "workers")
# name -> (node flags, recompress before measuring)
RAMSTER = {
    "ramster-zbud": ([], False),
    "ramster-zbud+recompress": ([], True),
    "ramster-dense": (["--allocator", "dense"], False),
    "ramster-dense+recompress": (["--allocator", "dense"], True),
    "ramster-dense+dedup": (["--allocator", "dense", "--dedup"], False),
}
TARGETS = (*RAMSTER, "zram-lz4", "zram-lz4+zstd", "nbdkit-zstd")
DEFAULT_HELD_OUT = 32 << 20  # every set-aside page of shared/corpus
DEFAULT_WORKERS_SIZE = 64 << 20
DEFAULT_WORKERS = 4
RECOMPRESS_TIMEOUT = 600


# ---- targets ------------------------------------------------------------------------------------

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
        frames = c.get("zcache.pers_pageframes", 0) + c.get("zcache.eph_pageframes", 0)
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


# ---- results ------------------------------------------------------------------------------------

@dataclass
class Stored:
    target: str
    workload: str
    status: str = "ok"
    reason: str = ""
    server: str = ""
    write: dict = field(default_factory=dict)
    settle: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

    @property
    def per_byte(self) -> float | None:
        return self.memory.get("memory_per_original_byte") if self.status == "ok" else None


@dataclass
class DensityBench:
    pinning: str
    cpus: dict
    images: dict
    settings: dict
    versions: dict
    features: dict
    stored: list[Stored]
    rates: list[density_rates.Rate]

    def per_byte(self, target: str, workload: str) -> float | None:
        for s in self.stored:
            if s.target == target and s.workload == workload:
                return s.per_byte
        return None

    def rate(self, workload: str, variant: str) -> density_rates.Rate | None:
        for r in self.rates:
            if r.workload == workload and r.variant == variant and r.status == "ok":
                return r
        return None

    def acceptance(self) -> list[dict]:
        out = []

        def le(figure, a, b, note):
            ok = None if a is None or b is None else a <= b
            out.append({"figure": figure, "value": None if ok is None else a, "baseline": b, "passed": ok,
                        "note": "" if ok is not None else note})

        le("ramster-dense memory per original byte ≤ zram-lz4's (held-out)", self.per_byte("ramster-dense", "held-out"),
           self.per_byte("zram-lz4", "held-out"), "not measured (ramster-dense or zram-lz4 not available)")
        le("ramster-dense+recompress memory per original byte ≤ nbdkit-zstd's (held-out)",
           self.per_byte("ramster-dense+recompress", "held-out"), self.per_byte("nbdkit-zstd", "held-out"),
           "not measured (ramster-dense+recompress or nbdkit-zstd not available)")
        d, dd = self.per_byte("ramster-dense", "workers"), self.per_byte("ramster-dense+dedup", "workers")
        out.append({"figure": "dedup's saving on the workers' memory (1 - dense+dedup / dense)",
                    "value": None if d is None or dd is None else 1 - dd / d, "baseline": None,
                    "passed": None if d is None or dd is None else dd < d,
                    "note": "" if d and dd else "not measured (ramster-dense or ramster-dense+dedup not available)"})
        a, b = self.rate("held-out", "dense+dedup"), self.rate("held-out", "dense")
        ratio = a.put_pps / b.put_pps if a and b else None
        out.append({"figure": "dense+dedup put rate / dense put rate where there are no duplicates (held-out) ≥ 0.9",
                    "value": ratio, "baseline": 0.9, "passed": None if ratio is None else ratio >= 0.9,
                    "note": "" if ratio is not None else "not measured (dense or dense+dedup not available)"})
        r = self.rate("held-out", "dense")
        out.append({"figure": "dense put rate / lz4 floor (held-out) ≥ 0.6", "value": r.put_ratio if r else None,
                    "baseline": 0.6, "passed": None if r is None else r.put_ratio >= 0.6,
                    "note": "" if r else "not measured (dense not available)"})
        return out


def as_json(b: DensityBench) -> dict:
    return {"benchmark": "density", "pinning": b.pinning, "cpus": b.cpus, "images": b.images, "settings": b.settings,
            "versions": b.versions, "features": b.features, "stored": [asdict(s) for s in b.stored],
            "rates": [asdict(r) for r in b.rates], "acceptance": b.acceptance()}


# ---- running ------------------------------------------------------------------------------------

def _make(name: str, tmp: Path, procs: common.Procs, cpus: dict, size: int):
    if name in RAMSTER:
        flags, recompress = RAMSTER[name]
        return RamsterVariant(name, flags, recompress, size, tmp, procs, cpus, size)
    if name.startswith("zram"):
        return ZramVariant(name, name.endswith("+zstd"), tmp, procs, cpus, size)
    return NbdkitVariant("zstd", tmp, procs, cpus, size)


def _store(t, workload: str, image: Path) -> Stored:
    res = Stored(t.name, workload, server=t.describe())
    try:
        t.start()
        res.write = asdict(t.seqwrite(image))
        res.settle = t.settle()
        res.memory = t.snapshot()
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        res.status, res.reason = "failed", str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
        log = getattr(t, "log", None)
        if log is not None and common.tail(log):
            res.reason += f" (server log: {common.tail(log)})"
    finally:
        t.stop()
    return res


def run(args: argparse.Namespace, progress=lambda msg: None) -> DensityBench:
    files = corpus_files(args.corpus)
    server, client = common.two_cpus()
    cpus = {"server": server, "client": client}
    pinning = (f"servers (ramster node, nbdkit) on CPU {server} (taskset -c {server}); clients (nbdcopy, dd, the "
               f"forked workers) on CPU {client} (taskset -c {client}); zram compresses in dd's thread on CPU "
               f"{client}; the put/get rates in this process, pinned to CPU {server} (sched_setaffinity); "
               f"{os.cpu_count()} CPUs online")
    features = node_features()
    stored: list[Stored] = []
    with common.workspace("ramster-density-") as (tmp, procs):
        progress("building the images")
        images = {"held-out": density_pages.held_out_image(files, args.held_out_size, tmp / "held-out.raw"),
                  "workers": density_pages.workers_image(args.workers, args.workers_size, tmp / "workers.raw",
                                                         client)}
        os.sched_setaffinity(0, {client})
        for wl in WORKLOADS:
            image = tmp / f"{wl}.raw"
            size = images[wl]["size"]
            own = tmp / wl[0]  # every target's socket and backing file, apart from the other image's
            own.mkdir()
            for name in args.targets:
                why = why_unavailable(name, features)
                if why:
                    stored.append(Stored(name, wl, status="not available", reason=why.removeprefix("not available: ")))
                    continue
                progress(f"{name}: storing {wl} ({size >> 20} MiB)")
                stored.append(_store(_make(name, own, procs, cpus, size), wl, image))
        os.sched_setaffinity(0, {server})
        limit = args.rate_pages
        pages = {wl: density_rates.pages_of((tmp / f"{wl}.raw").read_bytes(), limit,
                                            args.workers if wl == "workers" else 1) for wl in WORKLOADS}
        rates = density_rates.measure(pages, args.repeat, progress)
    versions = {"nbdcopy": common.version(["nbdcopy", "--version"]), "nbdkit": common.version(["nbdkit", "--version"]),
                "kernel": platform.release(), "ramster": __version__, "python": sys.version.split()[0]}
    settings = {"held_out_size": args.held_out_size, "workers": args.workers, "workers_size": args.workers_size,
                "rate_pages": limit, "repeat": args.repeat,
                "ramster": "node --memory = the image's size (every variant keeps what it can), --compressor lz4, "
                           "swap export of the image's size with a backing file in the temp dir",
                "transport": "nbdcopy over Unix sockets (ramster, nbdkit); dd bs=256K oflag=direct (zram)"}
    return DensityBench(pinning=pinning, cpus=cpus, images=images, settings=settings, versions=versions,
                        features=features, stored=stored, rates=rates)


# ---- output -------------------------------------------------------------------------------------

def _tables(b: DensityBench) -> list[common.Table]:
    mem = common.Table("memory per original byte (lower is denser), after the image is written",
                       ["target"] + [f"{wl}: B per orig. B" for wl in WORKLOADS] + [f"{wl}: MiB" for wl in WORKLOADS]
                       + ["note"], left=("target", "note"))
    for name in dict.fromkeys(s.target for s in b.stored):
        row = [name]
        cells = {s.workload: s for s in b.stored if s.target == name}
        row += [fmt(cells[wl].per_byte, ".3f") if wl in cells else "–" for wl in WORKLOADS]
        row += [fmt(cells[wl].memory.get("memory_bytes", 0) / (1 << 20) if cells[wl].status == "ok" else None, ",.1f")
                if wl in cells else "–" for wl in WORKLOADS]
        notes = sorted({f"{s.status}: {s.reason}" for s in cells.values() if s.status != "ok"})
        row.append("; ".join(notes))
        mem.rows.append(row)
    rates = common.Table("put/get rates in one process (pages/s) and their ratio to the lz4 floor, same run",
                         ["workload", "variant", "put/s", "× floor", "get/s", "× floor", "recompress/s",
                          "recompressed", "frames B per orig. B", "note"], left=("workload", "variant", "note"))
    for r in b.rates:
        k = lambda v: fmt(None if v is None else v / 1000, ",.0f") + ("k" if v is not None else "")  # noqa: E731
        rates.rows.append([r.workload, r.variant, k(r.put_pps), fmt(r.put_ratio, ".2f"), k(r.get_pps),
                           fmt(r.get_ratio, ".2f"), k(r.recompress_pps), fmt(r.recompressed, "d"),
                           fmt(r.bytes_per_original_byte, ".3f"),
                           "" if r.status == "ok" else f"{r.status}: {r.reason}"])
    return [mem, rates]


def _notes(b: DensityBench) -> list[str]:
    h, w = b.images["held-out"], b.images["workers"]
    return [
        f"Pinning: {b.pinning}.",
        f"held-out: {h['pages']} pages ({h['size'] >> 20} MiB) set aside from the corpus ({'; '.join(h['sources'])}); "
        f"lz4 ratio {h['lz4_ratio']:.2f}, {h['duplicate_pages']} duplicate and {h['same_filled_pages']} same-filled "
        f"pages.",
        f"workers: {w['pages']} pages ({w['size'] >> 20} MiB), the present private pages of {w['workers']} workers "
        f"forked from one Python parent ({w['parent_rows']} rows shared, {w['rows_per_worker']} of its own each); "
        f"lz4 ratio {w['lz4_ratio']:.2f}; {w['duplicate_pages']} pages ({100 * w['duplicate_share']:.1f} %) "
        f"duplicate an earlier one, {w['same_filled_pages']} same-filled.",
        "Memory: ramster and nbdkit, the server's VmRSS minus that of the same server (same flags) serving 64 KiB, "
        "plus ramster's backing file bytes; zram, mm_stat mem_used_total.",
        f"Rates: best of {b.settings['repeat']} runs over {b.settings['rate_pages']} pages of each image (of the "
        "workers', an equal share of each worker's); "
        "the floor compresses every page with lz4 into a bare arena and decompresses it back.",
    ]


def _recompress_notes(b: DensityBench) -> list[str]:
    out = []
    for s in b.stored:
        c = s.settle.get("counters")
        if s.status == "ok" and c is not None:
            out.append(f"{s.target} on {s.workload}: `ramster ctl recompress` ({s.settle['ctl_calls']} call(s), "
                       f"{s.settle['recompress_seconds']:.2f} s) recompressed {c.get('zcache.recompressed', 0)} pages, "
                       f"skipped {c.get('zcache.recompress_skipped', 0)}, saved "
                       f"{c.get('zcache.recompress_saved_bytes', 0) / (1 << 20):.1f} MiB of stored bytes.")
        elif s.status == "ok" and "recompress_seconds" in s.settle:
            out.append(f"{s.target} on {s.workload}: idle pages recompressed in {s.settle['recompress_seconds']:.2f} s.")
    return out


def _acceptance_lines(b: DensityBench) -> list[str]:
    out = []
    for a in b.acceptance():
        if a["passed"] is None:
            out.append(f"{a['figure']}: {a['note']}")
            continue
        v = f"{100 * a['value']:.1f} %" if "saving" in a["figure"] else f"{a['value']:.3f}"
        base = f" vs {a['baseline']:.3f}" if a["baseline"] is not None and "≥" not in a["figure"] else ""
        out.append(f"{a['figure']}: {v}{base}: {'PASS' if a['passed'] else 'FAIL'}")
    return out


def as_markdown(b: DensityBench) -> str:
    return common.markdown(_notes(b) + _recompress_notes(b), _tables(b), _acceptance_lines(b))


# ---- command line ------------------------------------------------------------------------------------

def _targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown target {bad[0] if bad else text!r}; choose from {','.join(TARGETS)}")
    return list(dict.fromkeys(names))


def add_parser(bsub) -> None:
    p = bsub.add_parser("density", help="memory per original byte: ramster's allocators and features vs zram and nbdkit",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--held-out-size", metavar="SIZE", default=str(DEFAULT_HELD_OUT),
                   help="bytes of held-out corpus pages (default 32M: every page from 2048 on of the 4 corpus files)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                   help=f"forked Python workers whose memory is the duplicate-heavy image (default {DEFAULT_WORKERS})")
    p.add_argument("--workers-size", metavar="SIZE", default=str(DEFAULT_WORKERS_SIZE),
                   help="bytes of the workers' image (default 64M)")
    p.add_argument("--targets", type=_targets, default=list(TARGETS), metavar="LIST",
                   help=f"comma-separated (default {','.join(TARGETS)})")
    p.add_argument("--corpus", nargs="+", metavar="PATH",
                   help="*.pages files or directories (default: shared/corpus, else synthetic pages)")
    p.add_argument("--rate-pages", type=int, default=8192, metavar="N",
                   help="pages of each image the put/get rates use (default 8192)")
    p.add_argument("--repeat", type=int, default=3, metavar="R", help="timed runs of the rates; the best is kept")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--markdown", action="store_true", help="print Markdown (for BENCHMARKS.md)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..units import parse_size

    try:
        args.held_out_size = parse_size(args.held_out_size, "--held-out-size")
        args.workers_size = parse_size(args.workers_size, "--workers-size")
    except ValueError as e:
        raise UserError(str(e)) from None
    for flag, v in (("--held-out-size", args.held_out_size), ("--workers-size", args.workers_size)):
        if v < 1 << 20 or v % PAGE_SIZE:
            raise UserError(f"{flag} must be a multiple of 4096 and at least 1M")
    if args.workers < 2:
        raise UserError("--workers must be at least 2 (duplicates need several processes)")
    if args.rate_pages < 16 or args.repeat < 1:
        raise UserError("--rate-pages must be at least 16 and --repeat at least 1")
    try:
        common.require("taskset")
        common.require("nbdcopy")
        if "nbdkit-zstd" in args.targets:
            common.require("nbdkit")
        if any(t.startswith("zram") for t in args.targets):
            common.require("dd")
        corpus_files(args.corpus)
    except (ToolError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    quiet = (args.json or args.markdown) and not sys.stderr.isatty()
    t0 = time.monotonic()
    try:
        result = common.with_status("density", quiet, lambda progress: run(args, progress))
    except (FileNotFoundError, ValueError, RuntimeError, subprocess.SubprocessError) as e:
        raise UserError(str(e)) from None
    result.settings["wall_seconds"] = round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    elif args.markdown:
        print(as_markdown(result))
    else:
        common.print_report(_notes(result) + _recompress_notes(result), _tables(result), _acceptance_lines(result))
    return 1 if any(s.status == "failed" for s in result.stored) else 0
