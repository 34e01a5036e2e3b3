"""What the fault suite needs from the machine: in CI a missing piece fails the test, elsewhere it skips."""
from __future__ import annotations

import pytest
from support import IN_CI, need_nbd


def require(ok: bool, why: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true and the fault suite cannot run: {why}", pytrace=False)
    pytest.skip(why)


def import_nbd():
    """libnbd's Python binding (python3-libnbd, linked into the venv by scripts/bootstrap.sh)."""
    return need_nbd()
