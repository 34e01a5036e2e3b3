"""Processes for `ramster bench nbd`: pinned servers, fio, nbdcopy, dd, and kernel zram devices.

Every child runs in its own session (so its whole process group can be
killed) and dies with the benchmark (PR_SET_PDEATHSIG), and `Procs.close()`
terminates whatever is still running, so an error or a SIGTERM half-way
through leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# tool -> the Debian package that provides it
PACKAGES = {
    "nbdkit": "nbdkit",
    "nbdcopy": "libnbd-bin",
    "fio": "fio",
    "taskset": "util-linux",
    "dd": "coreutils",
}


class ToolError(RuntimeError):
    """Something the benchmark needs is missing or broken; the message is one line for the user."""


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolError(f"{tool} is not installed (Debian package {PACKAGES.get(tool, tool)}: "
                        f"apt-get install {PACKAGES.get(tool, tool)}, or run scripts/bootstrap.sh)")
    return path


def version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)]


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# looked up here, not in the forked child: the progress display runs a thread, and
# importing in a child forked from a threaded process can deadlock on the import lock
_PRCTL = _load_prctl()


def _child_setup() -> None:
    """In the child before exec: SIGKILL it if the benchmark itself dies."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Procs:
    """Long-running children (servers), each stopped by stop() or close(), whatever happened."""

    def __init__(self) -> None:
        self._procs: list[tuple[subprocess.Popen, object]] = []

    def start(self, cmd: list[str], log_path: Path, cwd: Path) -> subprocess.Popen:
        out = open(log_path, "wb")
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                 start_new_session=True, preexec_fn=_child_setup)
        except BaseException:
            out.close()
            raise
        self._procs.append((p, out))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 20) -> None:
        for i, (q, out) in enumerate(self._procs):
            if q is p:
                del self._procs[i]
                _stop(q, timeout)
                out.close()
                return

    def close(self) -> None:
        for p, _ in self._procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGTERM)
        for p, out in self._procs:
            _stop(p, 10)
            out.close()
        self._procs.clear()


def _stop(p: subprocess.Popen, timeout: float) -> None:
    if p.poll() is None:
        _kill_group(p, signal.SIGTERM)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p, signal.SIGKILL)
        p.wait()
    # anything the server left in its group (there should be nothing)
    _kill_group(p, signal.SIGKILL)


def cpu_seconds(pid: int) -> float:
    """User + system time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a client to completion in its own process group; the group is killed on timeout or error."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                         start_new_session=True, preexec_fn=_child_setup)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        _kill_group(p, signal.SIGKILL)
        p.wait()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def tail(path: Path, n: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def wait_unix_socket(path: Path, proc: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    """Poll until a server accepts connections on `path`; RuntimeError if it exits or never does."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}: {tail(log_path) or 'no output'}")
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(path))
                    return
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"did not accept connections on {path} within {timeout:.0f} s: {tail(log_path)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, proc: subprocess.Popen, timeout: float = 30) -> dict:
    """GET a JSON document, retrying while the server is starting (its HTTP side binds first)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def allocated_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


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


class ZramDevice:
    """A zram device made for the benchmark (hot_add) and removed afterwards (reset + hot_remove)."""

    def __init__(self, size: int, algorithm: str = "lz4"):
        self.num: int | None = None
        self.num = int((ZRAM_CONTROL / "hot_add").read_text().strip())
        try:
            sysdir = self.sysdir
            algs = (sysdir / "comp_algorithm").read_text().replace("[", " ").replace("]", " ").split()
            if algorithm not in algs:
                raise RuntimeError(f"the kernel's zram has no {algorithm} (has: {', '.join(algs)})")
            (sysdir / "comp_algorithm").write_text(algorithm)
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
