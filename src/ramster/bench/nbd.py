"""`ramster bench nbd`: ramster's swap export against nbdkit and kernel zram, same clients, same pinning.

Targets (one at a time, each stopped before the next starts):
- ramster: a `ramster node` process serving a swap export on a Unix socket;
- nbdkit-malloc: `nbdkit memory allocator=malloc`, uncompressed C, the NBD transport's limit;
- nbdkit-zstd: `nbdkit memory allocator=zstd`, compressed C;
- zram: a kernel zram device with lz4 (root only), driven by the same fio
  through libaio with O_DIRECT, since there is no kernel NBD client here.

Per target: the corpus image is copied in (nbdcopy; dd for zram), read back
out (nbdcopy to null:; dd for zram), then fio runs 4 KiB randwrite and
randread at QD1 and QD32 over the whole written region. Memory and the
achieved compression are read after the image and again at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..units import PAGE_SIZE
from . import common, runners
from .common import ToolError, fmt
from .corpus import build_image, corpus_files
from .nbd_targets import REQUEST_SIZE, NbdkitTarget, RamsterTarget, ZramTarget
from .runners import Measure, calibrate_fio, fio_data_args

TARGETS = ("ramster", "nbdkit-malloc", "nbdkit-zstd", "zram")
FIO_JOBS = (("randwrite", 1), ("randwrite", 32), ("randread", 1), ("randread", 32))
WORKLOADS = ("seqwrite", "seqread") + tuple(f"{rw}-qd{qd}" for rw, qd in FIO_JOBS)
DEFAULT_IMAGE = 256 << 20
DEFAULT_RUNTIME = 10
DEFAULT_CHART = "bench-out/nbd.png"
# (workload, metric, baseline, threshold, project goal)
ACCEPTANCE = (
    ("randwrite-qd32", "iops", "nbdkit-malloc", 0.35, 0.5),
    ("randread-qd32", "iops", "nbdkit-malloc", 0.35, 0.5),
    ("seqwrite", "mb_s", "zram", 0.4, 0.7),
)

DESCRIPTION = f"""\
Measures ramster's NBD swap export against the same data in nbdkit and kernel
zram, in one run, with the same clients, the same pinning and the same
transport (Unix sockets):

  ramster        a `ramster node` process (lz4) serving a swap export whose
                 backing file (in the temp dir) takes the pages zcache refuses
                 (compressed worse than 3584 B); its bytes count as memory
  nbdkit-malloc  nbdkit memory allocator=malloc: uncompressed C, the limit of
                 the NBD transport itself
  nbdkit-zstd    nbdkit memory allocator=zstd: compressed C
  zram           a kernel zram device (lz4), root only: made with hot_add and
                 removed afterwards; fio uses libaio + O_DIRECT on /dev/zramN

Workloads, per target, in this order:
  seqwrite       an image built from the corpus (*.pages files, cycled) copied
                 in with nbdcopy (default request size, {REQUEST_SIZE >> 10} KiB); zram: dd
                 bs={REQUEST_SIZE >> 10}K oflag=direct. Wall time -> MB/s
  seqread        the same back out: nbdcopy --no-extents to null:; zram: dd
                 iflag=direct
  randwrite/randread at QD1 and QD32: fio, 4 KiB, time based, over the whole
                 image; IOPS, MB/s, p50/p99 completion latency (fio clat)

fio cannot write corpus pages, so its writes use buffer_compress_percentage
(per 4 KiB: random bytes, then zeros) with refill_buffers, the percentage
chosen so that lz4 compresses fio's data as much as the image; both ratios
are reported. Memory per original byte: for a server, its VmRSS minus that
of the same server serving a 64 KiB export (the interpreter, libraries,
threads), plus for ramster its backing file's bytes (the frame arena is
backed lazily, so RSS includes the frames); for zram, mm_stat
mem_used_total. Achieved compression: ramster /stats (stored pages x 4096 /
compressed bytes, refused pages counted uncompressed), zram mm_stat.

Servers run on one CPU, clients (fio, nbdcopy, dd) on another (taskset -c);
zram has no server: the kernel compresses in the client's thread. Every
process started is killed and every temporary file removed at the end.

