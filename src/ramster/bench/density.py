"""`ramster bench density`: memory per original byte of ramster's allocators and features, zram and nbdkit.

One run, the same pages for every target. Three images (density_pages.py):

- held-out: corpus pages set aside from what the other benchmarks tune on;
- workers: the memory of several forked workers of one Python program (the
  duplicate-heavy case);
- guest-swap: a Linux guest's swap traffic. The guest of `ramster bench
  guest` (QEMU/TCG, a memory hog larger than its memory) boots once with its
  swap disk a sparse raw file, runs the hog to completion, and the pages the
  kernel wrote there (the file's data extents, each slot as last written,
  the swap header left out) are the image, up to --guest-size. Where the
  guest cannot boot (no QEMU, no kernel in /boot, no busybox-static, ...)
  every target's row on it says "not available" and why; --no-guest leaves
  the workload out, and the output says so.

Each target gets each image written through the transport `ramster bench
nbd` uses (nbdcopy over a Unix socket; dd with O_DIRECT for zram, which has
no server), then what it holds is measured:

- a ramster node (ramster-zbud, -zbud+recompress, -dense, -dense+recompress,
  -dense+dedup):
  its VmRSS once it has trimmed its heap (heaptrim.py: a second after the
  traffic stops) minus that of the same node, same flags, holding 64 KiB of
  synthetic pages, plus its backing file's allocated bytes
  (nbd_targets.RamsterTarget). For
  +recompress, every page is marked idle and `ramster ctl recompress` run
  first (`ramster ctl mark-idle`, then `ramster ctl recompress` until a pass
  finds nothing more), and /stats read for what it did; its 64 KiB node
  went through the same steps;
- zram-lz4 and zram-lz4+zstd (recompression of idle pages with zstd, where
  the kernel's zram has recomp_algorithm): mm_stat mem_used_total;
- nbdkit-zstd (`nbdkit memory allocator=zstd`): VmRSS minus its self
  holding 64 KiB of synthetic pages (so the codec's code and contexts are
  in both).

A target whose feature is missing (a node flag or ctl verb not in this
ramster, a zram without recompression, no root for zram) is a row saying
"not available" and why; nothing stands in for it.

Servers run on one CPU and clients (nbdcopy, dd, the forked workers, the
guest's QEMU) on another (taskset -c). Put/get rates (density_rates.py) of
every image are measured in this process, pinned to the server CPU, as
ratios to the lz4 floor timed beside them.
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
from ..guest import tools
from ..units import PAGE_SIZE
from . import common, density_pages, density_rates
from .common import ToolError, fmt
from .corpus import corpus_files
from .density_targets import TARGETS, make, node_features, why_unavailable

GUEST = "guest-swap"
WORKLOADS = ("held-out", "workers", GUEST)
DEFAULT_HELD_OUT = 32 << 20  # every set-aside page of shared/corpus
DEFAULT_WORKERS_SIZE = 64 << 20
DEFAULT_WORKERS = 4
DEFAULT_GUEST_SIZE = 64 << 20


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
    workloads: dict[str, dict]  # name -> {"status": "ok", "not available", "failed" or "left out", "reason"}
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
    return {"benchmark": "density", "pinning": b.pinning, "cpus": b.cpus, "workloads": b.workloads,
            "images": b.images, "settings": b.settings,
            "versions": b.versions, "features": b.features, "stored": [asdict(s) for s in b.stored],
            "rates": [asdict(r) for r in b.rates], "acceptance": b.acceptance()}


# ---- running ------------------------------------------------------------------------------------

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


def _guest_workload(args: argparse.Namespace, tmp: Path, cpu: int, progress) -> tuple[dict, dict | None]:
    """({"status", "reason"}, the guest-swap image's description or None when there is none)."""
    if args.no_guest:
        return {"status": "left out", "reason": "--no-guest"}, None
    why = density_pages.guest_unavailable()
    if why:
        return {"status": "not available", "reason": why}, None
    progress(f"{GUEST}: the guest's memory hog swapping on a raw file")
    work = tmp / "guest"
    work.mkdir()
    try:
        image = density_pages.guest_swap_image(args.guest_size, tmp / f"{GUEST}.raw", cpu, work)
    except (RuntimeError, OSError) as e:
        why = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
        return {"status": "failed", "reason": why}, None
    return {"status": "ok", "reason": ""}, image


def _rates(workloads: dict[str, dict], tmp: Path, args: argparse.Namespace, progress) -> list[density_rates.Rate]:
    """Every variant's rates on every image there is; a row saying why for a workload without one."""
    pages = {wl: density_rates.pages_of((tmp / f"{wl}.raw").read_bytes(), args.rate_pages,
                                        args.workers if wl == "workers" else 1)
             for wl, st in workloads.items() if st["status"] == "ok"}
    measured = density_rates.measure(pages, args.repeat, progress)
    out = []
    for wl, st in workloads.items():
        if st["status"] == "ok":
            out += [r for r in measured if r.workload == wl]
        elif st["status"] != "left out":
            out += [density_rates.Rate(wl, v[0], status=st["status"], reason=st["reason"])
                    for v in density_rates.VARIANTS]
    return out


def run(args: argparse.Namespace, progress=lambda msg: None) -> DensityBench:
    files = corpus_files(args.corpus)
    server, client = common.two_cpus()
    cpus = {"server": server, "client": client}
    pinning = (f"servers (ramster node, nbdkit) on CPU {server} (taskset -c {server}); clients (nbdcopy, dd, the "
               f"forked workers, the guest's QEMU) on CPU {client} (taskset -c {client}); zram compresses in dd's "
               f"thread on CPU {client}; the put/get rates in this process, pinned to CPU {server} "
               f"(sched_setaffinity); {os.cpu_count()} CPUs online")
    features = node_features()
    stored: list[Stored] = []
    with common.workspace("ramster-density-") as (tmp, procs):
        progress("building the images")
        images = {"held-out": density_pages.held_out_image(files, args.held_out_size, tmp / "held-out.raw"),
                  "workers": density_pages.workers_image(args.workers, args.workers_size, tmp / "workers.raw",
                                                         client)}
        workloads = {wl: {"status": "ok", "reason": ""} for wl in images}
        workloads[GUEST], guest_image = _guest_workload(args, tmp, client, progress)
        if guest_image is not None:
            images[GUEST] = guest_image
        os.sched_setaffinity(0, {client})
        for wl, st in workloads.items():
            if st["status"] != "ok":
                if st["status"] != "left out":  # every target says why it has no figure here
                    stored += [Stored(name, wl, status=st["status"], reason=st["reason"]) for name in args.targets]
                continue
            image = tmp / f"{wl}.raw"
            size = images[wl]["size"]
            own = tmp / wl[0]  # every target's socket and backing file, apart from the other images'
            own.mkdir()
            for name in args.targets:
                why = why_unavailable(name, features)
                if why:
                    stored.append(Stored(name, wl, status="not available", reason=why.removeprefix("not available: ")))
                    continue
                progress(f"{name}: storing {wl} ({size >> 20} MiB)")
                stored.append(_store(make(name, own, procs, cpus, size), wl, image))
        os.sched_setaffinity(0, {server})
        rates = _rates(workloads, tmp, args, progress)
    versions = {"nbdcopy": common.version(["nbdcopy", "--version"]), "nbdkit": common.version(["nbdkit", "--version"]),
                "kernel": platform.release(), "ramster": __version__, "python": sys.version.split()[0]}
    if GUEST in images:
        versions["qemu"] = common.version([tools.QEMU, "--version"])
        versions["guest_kernel"] = images[GUEST]["kernel"]
    settings = {"held_out_size": args.held_out_size, "workers": args.workers, "workers_size": args.workers_size,
                "guest_size": None if args.no_guest else args.guest_size, "rate_pages": args.rate_pages,
                "repeat": args.repeat,
                "ramster": "node --memory = the image's size (every variant keeps what it can), --compressor lz4, "
                           "swap export of the image's size with a backing file in the temp dir",
                "transport": "nbdcopy over Unix sockets (ramster, nbdkit); dd bs=256K oflag=direct (zram)",
                "guest": "-machine q35,accel=tcg -cpu max -smp 1, one virtio-blk swap disk: a sparse raw file "
                         "through QEMU's file driver"}
    return DensityBench(pinning=pinning, cpus=cpus, workloads=workloads, images=images, settings=settings,
                        versions=versions, features=features, stored=stored, rates=rates)


# ---- output -------------------------------------------------------------------------------------

def _tables(b: DensityBench) -> list[common.Table]:
    shown = [wl for wl, st in b.workloads.items() if st["status"] != "left out"]
    mem = common.Table("memory per original byte (lower is denser), after the image is written",
                       ["target"] + [f"{wl}: B per orig. B" for wl in shown] + [f"{wl}: MiB" for wl in shown]
                       + ["note"], left=("target", "note"))
    for name in dict.fromkeys(s.target for s in b.stored):
        row = [name]
        cells = {s.workload: s for s in b.stored if s.target == name}
        row += [fmt(cells[wl].per_byte, ".3f") if wl in cells else "–" for wl in shown]
        row += [fmt(cells[wl].memory.get("memory_bytes", 0) / (1 << 20) if cells[wl].status == "ok" else None, ",.1f")
                if wl in cells else "–" for wl in shown]
        # a workload without an image is explained once, in the notes above the tables
        notes = sorted({f"{s.status}: {s.reason}" for s in cells.values()
                        if s.status != "ok" and b.workloads[s.workload]["status"] == "ok"})
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
                           _rate_note(b, r)])
    return [mem, rates]


