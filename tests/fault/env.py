"""What the fault suite needs from the machine: in CI a missing piece fails the test, elsewhere it skips."""
from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, why: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true and the fault suite cannot run: {why}")
    pytest.skip(why)


def import_nbd():
    """libnbd's Python binding (python3-libnbd, linked into the venv by scripts/bootstrap.sh)."""
    try:
        import nbd
    except ImportError as e:
        require(False, f"python libnbd is not importable ({e}); install python3-libnbd")
    return nbd
