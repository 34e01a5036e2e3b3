"""Helpers shared by the tests that start real processes."""
from __future__ import annotations

import shutil
import socket

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