def _rate_note(b: DensityBench, r: density_rates.Rate) -> str:
    if r.status == "ok":
        return ""
    if b.workloads[r.workload]["status"] != "ok":  # said once, in the workload's note
        return f"{r.status}: no {r.workload} image (see its note)"
    return f"{r.status}: {r.reason}"


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
        _guest_note(b),
        "Memory: ramster and nbdkit, the server's VmRSS (ramster's once it trimmed its heap) minus that of the same "
        "server (same flags, same steps) holding 64 KiB of synthetic pages, plus ramster's backing file bytes; "
        "zram, mm_stat mem_used_total.",
        f"Rates: best of {b.settings['repeat']} runs over {b.settings['rate_pages']} pages of each image (of the "
        "workers', an equal share of each worker's); "
        "the floor compresses every page with lz4 into a bare arena and decompresses it back.",
    ]


def _guest_note(b: DensityBench) -> str:
    st = b.workloads[GUEST]
    if st["status"] != "ok":
        return f"{GUEST}: {st['status']}: {st['reason']}."
    g = b.images[GUEST]
    return (f"{GUEST}: {g['pages']} pages ({g['size'] >> 20} MiB) of the {g['swap_written_bytes'] >> 20} MiB a Linux "
            f"guest ({g['kernel']}, {g['guest_memory_mib']} MiB, QEMU TCG on CPU {b.cpus['client']}) wrote to its "
            f"swap disk, a sparse raw file, while its {g['hog_mib']} MiB memory hog ran and passed "
            f"({g['hog'].get('total', 0):.1f} s, {g['vmstat'].get('pswpout', 0):,} pages swapped out): the file's "
            f"data extents, each slot as last written, lowest slots first, the swap header left out; lz4 ratio "
            f"{g['lz4_ratio']:.2f}, {g['duplicate_pages']} duplicate and {g['same_filled_pages']} same-filled pages.")


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
    p.add_argument("--guest-size", metavar="SIZE", default=str(DEFAULT_GUEST_SIZE),
                   help="at most this many bytes of the guest's swap traffic (default 64M)")
    p.add_argument("--no-guest", action="store_true",
                   help=f"leave the {GUEST} workload out (it boots a guest under QEMU, about a minute with TCG)")
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
        args.guest_size = parse_size(args.guest_size, "--guest-size")
    except ValueError as e:
        raise UserError(str(e)) from None
    for flag, v in (("--held-out-size", args.held_out_size), ("--workers-size", args.workers_size),
                    ("--guest-size", args.guest_size)):
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
