"""Helpers shared by the tests that start real processes.

A test that drives a real client (nbdinfo, fio, qemu-img, libnbd's binding, ...)
asks for it with need()/need_nbd(). Outside CI a missing one skips the test, so
a laptop without QEMU can still run the rest; with CI=true it fails the test and
names the Debian package, because a CI run that silently skipped every
real-client test would pass while proving nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NoReturn

import pytest

RAMSTER = [sys.executable, "-m", "ramster.cli"]


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# command -> the Debian package that provides it (scripts/bootstrap.sh installs them;
# --test adds QEMU and the guest's kernel and tools)
PACKAGES = {
    "nbdkit": "nbdkit",
    "nbdinfo": "libnbd-bin",
    "nbdcopy": "libnbd-bin",
    "nbdsh": "libnbd-bin",
    "fio": "fio",
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "redis-server": "redis-server",
    "taskset": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "openssl": "openssl",
    "promtool": "prometheus",
    "systemd-analyze": "systemd",
    "curl": "curl",
    "cmp": "diffutils",
}


def missing(what: str, packages: list[str] | tuple[str, ...]) -> NoReturn:
    """Something the test needs is not on this machine: skip, or with CI=true fail, naming the packages."""
    pkgs = " ".join(sorted(set(packages)))
    why = f"{what} (Debian package {pkgs}: apt-get install {pkgs}, or run scripts/bootstrap.sh --test)"
    if IN_CI:
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


def need(*tools: str) -> None:
    """The test drives these commands: each must be on PATH (see missing())."""
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        missing(f"not installed: {', '.join(absent)}", [PACKAGES.get(t, t) for t in absent])


def need_guest(*extra: str) -> None:
    """The test boots the guest (ramster.guest): QEMU, a Debian kernel, busybox-static, musl-gcc, and the
    `extra` commands must be there (see missing())."""
    from ramster.guest import tools

    absent = tools.check_all(extra)
    if absent:
        missing("the guest cannot boot: " + "; ".join(m.what for m in absent), [m.package for m in absent])


def need_nbd():
    """libnbd's Python binding: Debian's python3-libnbd, which bootstrap.sh links into the venv."""
    try:
        import nbd
    except ImportError as e:
        missing(f"libnbd's Python binding is not importable ({e})", ["python3-libnbd"])
    return nbd


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same one twice in this process
    (the kernel may hand a just-closed port out again, and two nodes of one cluster
    file must not get one address)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, wait, and SIGKILL only if it does not end in time; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class NodeProcess:
    """One `ramster node` process: NBD on a Unix socket in its own directory, /stats and
    /metrics on a free loopback port, its output in node.out and node.err there.

    Started and waited for at construction unless start=False. start() and wait_ready()
    start it again on the same directory, socket and ports (a restart), the logs appended
    after a marker line. stop() sends SIGCONT first, so a paused node sees its SIGTERM.
    Subclasses change command() (the fault suite's nodes rewrite their cluster file on
    every start)."""

    stats_timeout = 10.0

    def __init__(self, dir: Path, *args: str, name: str = "node", start: bool = True, timeout: float = 30.0):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.args = list(args)
        self.sock = self.dir / "nbd.sock"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path, self.stderr_path = self.dir / "node.out", self.dir / "node.err"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.paused = False
        if start:
            self.start()
            self.wait_ready(time.monotonic() + timeout)

    def command(self) -> list[str]:
        return [*RAMSTER, "node", "--listen", f"unix:{self.sock}", "--metrics", f"127.0.0.1:{self.port}", *self.args]

    def start(self) -> None:
        """Start the process; wait_ready() waits for it."""
        assert not self.alive(), f"node {self.name} is running"
        self.starts += 1
        mode = "wb" if self.starts == 1 else "ab"
        with open(self.stdout_path, mode) as out, open(self.stderr_path, mode) as err:
            if self.starts > 1:
                err.write(f"==== start #{self.starts} at {time.monotonic():.3f} ====\n".encode())
                err.flush()
            # its own session: a Ctrl-C meant for pytest does not reach the node
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=self.dir, start_new_session=True)
        self.paused = False

    def wait_ready(self, deadline: float | None = None) -> None:
        """Until the NBD socket answers with the greeting and /stats answers (or the node exits)."""
        if deadline is None:
            deadline = time.monotonic() + 30.0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(self.sock))
                    if s.recv(8) != b"NBDMAGIC":
                        raise OSError("no NBD greeting")
                self.stats()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} not ready in time:\n{self.log_tail()}")
            time.sleep(0.05)

    def swap_io(self, data: bytes | None = None, size: int = 0, export: str = "swap") -> bytes:
        """Write `data` to the export from offset 0, or read `size` bytes back, in 1 MiB
        requests over one libnbd connection."""
        h = need_nbd().NBD()
        h.connect_uri(self.uri(export))
        mib = 1 << 20
        if data is not None:
            for off in range(0, len(data), mib):
                h.pwrite(data[off:off + mib], off)
            out = b""
        else:
            out = b"".join(h.pread(min(mib, size - off), off) for off in range(0, size, mib))
        h.shutdown()
        return out

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def stats(self, timeout: float | None = None) -> dict:
        with urllib.request.urlopen(self.url + "/stats", timeout=timeout or self.stats_timeout) as r:
            return json.load(r)

    def counters(self) -> dict:
        return self.stats()["counters"]

    def peer(self, name: str) -> dict:
        return next(p for p in self.stats()["peers"] if p["name"] == name)

    def wait_for(self, predicate, what: str, timeout: float = 30) -> dict:
        """Poll /stats until predicate(stats) holds; AssertionError with the stats and the log if not in time."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if predicate(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.name}: {what} did not happen in {timeout} s; "
                                     f"stats={json.dumps(s)[:2000]}\nlog:\n{self.log_tail()}")
            time.sleep(0.05)  # a poll interval, not synchronisation: the predicate decides

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 30) -> int | None:
        """SIGCONT + SIGTERM (a clean stop: requests in flight finish, files are synced), SIGKILL
        if it does not end in time; its exit status (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False
        return stop_process(self.proc, timeout)
