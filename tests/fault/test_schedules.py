"""Random fault schedules (issue 8): a 3-node cluster, a workload checked by its history, one fault
or a short sequence. RAMSTER_FAULT_SEED=N[,M…] runs those seeds only; RAMSTER_FAULT_SCHEDULES=K
runs seeds 1..K (default 24: 12 per configuration); RAMSTER_FAULT_SEED_BASE=B shifts them to
B+1..B+K, to explore beyond the ones CI runs. The seeds in FOUND, which found a bug beyond
those, run with the default ones."""
from __future__ import annotations

import os

import pytest

from .env import import_nbd
from .schedule import make_schedule, run_schedule, failure_text

pytestmark = pytest.mark.fault


# 73: this node stopped past the idle timeout while it read pages from its peers (EIO on resume)
FOUND = (73,)


def _seeds() -> list[int]:
    given = os.environ.get("RAMSTER_FAULT_SEED", "").replace(",", " ").split()
    if given:
        return [int(x) for x in given]
    count = os.environ.get("RAMSTER_FAULT_SCHEDULES")
    base = int(os.environ.get("RAMSTER_FAULT_SEED_BASE", "0"))
    seeds = list(range(base + 1, base + int(count or 24) + 1))
    if count is None and not base:
        seeds += [s for s in FOUND if s not in seeds]
    return seeds


SCHEDULES = [make_schedule(s) for s in _seeds()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=[s.id() for s in SCHEDULES])
def test_schedule(schedule, tmp_path):
    import_nbd()
    out = run_schedule(schedule, tmp_path)
    print(schedule.describe())
    print("result:", out.report.summary(), "|", "; ".join(out.notes))
    print("timings:", ", ".join(f"{k} {v:.1f}s" for k, v in out.timings.items()))
    if not out.ok:
        out.history.dump(tmp_path / "history.jsonl")
    assert out.ok, failure_text(out) + f"\nhistory: {tmp_path / 'history.jsonl'}, node logs: {tmp_path}/*/node.err"