Acceptance (issue 3): 4 KiB QD32 randwrite and randread >= 0.35 x
nbdkit-malloc IOPS; seqwrite >= 0.4 x zram MB/s.
"""


# ---- results ----------------------------------------------------------------------------------------

@dataclass
class TargetResult:
    name: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    server: str = ""
    workloads: dict[str, Measure] = field(default_factory=dict)
    after_image: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)


@dataclass
class NbdBench:
    pinning: str
    cpus: dict
    image: dict
    fio_data: dict
    settings: dict
    versions: dict
    targets: list[TargetResult]
    chart: str | None = None
    chart_note: str = ""

    def target(self, name: str) -> TargetResult | None:
        for t in self.targets:
            if t.name == name and t.status == "ok":
                return t
        return None

    def ratio(self, name: str, workload: str, baseline: str) -> float | None:
        t, b = self.target(name), self.target(baseline)
        if t is None or b is None or workload not in t.workloads or workload not in b.workloads:
            return None
        metric = "mb_s" if workload.startswith("seq") else "iops"
        num, den = getattr(t.workloads[workload], metric), getattr(b.workloads[workload], metric)
        return num / den if num is not None and den else None

    def acceptance(self) -> list[dict]:
        out = []
        for wl, metric, base, need, goal in ACCEPTANCE:
            r = self.ratio("ramster", wl, base)
            out.append({"figure": f"ramster {wl} {metric} / {base}", "ratio": r, "threshold": need, "goal": goal,
                        "passed": None if r is None else r >= need,
                        "note": "" if r is not None else f"not measured ({base} or ramster missing)"})
        return out


def as_json(b: NbdBench) -> dict:
    targets = {}
    for t in b.targets:
        d = asdict(t)
        d["workloads"] = {k: asdict(m) for k, m in t.workloads.items()}
        d["ratios"] = {wl: {"vs_nbdkit_malloc": b.ratio(t.name, wl, "nbdkit-malloc"),
                            "vs_zram": b.ratio(t.name, wl, "zram")} for wl in t.workloads}
        targets[t.name] = d
    return {"benchmark": "nbd", "pinning": b.pinning, "cpus": b.cpus, "image": b.image, "fio_data": b.fio_data,
            "settings": b.settings, "versions": b.versions, "targets": targets, "acceptance": b.acceptance(),
            "chart": b.chart, "chart_note": b.chart_note}


# ---- running ------------------------------------------------------------------------------------

def _cpus() -> tuple[dict, str]:
    server, client = common.two_cpus()
    online = os.cpu_count()
    if server == client:
        return ({"server": server, "client": client},
                f"only CPU {server} is available: servers and clients share it (taskset -c {server}); "
                f"{online} CPUs online")
    return ({"server": server, "client": client},
            f"servers (ramster node, nbdkit) on CPU {server} (taskset -c {server}); clients (fio, nbdcopy, dd) "
            f"on CPU {client} (taskset -c {client}); zram has no server: the kernel compresses in the client's "
            f"thread, on CPU {client}; the orchestrating process (idle while measuring) on CPU {client}; "
            f"{online} CPUs online")


def _with_server_cpu(t, measure) -> Measure:
    proc = getattr(t, "proc", None)
    if proc is None:  # zram: the kernel works in the client's thread
        return measure()
    c0 = common.cpu_seconds(proc.pid)
    m = measure()
    m.server_cpu = (common.cpu_seconds(proc.pid) - c0) / m.seconds
    return m


def _run_target(t, image: Path, fio_args: list[str], runtime: int, size: int, progress) -> TargetResult:
    res = TargetResult(t.name, server=t.describe())
    try:
        progress(f"{t.name}: starting")
        t.start()
        progress(f"{t.name}: copying the image in")
        res.workloads["seqwrite"] = _with_server_cpu(t, lambda: t.seqwrite(image))
        res.after_image = t.snapshot()
        progress(f"{t.name}: copying the image out")
        res.workloads["seqread"] = _with_server_cpu(t, t.seqread)
        for rw, qd in FIO_JOBS:
            progress(f"{t.name}: fio {rw} QD{qd} for {runtime} s")
            res.workloads[f"{rw}-qd{qd}"] = _with_server_cpu(t, lambda rw=rw, qd=qd: runners.fio(
                t.cpus["client"], t.fio_target(), rw, qd, runtime, size,
                fio_args if rw == "randwrite" else [], t.tmp / "fio.json"))
        res.end = t.snapshot()
        if t.name == "ramster" and res.end.get("nbd_errors"):
            raise RuntimeError(f"the node answered {res.end['nbd_errors']} request(s) with an error")
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        res.status, res.reason = "failed", f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
        log = getattr(t, "log", None)
        if log is not None and common.tail(log):
            res.reason += f" (server log: {common.tail(log)})"
    finally:
        t.stop()
    return res


def run(args: argparse.Namespace, progress=lambda msg: None) -> NbdBench:
    targets = args.targets
    files = corpus_files(args.corpus)
    cpus, pinning = _cpus()
    results: list[TargetResult] = []
    with common.workspace("ramster-bench-nbd-") as (tmp, procs):
        progress("building the image from the corpus")
        image = tmp / "image.raw"
        img = build_image(files, args.image_size, image)
        os.sched_setaffinity(0, {cpus["client"]})
        progress("choosing fio's data")
        fio_data = calibrate_fio(img["lz4_ratio"], cpus["client"], tmp, args.fio_compress_percentage)
        fio_args = fio_data_args(fio_data["buffer_compress_percentage"])
        for name in targets:
            if name == "zram":
                why = runners.zram_unavailable()
                if why:
                    results.append(TargetResult("zram", status="skipped", reason=why))
                    continue
                t = ZramTarget(tmp, procs, cpus, args.image_size)
            elif name == "ramster":
                t = RamsterTarget(args.memory, tmp, procs, cpus, args.image_size)
            else:
                t = NbdkitTarget(name.split("-", 1)[1], tmp, procs, cpus, args.image_size)
            results.append(_run_target(t, image, fio_args, args.runtime, args.image_size, progress))
    versions = {"fio": common.version(["fio", "--version"]), "nbdcopy": common.version(["nbdcopy", "--version"]),
                "kernel": platform.release(), "ramster": __version__}
    if any(t in targets for t in ("nbdkit-malloc", "nbdkit-zstd")):
        versions["nbdkit"] = common.version(["nbdkit", "--version"])
    settings = {
        "runtime_s": args.runtime, "image_size": args.image_size, "ramster_memory": args.memory,
        "ramster_export": "swap, backing file in the temp dir for the pages zcache refuses (compressed > 3584 B, "
                          "or poorly compressing while the mean is high); its allocated bytes count as memory",
        "transport": "Unix sockets (NBD targets); /dev/zramN with libaio + O_DIRECT (zram)",
        "fio": "bs=4k numjobs=1 time_based norandommap randrepeat=0 size=image; randwrite, then randread, "
               "after the image was written",
        "request_size": REQUEST_SIZE,
    }
    return NbdBench(pinning=pinning, cpus=cpus, image=img, fio_data=fio_data, settings=settings, versions=versions,
                    targets=results)


# ---- output -------------------------------------------------------------------------------------

HEAD = ["target", "workload", "client", "IOPS", "MB/s", "p50 µs", "p99 µs", "server CPU", "client CPU",
        "× nbdkit-malloc", "× zram"]
MEM_HEAD = ["target", "memory after image", "B per orig. B", "compression", "memory at end", "B per orig. B (end)"]


def _tables(b: NbdBench) -> list[common.Table]:
    t = common.Table("ramster bench nbd — 4 KiB random I/O (fio) and sequential copies of the image", HEAD,
                     left=("target", "workload", "client"))
    m = common.Table("memory per original byte, achieved compression", MEM_HEAD)
    mib = lambda v: f"{v / (1 << 20):,.1f} MiB"  # noqa: E731
    for r in b.targets:
        if r.status != "ok":
            t.rows.append([r.name, r.status, r.reason] + [""] * (len(HEAD) - 3))
            continue
        for wl in WORKLOADS:
            w = r.workloads.get(wl)
            if w is not None:
                t.rows.append([r.name, wl, w.tool, fmt(w.iops, ",.0f"), fmt(w.mb_s, ",.1f"), fmt(w.p50_us, ".1f"),
                               fmt(w.p99_us, ".1f"), fmt(w.server_cpu, ".2f"), fmt(w.client_cpu, ".2f"),
                               fmt(b.ratio(r.name, wl, "nbdkit-malloc"), ".2f"), fmt(b.ratio(r.name, wl, "zram"), ".2f")])
        a, e = r.after_image, r.end
        m.rows.append([r.name, mib(a["memory_bytes"]), f"{a['memory_per_original_byte']:.3f}",
                       fmt(a.get("compression_ratio"), ".2f") + ("×" if a.get("compression_ratio") else ""),
                       mib(e["memory_bytes"]), f"{e['memory_per_original_byte']:.3f}"])
    return [t, m]


# ---- output -------------------------------------------------------------------------------------

def _notes(b: NbdBench) -> list[str]:
    img, fd = b.image, b.fio_data
    notes = [
        f"Pinning: {b.pinning}.",
        f"Image: {img['size'] >> 20} MiB of corpus pages ({len(img['corpus'])} files cycled), lz4 ratio "
        f"{img['lz4_ratio']:.2f}, {img['zero_pages']} zero pages, {img['pages_compressing_worse_than_3584B']} "
        f"pages compressing worse than 3584 B.",
        f"fio write data: {fd['options']} ({fd['layout']}); lz4 ratio {fd['lz4_ratio']:.2f} vs the image's "
        f"{fd['image_lz4_ratio']:.2f}.",
        "p50/p99: fio's total latency (lat, submission to completion: zram completes a bio inside io_submit, so "
        "its clat is ~0). server/client CPU: CPU seconds per wall-clock second of the server process / of the "
        "client processes (1.00 = its CPU is saturated).",
        f"fio: {b.settings['fio']}, {b.settings['runtime_s']} s per job. ramster: --memory "
        f"{b.settings['ramster_memory'] >> 20} MiB, {b.settings['ramster_export']}.",
    ]
    r = b.target("ramster")
    if r is not None:
        a = r.after_image
        notes.append(f"ramster after the image: {a['pers_zpages']} pages in memory "
                     f"(lz4 ratio {fmt(a['compression_ratio_in_memory'], '.2f')}) in {a['pers_pageframes']} frames, "
                     f"{a['backing_file_bytes'] >> 10} KiB in the backing file, RSS beyond frames "
                     f"{a['rss_beyond_frames_bytes'] / (1 << 20):.1f} MiB, written back "
                     f"{a['writtenback_pages']} pages.")
    return notes


def _acceptance_lines(b: NbdBench) -> list[str]:
    out = []
    for a in b.acceptance():
        if a["ratio"] is None:
            out.append(f"{a['figure']}: {a['note']}")
        else:
            mark = "PASS" if a["passed"] else "FAIL"
            out.append(f"{a['figure']} = {a['ratio']:.2f} (acceptance ≥ {a['threshold']}, goal {a['goal']}): {mark}")
    return out


def as_markdown(b: NbdBench) -> str:
    text = common.markdown(_notes(b), _tables(b), _acceptance_lines(b))
    return text + (f"\n\nChart: {b.chart}" if b.chart else "")


def print_table(b: NbdBench) -> None:
    chart = f"chart: {b.chart}" if b.chart else (f"chart: {b.chart_note}" if b.chart_note else None)
    common.print_report(_notes(b), _tables(b), _acceptance_lines(b) + ([chart] if chart else []))


def write_chart(b: NbdBench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [t for t in b.targets if t.status == "ok"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [4, 2, 1.4]})
    width = 0.8 / max(len(ok), 1)
    panels = ((axes[0], [f"{rw}-qd{qd}" for rw, qd in FIO_JOBS], "iops", "IOPS (4 KiB, fio)"),
              (axes[1], ["seqwrite", "seqread"], "mb_s", "MB/s (image copy)"))
    for ax, wls, metric, title in panels:
        for i, t in enumerate(ok):
            vals = [getattr(t.workloads[w], metric) or 0 if w in t.workloads else 0 for w in wls]
            xs = [j + (i - (len(ok) - 1) / 2) * width for j in range(len(wls))]
            bars = ax.bar(xs, vals, width, label=t.name)
            ax.bar_label(bars, labels=[f"{v / 1000:.0f}k" if metric == "iops" else f"{v:.0f}" for v in vals],
                         fontsize=7, rotation=90, padding=2)
        ax.set_xticks(range(len(wls)), wls)
        ax.set_title(title)
        ax.margins(y=0.2)
    ax = axes[2]
    names = [t.name for t in ok]
    vals = [t.after_image["memory_per_original_byte"] for t in ok]
    bars = ax.bar(range(len(ok)), vals, color=[f"C{i}" for i in range(len(ok))])
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=8)
    ax.set_xticks(range(len(ok)), names, rotation=30, ha="right")
    ax.set_title("memory per original byte\n(after the image)")
    ax.margins(y=0.15)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ramster bench nbd: {b.image['size'] >> 20} MiB corpus image, {b.settings['runtime_s']} s per fio "
                 f"job; servers CPU {b.cpus['server']}, clients CPU {b.cpus['client']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ------------------------------------------------------------------------------------

def _targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown target {bad[0] if bad else text!r}; choose from {','.join(TARGETS)}")
    return list(dict.fromkeys(names))


def add_parser(bsub) -> None:
    p = bsub.add_parser(
        "nbd",
        help="ramster's NBD swap export vs nbdkit (malloc, zstd) and kernel zram: fio and nbdcopy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image-size", metavar="SIZE", default=str(DEFAULT_IMAGE),
                   help="size of the corpus image and of every export/device (default 256M)")
    p.add_argument("--memory", metavar="SIZE",
                   help="ramster's memory budget (default 3/4 of the image: the corpus compresses about 2.3x "
                        "with lz4 but zbud holds at most two pages per frame)")
    p.add_argument("--runtime", type=int, default=DEFAULT_RUNTIME, metavar="SEC",
                   help=f"seconds per fio job (default {DEFAULT_RUNTIME})")
    p.add_argument("--targets", type=_targets, default=list(TARGETS), metavar="LIST",
                   help=f"comma-separated, run in this order (default {','.join(TARGETS)})")
    p.add_argument("--corpus", nargs="+", metavar="PATH", help="*.pages files or directories (default: shared/corpus, else synthetic pages with its mix)")
    p.add_argument("--fio-compress-percentage", type=int, metavar="P",
                   help="fio's buffer_compress_percentage (default: chosen so that lz4 compresses fio's data "
                        "like the image)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--markdown", action="store_true", help="print Markdown (for BENCHMARKS.md)")
    p.add_argument("--chart", metavar="PATH",
                   help=f"write a PNG chart there (default {DEFAULT_CHART}, when matplotlib is installed)")
    p.add_argument("--no-chart", action="store_true", help="write no chart")
    p.set_defaults(func=main)


def _check_tools(targets: list[str]) -> None:
    common.require("taskset")
    common.require("fio")
    nbd_targets = [t for t in targets if t != "zram"]
    if nbd_targets:
        common.require("nbdcopy")
        r = common.run(["fio", "--enghelp=nbd"], timeout=30)
        if r.returncode != 0:
            raise ToolError("this fio has no nbd engine (fio --enghelp=nbd fails); install Debian's fio")
    if any(t.startswith("nbdkit") for t in targets):
        common.require("nbdkit")
    if "zram" in targets:
        common.require("dd")


def main(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..units import parse_size

    try:
        args.image_size = parse_size(args.image_size, "--image-size")
        if args.memory:
            args.memory = parse_size(args.memory, "--memory")
        else:
            args.memory = args.image_size * 3 // 4 // PAGE_SIZE * PAGE_SIZE
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.image_size < 1 << 20 or args.image_size % PAGE_SIZE:
        raise UserError("--image-size must be a multiple of 4096 and at least 1M")
    if args.memory < PAGE_SIZE or args.memory % PAGE_SIZE:
        raise UserError("--memory must be a positive multiple of 4096")
    if args.runtime < 1:
        raise UserError("--runtime must be at least 1 second")
    if args.fio_compress_percentage is not None and not 0 <= args.fio_compress_percentage <= 100:
        raise UserError("--fio-compress-percentage must be between 0 and 100")
    if args.no_chart and args.chart:
        raise UserError("--chart and --no-chart contradict each other")
    chart, chart_note = None, ""
    if not args.no_chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if args.chart:
                raise UserError("--chart needs matplotlib, which is not installed (pip install matplotlib)") from None
            chart_note = "not written: matplotlib is not installed (pip install matplotlib)"
        else:
            chart = Path(args.chart or DEFAULT_CHART)
    try:
        _check_tools(args.targets)
        corpus_files(args.corpus)
    except (ToolError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    quiet = (args.json or args.markdown) and not sys.stderr.isatty()
    t0 = time.monotonic()
    try:
        result = common.with_status("nbd", quiet, lambda progress: run(args, progress))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None
    result.settings["wall_seconds"] = round(time.monotonic() - t0, 1)
    result.chart_note = chart_note
    if chart is not None and any(t.status == "ok" for t in result.targets):
        try:
            write_chart(result, chart)
            result.chart = str(chart)
        except (OSError, ValueError) as e:
            result.chart_note = f"not written: {e}"
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    elif args.markdown:
        print(as_markdown(result))
    else:
        print_table(result)
    return 1 if any(t.status == "failed" for t in result.targets) else 0
