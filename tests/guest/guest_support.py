"""Helpers of the guest tests: what to do when a tool is missing, and `ramster node` processes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import support
from support import free_port, stop_process

from ramster.guest import tools

RAMSTER = [sys.executable, "-m", "ramster.cli"]


def require(*extra: str) -> None:
    """Skip when something the guest needs is missing; in CI, fail and name the Debian package instead."""
    missing = tools.check_all(extra)
    if not missing:
        return
    support.missing("the guest cannot boot: " + "; ".join(m.what for m in missing), [m.package for m in missing])


class Node:
    """A `ramster node` process serving NBD on a Unix socket, with /stats on a free port."""

    def __init__(self, tmp: Path, name: str, memory: str, *exports: str, config: Path | None = None):
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir(exist_ok=True)
        self.sock = self.dir / "nbd.sock"
        self.url = f"http://127.0.0.1:{free_port()}"
        cmd = [*RAMSTER, "node", "--memory", memory, "--listen", f"unix:{self.sock}",
               "--metrics", self.url.removeprefix("http://"), "--log-level", "info"]
        if config is not None:
            cmd += ["--config", str(config), "--name", name]
        for e in exports:
            cmd += ["--export", e]
        self.log = self.dir / "node.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        self.returncode: int | None = None
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        # the node answers /stats once its NBD listeners and exports are up
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited with {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                self.stats()
                if self.sock.exists():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} not ready after {timeout} s: {self.output()[-3000:]}")
            time.sleep(0.05)

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as r:
            return json.load(r)

    def wait_for(self, predicate, what: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if predicate(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.name}: {what} did not happen in {timeout} s")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.returncode is None:
            self.returncode = stop_process(self.proc, timeout=60)
        return self.returncode
