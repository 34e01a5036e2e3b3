"""`ramster bench guest` end to end, with a hog small enough that the guest barely swaps (~15 s)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from guest_support import require

pytestmark = pytest.mark.guest


def test_bench_guest_runs_every_target_and_reports_ratios(tmp_path):
    require("nbdkit", "taskset")
    r = subprocess.run([sys.executable, "-m", "ramster.cli", "bench", "guest", "--hog-mib", "8", "--guest-mib", "96",
                        "--size", "64M", "--memory", "32M", "--tmpdir", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert [run["target"] for run in doc["runs"]] == ["ramster", "nbdkit", "file"]
    for run in doc["runs"]:
        assert run["passed"], run["verdict"]
        assert run["hog"]["total"] > 0 and run["hog"]["host"] > 0, run
    assert doc["ratios"]["nbdkit"] == 1.0 and doc["ratios"]["ramster"] > 0
    assert doc["runs"][0]["server"]["nbd_errors"] == 0
    if len(os.sched_getaffinity(0)) > 1:
        assert doc["cpus"]["server"] != doc["cpus"]["qemu"], doc["pinning"]
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
