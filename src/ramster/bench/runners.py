"""What `ramster bench nbd` runs against each target: fio jobs, timed copies, and kernel zram devices.

fio cannot write corpus pages; calibrate_fio() picks the buffer_compress_percentage
whose data lz4 compresses as much as the benchmark's image.

Each client runs to completion pinned to the client CPU, in its own process
group (common.run); a Measure is what one workload on one target gave.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..compress import get_codec
from ..units import PAGE_SIZE
from .common import children_cpu_seconds, pin, run

# ---- clients ------------------------------------------------------------------------------------

@dataclass
class Measure:
    """One workload on one target."""

    tool: str
    seconds: float
    bytes: int
    iops: float | None = None
    mb_s: float = 0.0
    # fio's lat (submission to completion): zram completes a bio inside io_submit, so its clat is ~0
    p50_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    clat_p50_us: float | None = None
    clat_p99_us: float | None = None
    # CPU time / wall time: which side was the bottleneck (each is pinned to one CPU)
    client_cpu: float | None = None
    server_cpu: float | None = None


def fio_json(text: str) -> dict:
    """The JSON document in fio's output (its nbd engine prints a line before it)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("fio printed no JSON")
    doc, _ = json.JSONDecoder().raw_decode(text[start:])
    return doc


def fio(cpu: int, target_args: list[str], rw: str, iodepth: int, runtime: float, size: int,
        data_args: list[str], out_path: Path) -> Measure:
    cmd = pin(cpu) + ["fio", "--name=bench", *target_args, f"--rw={rw}", "--bs=4k", f"--iodepth={iodepth}",
                      "--numjobs=1", "--time_based", f"--runtime={runtime:g}s", f"--size={size}",
                      "--norandommap", "--randrepeat=0", "--lat_percentiles=1", *data_args,
                      "--output-format=json", f"--output={out_path}"]
    c0 = children_cpu_seconds()
    r = run(cmd, timeout=runtime + 120)
    client_cpu = children_cpu_seconds() - c0
    text = out_path.read_text(errors="replace") if out_path.exists() else ""
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip() or text.strip()).splitlines()
        raise RuntimeError(f"fio {rw} QD{iodepth} failed (status {r.returncode}): {msg[-1] if msg else '?'}")
    job = fio_json(text or r.stdout)["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio {rw} QD{iodepth}: error {job['error']}")
    d = job["write" if "write" in rw else "read"]
    lat, clat = d["lat_ns"], d["clat_ns"]
    us = lambda h, k: h.get("percentile", {}).get(k, -1000) / 1000  # noqa: E731
    engine = next((a.split("=", 1)[1] for a in target_args if a.startswith("--ioengine=")), "?")
    return Measure(tool=f"fio {engine}" + (" direct" if "--direct=1" in target_args else ""),
                   seconds=d["runtime"] / 1000, bytes=d["io_bytes"], iops=d["iops"], mb_s=d["bw_bytes"] / 1e6,
                   p50_us=us(lat, "50.000000"), p99_us=us(lat, "99.000000"), mean_us=lat["mean"] / 1000,
                   clat_p50_us=us(clat, "50.000000"), clat_p99_us=us(clat, "99.000000"),
                   client_cpu=client_cpu / (d["runtime"] / 1000) if d["runtime"] else None)


def timed(cpu: int, cmd: list[str], nbytes: int, tool: str, timeout: float = 600) -> Measure:
    """Wall time of one copy (process start and connection setup included: a few ms)."""
    c0, t0 = children_cpu_seconds(), time.perf_counter()
    r = run(pin(cpu) + cmd, timeout=timeout)
    dt = time.perf_counter() - t0
    client_cpu = children_cpu_seconds() - c0
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise RuntimeError(f"{cmd[0]} failed (status {r.returncode}): {msg[-1] if msg else '?'}")
    return Measure(tool=tool, seconds=dt, bytes=nbytes, mb_s=nbytes / dt / 1e6, client_cpu=client_cpu / dt)


# ---- fio's data: compressing like the image ------------------------------------------------------

def fio_data_args(percent: int) -> list[str]:
    return [f"--buffer_compress_percentage={percent}", f"--buffer_compress_chunk={PAGE_SIZE}", "--refill_buffers"]


def _fio_lz4_ratio(percent: int, cpu: int, tmp: Path) -> float:
    path = tmp / "fio-data"
    r = run(pin(cpu) + ["fio", "--name=calibrate", "--ioengine=psync", "--rw=write", "--bs=4k",
                         "--size=4M", f"--filename={path}", *fio_data_args(percent), "--output-format=json"],
            timeout=60)
    try:
        if r.returncode != 0:
            raise RuntimeError(f"fio failed writing its test data: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        data = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
    compress = get_codec("lz4").compress
    n = len(data) // PAGE_SIZE
    return n * PAGE_SIZE / sum(min(len(compress(data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])), PAGE_SIZE)
                               for i in range(n))


