"""`ramster bench cluster` end to end with tiny sizes: two nodes and redis-server on loopback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pages import corpus_path
from support import need

pytestmark = pytest.mark.interop

def test_bench_cluster_json(tmp_path):
    need("redis-server")
    work = tmp_path / "tmp"
    work.mkdir()
    env = dict(os.environ, TMPDIR=str(work))
    cmd = [sys.executable, "-m", "ramster.cli", "bench", "cluster", "--pages", "300", "--gets", "40",
           "--repeat", "2", "--json", "--corpus", str(corpus_path(tmp_path))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["pages"] == 300 and d["payload_bytes"] > 0
    assert "CPU" in d["pinning"]
    assert len(d["remotify_runs"]) == 2
    for run in d["remotify_runs"]:
        assert run["pages_moved"] == run["pages_in_frames"] == 300
        assert run["failed"] == 0 and not run["capped"] and run["frames_left"] == 0
    assert d["remotify_pps"] > 0 and d["redis_set_pps"] > 0
    for k in ("remote_get", "redis_get"):
        lat = d[k]
        assert lat["gets"] == 40 and 0 < lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
    assert d["ratios"]["remotify_vs_redis_set"] == pytest.approx(d["remotify_pps"] / d["redis_set_pps"])
    assert d["ratios"]["get_p50_vs_redis"] == pytest.approx(d["remote_get"]["p50_us"] / d["redis_get"]["p50_us"])
    assert set(d["acceptance"]) == {"remotify_ge_0.5x_redis_set", "get_p50_le_2x_redis", "passed"}
    # every temporary file removed, every process started gone
    assert list(work.iterdir()) == []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        assert str(work).encode() not in text, text


def test_bench_cluster_help():
    r = subprocess.run([sys.executable, "-m", "ramster.cli", "bench", "cluster", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "remotify" in r.stdout and "Redis" in r.stdout and "p50" in r.stdout
