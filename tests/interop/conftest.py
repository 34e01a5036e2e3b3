"""Run the NBD server as a subprocess (`python -m ramster ramdisk`) for real clients."""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import stop_process


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    socket: Path
    stderr_path: Path
    addresses: list[str] = field(default_factory=list)

    def uri(self, export: str = "disk") -> str:
        return f"nbd+unix:///{export}?socket={self.socket}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        return stop_process(self.proc, timeout=20)


def _wait_ready(proc: subprocess.Popen, timeout: float = 20.0) -> list[str]:
    """Read the server's stdout until it says "ready" (it prints after binding)."""
    addresses = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise RuntimeError("NBD server did not become ready in time")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"NBD server exited early with status {proc.wait()}")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode()
                if text.startswith("listening on "):
                    addresses.append(text.removeprefix("listening on "))
                elif text == "ready":
                    return addresses
    finally:
        sel.close()


@pytest.fixture
def nbd_server(tmp_path):
    """Factory: nbd_server("disk:64M", ...) -> a running ServerProcess."""
    started: list[ServerProcess] = []

    def start(*memory: str, read_only: bool = False, listen: tuple[str, ...] = ()) -> ServerProcess:
        n = len(started)
        sock = tmp_path / f"nbd{n}.sock"
        cmd = [sys.executable, "-m", "ramster", "ramdisk", "--listen", f"unix:{sock}", "-v"]
        for addr in listen:
            cmd += ["--listen", addr]
        for spec in memory or ("disk:64M",):
            cmd += ["--memory", spec]
        if read_only:
            cmd.append("--read-only")
        err_path = tmp_path / f"nbd{n}.stderr"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        server = ServerProcess(proc, sock, err_path)
        started.append(server)
        server.addresses = _wait_ready(proc)
        return server

    yield start
    for server in started:
        status = server.stop()
        log = server.stderr()
        assert "Traceback" not in log, log
        assert status == 0, f"server exited with {status}:\n{log}"



REPO = Path(__file__).resolve().parents[2]


def _working_tree_files() -> list[str]:
    """The files a clone of this checkout would hold, as they are now (uncommitted edits
    included, ignored files such as .venv left out)."""
    r = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True)
    return [f for f in r.stdout.decode().split("\0") if f and (REPO / f).is_file()]


def make_clone(dest: Path) -> Path:
    """A copy of the checkout as a fresh `git clone` would make it: no .venv, no build
    products, nothing beside it (so no ../shared/corpus)."""
    import shutil

    for f in _working_tree_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    return dest


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    return make_clone(tmp_path / "clone")


def fresh_environment() -> dict[str, str]:
    """The environment of a fresh login shell: no virtualenv on PATH, none of the test
    run's PYTHONPATH or corpus, so the clone's own .venv and files are what runs."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAMSTER_CORPUS", "NOTIFY_SOCKET", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if d and not (Path(d).parent / "pyvenv.cfg").exists())
    return env
