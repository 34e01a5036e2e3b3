"""`ramster bench density` end to end on 4 MiB images: every target and variant has a row, every measured
figure is a number, what is missing says why, and nothing is left behind.

The guest-swap workload boots the guest once (in the JSON test, ~1 min with TCG); the other runs do
without it, one on a PATH without QEMU (the workload says why it is not available), one with --no-guest."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import need, need_guest

from ramster.bench.density import GUEST, TARGETS, WORKLOADS
from ramster.bench.density_rates import VARIANTS

pytestmark = pytest.mark.interop

TINY = ("--held-out-size", "4M", "--workers-size", "4M", "--workers", "2", "--guest-size", "4M",
        "--rate-pages", "1024", "--repeat", "1")


def bench(*args: str, tmp: Path, timeout: float = 300, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmp), PATH=path or os.environ["PATH"])
    return subprocess.run([sys.executable, "-m", "ramster.cli", "bench", "density", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp)


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def zram_devices() -> set[str]:
    return {p.name for p in Path("/sys/block").glob("zram*")}


def test_bench_density_json(tmp_path):
    need("nbdkit", "nbdcopy", "taskset")
    need_guest()
    work = tmp_path / "tmp"
    work.mkdir()
    zram_before = zram_devices()
    r = bench(*TINY, "--json", tmp=work, timeout=900)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert "taskset -c" in d["pinning"] and "the guest's QEMU) on CPU" in d["pinning"]
    assert d["workloads"] == {wl: {"status": "ok", "reason": ""} for wl in WORKLOADS}
    for wl in WORKLOADS:
        img = d["images"][wl]
        assert img["size"] == 4 << 20 and img["pages"] == 1024 and img["lz4_ratio"] > 1
    # the held-out pages repeat nothing; the forked workers share pages they never wrote
    assert d["images"]["held-out"]["duplicate_share"] < 0.05
    assert d["images"]["workers"]["duplicate_share"] > 0.2
    # the guest's hog (400 MiB in 160 MiB) passed and swapped far more than the 4 MiB kept; its pages are
    # all different but for same-filled ones, a quarter of its kinds
    g = d["images"][GUEST]
    assert g["swap_written_bytes"] > 100 << 20 and g["vmstat"]["pswpout"] > 25000 and g["hog"]["total"] > 0, g
    assert g["duplicate_share"] < 0.05 and 0.1 < g["same_filled_pages"] / g["pages"] < 0.5, g
    assert d["versions"]["qemu"] and d["versions"]["guest_kernel"] == g["kernel"]
    # one row per target and image, in order, each measured or saying why not
    assert [(s["target"], s["workload"]) for s in d["stored"]] == [(t, wl) for wl in WORKLOADS for t in TARGETS]
    for s in d["stored"]:
        if s["status"] == "ok":
            assert number(s["memory"]["memory_per_original_byte"]), s
            assert s["memory"]["memory_per_original_byte"] < 1.5, s  # compressible pages cost less than their size
        else:
            assert s["status"] == "not available" and s["reason"], s
    by = {(s["target"], s["workload"]): s for s in d["stored"]}
    for wl in WORKLOADS:
        # this ramster has every allocator and feature: each of its targets is measured
        for t in TARGETS:
            if not t.startswith("zram"):
                assert by[(t, wl)]["status"] == "ok", by[(t, wl)]
        assert by[("ramster-zbud", wl)]["memory"]["counters"]["zcache.pers_zpages"] > 0
        # recompression ran through ramster ctl and kept pages in the second codec
        for t in ("ramster-zbud+recompress", "ramster-dense+recompress"):
            assert by[(t, wl)]["settle"]["counters"]["zcache.recompressed"] > 0, by[(t, wl)]
        assert by[("ramster-dense+dedup", wl)]["memory"]["counters"]["zcache.dedup_pages"] >= 0
    assert by[("ramster-dense+dedup", "workers")]["memory"]["counters"]["zcache.dedup_hits"] > 0
    if os.geteuid() != 0:
        assert all(by[(t, wl)]["status"] == "not available" for t in TARGETS if t.startswith("zram")
                   for wl in WORKLOADS)
    # rates: every variant on every image, ratios to the floor are numbers
    assert [(r["workload"], r["variant"]) for r in d["rates"]] == [(wl, v[0]) for wl in WORKLOADS for v in VARIANTS]
    for rate in d["rates"]:
        if rate["status"] == "ok":
            for k in ("put_pps", "get_pps", "put_ratio", "get_ratio", "bytes_per_original_byte"):
                assert number(rate[k]), (rate, k)
        else:
            assert rate["status"] == "not available" and rate["reason"], rate
    assert all(r["status"] == "ok" for r in d["rates"])
    rate = {(r["workload"], r["variant"]): r for r in d["rates"]}
    # the frames each variant used: recompression packs dense's objects tighter, dedup keeps the
    # workers' duplicate pages once (which of zbud and dense wins on 1024 pages is not a property)
    frames = lambda wl, v: rate[(wl, v)]["bytes_per_original_byte"]  # noqa: E731
    assert frames("held-out", "dense+recompress") < frames("held-out", "dense")
    assert rate[("held-out", "dense+recompress")]["recompressed"] > 0
    assert frames("workers", "dense+dedup") < 0.8 * frames("workers", "dense")
    acc = d["acceptance"]
    assert len(acc) == 5
    for a in acc:
        assert (a["value"] is None and a["note"]) or (isinstance(a["value"], float) and a["passed"] in (True, False))
    # every temporary file removed, every process started gone, every zram device made removed
    assert list(work.iterdir()) == []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        assert str(work).encode() not in text, text
    assert zram_devices() == zram_before


def host_bin_without_qemu(tmp: Path) -> str:
    """A PATH of only the commands the bench runs besides the guest's: a host where QEMU is not installed."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("taskset", "nbdcopy", "nbdkit"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def test_bench_density_markdown_without_qemu(tmp_path):
    """The guest cannot boot: guest-swap is in every table, saying why, not silently left out."""
    need("nbdkit", "nbdcopy", "taskset")
    r = bench(*TINY, "--targets", "ramster-zbud,nbdkit-zstd", "--markdown", tmp=tmp_path,
              path=host_bin_without_qemu(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{GUEST}: not available: qemu-system-x86_64 is missing" in r.stdout
    tables = [block.splitlines() for block in r.stdout.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 2
    mem, rates = tables
    assert f"| {GUEST}: B per orig. B |" in mem[0]
    assert len(mem) == 2 + 2 and mem[2].startswith("| ramster-zbud | 0.") and mem[3].startswith("| nbdkit-zstd | 0.")
    assert [c.strip() for c in mem[2].strip("|").split("|")][3] == "–"
    assert len(rates) == 2 + len(WORKLOADS) * len(VARIANTS)
    zbud = [row for row in rates if "| zbud |" in row]
    assert len(zbud) == len(WORKLOADS)
    for row in zbud:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[0] == GUEST:
            assert cells[-1] == f"not available: no {GUEST} image (see its note)", row
        else:
            assert float(cells[3]) > 0 and float(cells[5]) > 0  # × floor, put and get
    assert "Pinning: servers" in r.stdout


def test_bench_density_no_guest(tmp_path):
    """--no-guest leaves the workload out on purpose, and says so."""
    need("nbdcopy", "taskset")
    r = bench(*TINY, "--targets", "ramster-zbud", "--no-guest", "--markdown", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{GUEST}: left out: --no-guest." in r.stdout
    mem, rates = [block for block in r.stdout.split("\n\n") if block.startswith("| ")]
    assert GUEST not in mem and GUEST not in rates and "| workers |" in rates


def test_bench_density_user_errors(tmp_path):
    r = bench("--targets", "ramster-zbud,zswap", tmp=tmp_path, timeout=60)
    assert r.returncode == 2 and "unknown target 'zswap'" in r.stderr
    r = bench("--workers", "1", tmp=tmp_path, timeout=60)
    assert r.returncode == 2 and "--workers" in r.stderr
    r = bench("--guest-size", "5000", tmp=tmp_path, timeout=60)
    assert r.returncode == 2 and "--guest-size must be a multiple of 4096" in r.stderr
