"""Helpers shared by the tests that start real processes."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess

import pytest


def need(*tools: str) -> None:
    """Skip the test when a client it drives is not installed (scripts/bootstrap.sh installs them all)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
