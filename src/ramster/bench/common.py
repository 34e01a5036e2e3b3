"""What every `ramster bench` shares: child processes, tools, ports, CPU pinning, tables.

A benchmark runs servers and clients as children. Every child runs in its own
session (so its whole process group can be killed), pinned to a CPU with
taskset, and dies with the benchmark (PR_SET_PDEATHSIG); `Procs.close()`
terminates whatever is still running, and `workspace()` turns SIGTERM into an
unwinding exit, so an error or a SIGTERM half-way through leaves no process
and no file behind. A missing tool is one line naming its Debian package
(ToolError); the benchmarks never install anything themselves
(scripts/bootstrap.sh --bench does).

Results are shown as a rich table on a terminal or as Markdown for
BENCHMARKS.md: a benchmark builds `Table`s (title, header, rows of strings)
and notes once, and `print_report()` / `markdown()` render them.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..heaptrim import MIN_BYTES as HEAP_TRIM_MIN_BYTES

# tool -> the Debian package that provides it
PACKAGES = {
    "nbdkit": "nbdkit",
    "nbdcopy": "libnbd-bin",
    "fio": "fio",
    "taskset": "util-linux",
    "dd": "coreutils",
    "redis-server": "redis-server",
}


class ToolError(RuntimeError):
    """Something the benchmark needs is missing or broken; the message is one line for the user."""


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolError(f"{tool} is not installed (Debian package {PACKAGES.get(tool, tool)}: "
                        f"apt-get install {PACKAGES.get(tool, tool)}, or run scripts/bootstrap.sh --bench)")
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

    def start(self, cmd: list[str], log_path: Path, cwd: Path, cpu: int | None = None) -> subprocess.Popen:
        """Start `cmd` (pinned to `cpu` with taskset if given), its output into log_path."""
        out = open(log_path, "wb")
        try:
            p = subprocess.Popen((pin(cpu) if cpu is not None else []) + cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True, preexec_fn=_child_setup)
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


def wait_quiet_heap(url: str, proc: subprocess.Popen, timeout: float = 30) -> dict:
    """/stats of a ramster node once it has trimmed its heap after the last traffic
    (heaptrim.py: within two seconds of going quiet), so RSS is what the node keeps,
    not what a burst left free in the heap. A node without the counter is taken as is."""
    deadline = time.monotonic() + timeout
    while True:
        st = get_json(url, proc)
        c = st["counters"]
        if c.get("heap.untrimmed_traffic_bytes", 0) < HEAP_TRIM_MIN_BYTES:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node did not trim its heap within {timeout:.0f} s of going quiet")
        time.sleep(0.1)


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


@contextlib.contextmanager
def workspace(prefix: str, cpu: int | None = None, parent: str | None = None):
    """(tmp directory, Procs) for one benchmark run; on leaving, by return, error or SIGTERM,
    every child is stopped, the directory removed and this process' CPU affinity restored.
    With `cpu`, this process is pinned there meanwhile."""
    old_affinity = os.sched_getaffinity(0)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    procs = Procs()

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through the finally below

    old_term = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        yield tmp, procs
    finally:
        signal.signal(signal.SIGTERM, old_term)
        procs.close()
        os.sched_setaffinity(0, old_affinity)
        shutil.rmtree(tmp, ignore_errors=True)


def two_cpus() -> tuple[int, int]:
    """(server CPU, client CPU): the last and the first this process may use (the same one if only one)."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[-1], allowed[0]


# ---- tables ------------------------------------------------------------------------------------

def fmt(v, spec: str) -> str:
    """A number for a table cell; a dash when it was not measured."""
    return "–" if v is None else format(v, spec)


@dataclass
class Table:
    title: str
    head: list[str]
    rows: list[list[str]] = field(default_factory=list)
    left: tuple[str, ...] = ("target",)  # columns of words (left-aligned); the others hold numbers

    def markdown(self) -> list[str]:
        align = "|" + "".join("---|" if c in self.left else "---:|" for c in self.head)
        return ["| " + " | ".join(self.head) + " |", align] + ["| " + " | ".join(r) + " |" for r in self.rows]


def markdown(notes: list[str], tables: list[Table], after: list[str]) -> str:
    """Notes as paragraphs, the tables, then `after` as a list (the acceptance lines)."""
    lines = list(notes)
    for t in tables:
        lines += [""] + t.markdown()
    if after:
        lines += [""] + [f"- {a}" for a in after]
    return "\n".join(lines)


def print_report(notes: list[str], tables: list[Table], after: list[str], width: int = 120) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    out = Console(width=max(Console().width, width))
    for n in notes:
        out.print(n, highlight=False)
    for t in tables:
        rt = RichTable(title=t.title)
        for col in t.head:
            rt.add_column(col, justify="left" if col in t.left else "right")
        for r in t.rows:
            rt.add_row(*r)
        out.print(rt)
    for line in after:
        out.print(line, highlight=False)


def with_status(name: str, quiet: bool, fn):
    """fn(progress): progress messages go to a spinner on stderr unless quiet."""
    if quiet:
        return fn(lambda msg: None)
    from rich.console import Console

    with Console(stderr=True).status(f"bench {name}") as status:
        return fn(lambda msg: status.update(f"bench {name}: {msg}"))
