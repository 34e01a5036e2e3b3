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
    "openssl": "openssl",
    "promtool": "prometheus",
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
    def __init__(self, tmp: Path, *args: str):
        self.sock = tmp / "nbd.sock"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path, self.stderr_path = tmp / "node.out", tmp / "node.err"
        cmd = [*RAMSTER, "node", "--listen", f"unix:{self.sock}", "--metrics", f"127.0.0.1:{self.port}", *args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=tmp)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        # poll the NBD socket and the metrics endpoint until both answer
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.stderr()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.sock))
                    s.settimeout(5)
                    assert s.recv(8) == b"NBDMAGIC"
                with urllib.request.urlopen(self.url + "/stats", timeout=5) as r:
                    json.load(r)
                return
            except (OSError, AssertionError):
                time.sleep(0.05)
        raise RuntimeError(f"node not ready after {timeout}s: {self.stderr()}")

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as r:
            return json.load(r)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        return stop_process(self.proc, timeout=30)