def calibrate_fio(target_ratio: float, cpu: int, tmp: Path, forced: int | None) -> dict:
    """The buffer_compress_percentage whose data lz4 compresses closest to the image."""
    if forced is not None:
        percent, ratio = forced, _fio_lz4_ratio(forced, cpu, tmp)
    else:
        percent = max(0, min(99, round(100 * (1 - 1 / target_ratio))))
        ratio = _fio_lz4_ratio(percent, cpu, tmp)
        tried = {percent: ratio}
        # fio's random part is incompressible and its zeros nearly free: the ratio rises with the percentage
        step = 1 if ratio < target_ratio else -1
        while 0 <= percent + step <= 99 and len(tried) < 8:
            nxt = percent + step
            r = _fio_lz4_ratio(nxt, cpu, tmp)
            tried[nxt] = r
            if abs(r - target_ratio) >= abs(ratio - target_ratio):
                break
            percent, ratio = nxt, r
    return {"options": " ".join(a.lstrip("-") for a in fio_data_args(percent)), "buffer_compress_percentage": percent,
            "lz4_ratio": ratio, "image_lz4_ratio": target_ratio,
            "layout": f"each 4 KiB write: {100 - percent}% fresh random bytes, then zeros"}


# ---- kernel zram ---------------------------------------------------------------------------------

ZRAM_CONTROL = Path("/sys/class/zram-control")
MM_STAT = ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages",
           "pages_compacted", "huge_pages", "huge_pages_since")


def zram_unavailable() -> str | None:
    """Why a zram device cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (hot_add a zram device)"
    if not ZRAM_CONTROL.is_dir():
        return f"{ZRAM_CONTROL} does not exist (zram module not loaded, or no sysfs)"
    return None


def zram_recompress_unavailable(algorithm: str) -> str | None:
    """Why a zram device here cannot recompress with `algorithm`, or None (asks a device made for it)."""
    num = int((ZRAM_CONTROL / "hot_add").read_text().strip())
    try:
        recomp = Path(f"/sys/block/zram{num}/recomp_algorithm")
        if not recomp.exists():
            return "not available: this kernel's zram has no recomp_algorithm (CONFIG_ZRAM_MULTI_COMP)"
        algs = Path(f"/sys/block/zram{num}/comp_algorithm").read_text().replace("[", " ").replace("]", " ").split()
        if algorithm not in algs:
            return f"not available: this kernel's zram has no {algorithm} (has: {', '.join(algs)})"
        return None
    finally:
        (ZRAM_CONTROL / "hot_remove").write_text(str(num))


class ZramDevice:
    """A zram device made for the benchmark (hot_add) and removed afterwards (reset + hot_remove)."""

    def __init__(self, size: int, algorithm: str = "lz4", recompress: str | None = None):
        self.num: int | None = None
        self.num = int((ZRAM_CONTROL / "hot_add").read_text().strip())
        try:
            sysdir = self.sysdir
            algs = (sysdir / "comp_algorithm").read_text().replace("[", " ").replace("]", " ").split()
            if algorithm not in algs:
                raise RuntimeError(f"the kernel's zram has no {algorithm} (has: {', '.join(algs)})")
            (sysdir / "comp_algorithm").write_text(algorithm)
            if recompress is not None:  # a second algorithm is chosen before disksize, as the first is
                (sysdir / "recomp_algorithm").write_text(f"algo={recompress} priority=1")
            (sysdir / "disksize").write_text(str(size))
            self.path = Path(f"/dev/zram{self.num}")
            deadline = time.monotonic() + 10
            while not self.path.exists():  # udev may create the node a moment after hot_add
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.path} did not appear")
                time.sleep(0.01)
        except BaseException:
            self.remove()
            raise

    @property
    def sysdir(self) -> Path:
        return Path(f"/sys/block/zram{self.num}")

    def mm_stat(self) -> dict[str, int]:
        vals = (self.sysdir / "mm_stat").read_text().split()
        # older kernels print fewer fields
        return {k: int(v) for k, v in zip(MM_STAT, vals, strict=False)}

    def remove(self) -> None:
        if self.num is None:
            return
        num, self.num = self.num, None
        for attempt in range(50):  # the device stays busy while a just-killed client still holds it
            try:
                Path(f"/sys/block/zram{num}/reset").write_text("1")
                (ZRAM_CONTROL / "hot_remove").write_text(str(num))
                return
            except FileNotFoundError:
                return
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
