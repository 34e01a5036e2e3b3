"""`ramster bench guest`: a Linux guest swapping on ramster, on nbdkit memory and on a raw file, in one run."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..guest import initramfs, tools, vm
from . import common
from .common import fmt

TARGETS = ("ramster", "nbdkit", "file")
BASELINE = "nbdkit"
ACCEPTANCE = 1.3  # issue 7: ramster's hog time <= 1.3 x nbdkit memory's
DEFAULT_SIZE = 1 << 30
DEFAULT_MEMORY = 512 << 20
DEFAULT_TIMEOUT = 600

DESCRIPTION = f"""\
Boots the same Linux guest (QEMU, TCG, {vm.GUEST_MEMORY_MIB} MiB, a Debian kernel and an
initramfs built here) once per target, each with one swap disk, and times its memory
hog: {vm.HOG_MIB} MiB of pages (random, same-filled, structured, half random)
written once and verified twice, so the kernel swaps most of it out and in again.

  ramster   a `ramster node` swap export without backing file, memory large
            enough for every page (QEMU's NBD client, Unix socket)
  nbdkit    `nbdkit memory SIZE` (the reference NBD server, same transport)
  file      a sparse raw file through QEMU's file driver and the host's page
            cache: no NBD and no server, the cheapest path QEMU has

The figure is the hog's own time (its monotonic clock, from before the fill to
after the second verify), which leaves out the guest's boot; the ratio is to
nbdkit's in the same run. The server runs on one CPU and QEMU on another
(taskset -c), with two CPUs or more. Acceptance (issue 7): ramster <= {ACCEPTANCE} x
nbdkit. A guest that does not print HOG PASS, or prints an I/O error, fails
the run.
"""


@dataclass
class Run:
    target: str
    passed: bool
    verdict: str
    wall_seconds: float
    hog: dict
    vmstat: dict
    server_cpu_seconds: float | None = None
    server: dict = field(default_factory=dict)  # ramster: what its /stats said at the end


@dataclass
class GuestBench:
    pinning: str
    cpus: dict
    settings: dict
    versions: dict
    runs: list[Run]

    def best(self, target: str) -> Run | None:
        ok = [r for r in self.runs if r.target == target and r.passed and "total" in r.hog]
        return min(ok, key=lambda r: r.hog["total"]) if ok else None

    def ratio(self, target: str) -> float | None:
        t, b = self.best(target), self.best(BASELINE)
        return t.hog["total"] / b.hog["total"] if t and b else None

    def acceptance(self) -> dict:
        r = self.ratio("ramster")
        return {"figure": f"ramster hog time / {BASELINE}", "ratio": r, "threshold": ACCEPTANCE,
                "passed": None if r is None else r <= ACCEPTANCE}


def as_json(b: GuestBench) -> dict:
    return {"benchmark": "guest", "pinning": b.pinning, "cpus": b.cpus, "settings": b.settings,
            "versions": b.versions, "runs": [asdict(r) for r in b.runs],
            "best": {t: asdict(r) if (r := b.best(t)) else None for t in TARGETS},
            "ratios": {t: b.ratio(t) for t in TARGETS}, "acceptance": b.acceptance()}


# ---- targets ------------------------------------------------------------------------------------

class Target:
    name = ""
    server_cmd: list[str] | None = None

    def __init__(self, tmp: Path, procs: common.Procs, cpus: dict, size: int):
        self.tmp, self.procs, self.cpus, self.size = tmp, procs, cpus, size
        self.sock = tmp / f"{self.name}.sock"
        self.log = tmp / f"{self.name}.log"
        self.proc = None

    def start(self) -> None:
        if self.server_cmd:
            self.proc = self.procs.start(self.server_cmd, self.log, self.tmp, cpu=self.cpus["server"])
            common.wait_unix_socket(self.sock, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None
        self.sock.unlink(missing_ok=True)

    def disk(self) -> dict:
        raise NotImplementedError

    def stats(self) -> dict:
        return {}


class RamsterTarget(Target):
    name = "ramster"

    def __init__(self, memory: int, *a):
        super().__init__(*a)
        self.memory = memory
        self.port = common.free_port()
        self.server_cmd = [sys.executable, "-m", "ramster.cli", "node", "--memory", str(memory),
                           "--listen", f"unix:{self.sock}", "--export", f"swap:swap:{self.size}",
                           "--metrics", f"127.0.0.1:{self.port}", "--log-level", "warning"]

    def disk(self) -> dict:
        return vm.nbd_unix(self.sock, "swap")

    def stats(self) -> dict:
        st = common.get_json(f"http://127.0.0.1:{self.port}/stats", self.proc)
        c, e = st["counters"], st["exports"]["swap"]["counters"]
        keys = ("frontswap.succ_stores", "frontswap.loads", "zcache.pers_pageframes_max", "zcache.huge_pages_max",
                "zcache.same_filled_pages", "zcache.zero_filled_pages")
        return {**{k: c.get(k) for k in keys}, "nbd_errors": e.get("errors"), "failed_writes": e.get("failed_writes"),
                "nbd_reads": e.get("reads"), "nbd_writes": e.get("writes")}

    def describe(self) -> str:
        return f"ramster node --memory {self.memory >> 20}M --export swap:swap:{self.size >> 20}M (no backing file)"


class NbdkitTarget(Target):
    name = "nbdkit"

    def __init__(self, *a):
        super().__init__(*a)
        self.server_cmd = ["nbdkit", "--exit-with-parent", "-f", "-U", str(self.sock), "memory", str(self.size)]

    def disk(self) -> dict:
        return vm.nbd_unix(self.sock, "")

    def describe(self) -> str:
        return f"nbdkit memory {self.size >> 20}M (-U SOCKET -f)"


class FileTarget(Target):
    name = "file"

    def __init__(self, *a):
        super().__init__(*a)
        self.path = self.tmp / "swap.raw"

    def start(self) -> None:
        with open(self.path, "wb") as f:
            f.truncate(self.size)

    def stop(self) -> None:
        self.path.unlink(missing_ok=True)

    def disk(self) -> dict:
        return vm.raw_file(self.path)

    def describe(self) -> str:
        return (f"a sparse {self.size >> 20} MiB raw file in {self.tmp.parent} (QEMU's file driver through the "
                f"host's page cache: no NBD, no server process)")


# ---- running ------------------------------------------------------------------------------------

def _cpus() -> tuple[dict, str]:
    server, qemu = common.two_cpus()
    if server == qemu:
        return {"server": server, "qemu": qemu}, f"only CPU {server} is available: QEMU and servers share it"
    return ({"server": server, "qemu": qemu},
            f"servers (ramster node, nbdkit) on CPU {server} (taskset -c {server}); QEMU (its vCPU thread and "
            f"its I/O thread, which runs the NBD client and the file driver) on CPU {qemu} (taskset -c {qemu}); "
            f"this process (idle while the guest runs) on CPU {qemu}; {os.cpu_count()} CPUs online")


def _one(t: Target, kernel, initrd: Path, args, progress) -> Run:
    progress(f"{t.name}: starting")
    try:
        t.start()
        c0 = common.cpu_seconds(t.proc.pid) if t.proc else None
        progress(f"{t.name}: guest running")
        g = vm.run(kernel, initrd, t.disk(), t.tmp / f"{t.name}.console", args.timeout,
                   prefix=tuple(common.pin(t.cpus["qemu"])), memory_mib=args.guest_mib, hog_mib=args.hog_mib,
                   seed=args.seed)
        cpu = common.cpu_seconds(t.proc.pid) - c0 if t.proc else None
        server = t.stats()
        return Run(t.name, g.passed, g.summary(), round(g.wall_seconds, 2), g.hog, g.vmstat,
                   None if cpu is None else round(cpu, 2), server)
    except (RuntimeError, OSError, KeyError) as e:
        return Run(t.name, False, f"{type(e).__name__}: {e} {common.tail(t.log)}", 0.0, {}, {})
    finally:
        t.stop()


def run(args: argparse.Namespace, progress=lambda msg: None) -> GuestBench:
    kernel = tools.find_kernel()
    cpus, pinning = _cpus()
    runs: list[Run] = []
    described: dict[str, str] = {}
    with common.workspace("ramster-bench-guest-", parent=args.tmpdir) as (tmp, procs):
        progress("building the initramfs")
        initrd = initramfs.build(kernel, tmp / "initramfs.gz")
        os.sched_setaffinity(0, {cpus["qemu"]})
        for _ in range(args.repeat):
            for name in args.targets:
                if name == "ramster":
                    t = RamsterTarget(args.memory, tmp, procs, cpus, args.size)
                elif name == "nbdkit":
                    t = NbdkitTarget(tmp, procs, cpus, args.size)
                else:
                    t = FileTarget(tmp, procs, cpus, args.size)
                runs.append(_one(t, kernel, initrd, args, progress))
                described[name] = t.describe()
    versions = {"qemu": common.version([tools.QEMU, "--version"]), "guest_kernel": kernel.version,
                "ramster": __version__}
    if "nbdkit" in args.targets:
        versions["nbdkit"] = common.version(["nbdkit", "--version"])
    settings = {"guest_memory_mib": args.guest_mib, "hog_mib": args.hog_mib, "seed": args.seed,
                "export_size": args.size, "ramster_memory": args.memory, "repeat": args.repeat,
                "targets": described,
                "qemu": "-machine q35,accel=tcg -cpu max -smp 1; virtio-blk, werror=report, rerror=report; "
                        "NBD targets through QEMU's built-in NBD client on a Unix socket"}
    return GuestBench(pinning=pinning, cpus=cpus, settings=settings, versions=versions, runs=runs)


# ---- output -------------------------------------------------------------------------------------

HEAD = ["target", "hog s", "fill s", "verify 1 s", "verify 2 s", "× nbdkit", "guest wall s", "server CPU s",
        "pswpout", "pswpin", "result"]


def _table(b: GuestBench) -> common.Table:
    rows = []
    for t in TARGETS:
        r = b.best(t) or next((x for x in b.runs if x.target == t), None)
        if r is None:
            continue
        h = r.hog
        ratio = b.ratio(t) if r.passed else None
        rows.append([t, fmt(h.get("total"), ".1f"), fmt(h.get("fill"), ".1f"), fmt(h.get("verify1"), ".1f"),
                     fmt(h.get("verify2"), ".1f"), fmt(ratio, ".2f"), fmt(r.wall_seconds, ".1f"),
                     fmt(r.server_cpu_seconds, ".1f"), fmt(r.vmstat.get("pswpout"), ","),
                     fmt(r.vmstat.get("pswpin"), ","), "PASS" if r.passed else f"FAIL: {r.verdict}"])
    return common.Table("ramster bench guest — the hog's time (guest clock), best run per target", HEAD, rows,
                        left=("target", "result"))


def _notes(b: GuestBench) -> list[str]:
    s = b.settings
    notes = [f"Pinning: {b.pinning}.",
             f"Guest: {b.versions['guest_kernel']}, {s['guest_memory_mib']} MiB, {s['qemu']}; "
             f"{b.versions['qemu']}. Hog: {s['hog_mib']} MiB, seed {s['seed']}. "
             f"Best of {s['repeat']} run(s) per target (targets interleaved)."]
    notes += [f"{name}: {d}." for name, d in s["targets"].items()]
    r = b.best("ramster")
    if r and r.server:
        v = r.server
        notes.append(f"ramster at the end: {v['frontswap.succ_stores']:,} stores, {v['frontswap.loads']:,} loads, "
                     f"{v['nbd_writes']:,} NBD writes and {v['nbd_reads']:,} reads, at most "
                     f"{v['zcache.pers_pageframes_max']:,} frames, {v['zcache.huge_pages_max']:,} huge pages at most, "
                     f"{v['nbd_errors']} errors.")
    return notes


def _acceptance_line(b: GuestBench) -> str:
    a = b.acceptance()
    if a["ratio"] is None:
        return f"{a['figure']}: not measured (a target failed or was not run)"
    return f"{a['figure']} = {a['ratio']:.2f} (acceptance ≤ {a['threshold']}): {'PASS' if a['passed'] else 'FAIL'}"


def as_markdown(b: GuestBench) -> str:
    return common.markdown(_notes(b), [_table(b)], [_acceptance_line(b)])


def print_table(b: GuestBench) -> None:
    common.print_report(_notes(b), [_table(b)], [_acceptance_line(b)])


# ---- command line ---------------------------------------------------------------------------------

def _targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown target {bad[0] if bad else text!r}; choose from {','.join(TARGETS)}")
    return list(dict.fromkeys(names))


def add_parser(bsub) -> None:
    p = bsub.add_parser("guest", help="a Linux guest (QEMU) swapping on ramster vs nbdkit memory and a raw file",
                        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=_targets, default=list(TARGETS), metavar="LIST",
                   help=f"comma-separated, run in this order (default {','.join(TARGETS)})")
    p.add_argument("--repeat", type=int, default=1, metavar="R", help="runs per target; the best is kept (default 1)")
    p.add_argument("--hog-mib", type=int, default=vm.HOG_MIB, metavar="MIB",
                   help=f"memory the hog fills (default {vm.HOG_MIB})")
    p.add_argument("--guest-mib", type=int, default=vm.GUEST_MEMORY_MIB, metavar="MIB",
                   help=f"the guest's memory (default {vm.GUEST_MEMORY_MIB})")
    p.add_argument("--seed", type=int, default=vm.SEED, metavar="N", help="the hog's seed (default 1)")
    p.add_argument("--size", default=str(DEFAULT_SIZE), metavar="SIZE", help="swap device size (default 1G)")
    p.add_argument("--memory", default=str(DEFAULT_MEMORY), metavar="SIZE",
                   help="ramster's memory budget (default 512M: room for every page)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SEC",
                   help=f"kill a guest still running after SEC seconds (default {DEFAULT_TIMEOUT})")
    p.add_argument("--tmpdir", metavar="DIR", help="where the initramfs, sockets and the raw file go "
                   "(default: the system's temp dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--markdown", action="store_true", help="print Markdown (for BENCHMARKS.md)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..units import parse_size

    try:
        args.size = parse_size(args.size, "--size")
        args.memory = parse_size(args.memory, "--memory")
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.repeat < 1:
        raise UserError("--repeat must be at least 1")
    if args.guest_mib < 64 or args.hog_mib < 1:
        raise UserError("--guest-mib must be at least 64 and --hog-mib at least 1")
    if args.size % 4096 or args.size < (args.hog_mib << 20):
        raise UserError("--size must be a multiple of 4096 and at least --hog-mib")
    if args.memory < 4096 or args.memory % 4096:
        raise UserError("--memory must be a positive multiple of 4096")
    missing = tools.check_all(("taskset",) + (("nbdkit",) if "nbdkit" in args.targets else ()))
    if missing:
        raise UserError("; ".join(str(m) for m in missing))
    quiet = (args.json or args.markdown) and not sys.stderr.isatty()
    t0 = time.monotonic()
    try:
        result = common.with_status("guest", quiet, lambda progress: run(args, progress))
    except (FileNotFoundError, RuntimeError, tools.MissingTool) as e:
        raise UserError(str(e)) from None
    result.settings["wall_seconds"] = round(time.monotonic() - t0, 1)
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    elif args.markdown:
        print(as_markdown(result))
    else:
        print_table(result)
    return 1 if any(not r.passed for r in result.runs) else 0
