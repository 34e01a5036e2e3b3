"""`ramster bench nbd` end to end with a tiny image and 1 s fio jobs: every target, sane numbers, nothing left."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pages import corpus_path
from support import need

from ramster.bench.nbd import TARGETS, WORKLOADS
from ramster.bench.runners import fio_json

pytestmark = pytest.mark.interop

def bench(*args: str, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.run([sys.executable, "-m", "ramster.cli", "bench", "nbd", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp)


def test_bench_nbd_json(tmp_path):
    need("nbdkit", "nbdcopy", "fio", "taskset")
    work = tmp_path / "tmp"
    work.mkdir()
    r = bench("--image-size", "4M", "--runtime", "1", "--json", "--no-chart", "--corpus", str(corpus_path(tmp_path)),
              tmp=work)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d["targets"]) == set(TARGETS)
    assert "CPU" in d["pinning"] and "taskset -c" in d["pinning"]
    assert d["image"]["size"] == 4 << 20 and d["image"]["lz4_ratio"] > 1
    assert 0 <= d["fio_data"]["buffer_compress_percentage"] <= 99 and d["fio_data"]["lz4_ratio"] > 1
    # fio's data was chosen to compress like the image
    assert d["fio_data"]["lz4_ratio"] == pytest.approx(d["image"]["lz4_ratio"], rel=0.15)
    for name, t in d["targets"].items():
        if name == "zram" and t["status"] == "skipped":
            assert t["reason"]
            continue
        assert t["status"] == "ok", (name, t["reason"])
        assert set(t["workloads"]) == set(WORKLOADS)
        for wl, m in t["workloads"].items():
            assert m["mb_s"] > 0 and m["seconds"] > 0, (name, wl)
            if not wl.startswith("seq"):
                assert m["iops"] > 0 and m["mb_s"] == pytest.approx(m["iops"] * 4096 / 1e6, rel=0.05), (name, wl)
                assert 0 < m["p50_us"] <= m["p99_us"], (name, wl)
            if name != "zram":  # (CPU time ticks at 10 ms: a tiny copy may not register)
                assert m["server_cpu"] > 0 if not wl.startswith("seq") else m["server_cpu"] >= 0, (name, wl)
        for snap in (t["after_image"], t["end"]):
            assert snap["memory_bytes"] > 0 and snap["memory_per_original_byte"] > 0
        if name == "nbdkit-malloc":
            assert all(v["vs_nbdkit_malloc"] == pytest.approx(1) for v in t["ratios"].values())
    ram = d["targets"]["ramster"]["after_image"]
    assert ram["compression_ratio"] > 1 and ram["pers_zpages"] > 0 and ram["nbd_errors"] == 0
    zram = d["targets"]["zram"]
    if zram["status"] == "ok":
        assert zram["after_image"]["compression_ratio"] > 1
        assert not Path("/sys/block", zram["end"]["device"]).exists()  # hot_removed
    acc = d["acceptance"]
    assert len(acc) == 3 and all(a["ratio"] is not None and a["ratio"] > 0 for a in acc[:2])
    # every temporary file removed, every process started gone
    assert list(work.iterdir()) == []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        assert str(work).encode() not in text, text


def test_bench_nbd_user_errors(tmp_path):
    r = bench("--targets", "ramster,qemu", tmp=tmp_path, timeout=60)
    assert r.returncode == 2 and "unknown target 'qemu'" in r.stderr
    r = bench("--image-size", "12345", tmp=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--image-size" in r.stderr


def test_fio_json_skips_the_engine_banner():
    assert fio_json('fio: connected to NBD server\n{\n "jobs": [ {"x": 1} ]\n}\n') == {"jobs": [{"x": 1}]}
