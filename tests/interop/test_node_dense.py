"""The dense allocator in a running node (`ramster node --allocator dense`): corpus pages
written through NBD are read back intact, take fewer frames than zbud gives the same
pages, and leave for the swap disk when memory is squeezed."""
from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from pages import image
from prometheus_client.parser import text_string_to_metric_families
from support import NodeProcess, need

pytestmark = pytest.mark.interop

MiB = 1 << 20


def test_dense_node_stores_denser_and_writes_back(tmp_path):
    data = image(8 * MiB, "anon-python.pages")
    frames = {}
    for allocator in ("zbud", "dense"):
        swap = tmp_path / f"{allocator}.img"
        node = NodeProcess(tmp_path / allocator, "--memory", "16M", "--export", f"swap:swap:16M:{swap}",
                           "--allocator", allocator)
        try:
            node.swap_io(data)
            assert node.swap_io(size=len(data)) == data
            c = node.counters()
            frames[allocator] = c["zcache.pers_pageframes"]
            assert c[f"{allocator}.pers_pageframes"] == frames[allocator] > 0
            assert node.stats()["node"]["allocator"] == allocator
        finally:
            assert node.stop() == 0
    assert frames["dense"] < frames["zbud"] * 0.95, frames
    # squeezed into 1 MiB: zspages go to the swap disk whole, every page still reads back
    node = NodeProcess(tmp_path / "dense", "--memory", "1M", "--export", f"swap:swap:16M:{tmp_path}/dense.img",
                       "--allocator", "dense")
    try:
        node.swap_io(data)
        c = node.counters()
        assert c["zcache.writtenback_pages"] > 0 and c["dense.pers_pageframes"] <= 256
        assert node.swap_io(size=len(data)) == data
    finally:
        assert node.stop() == 0


def test_dense_node_reports_its_size_classes(tmp_path):
    need("promtool")
    data = image(4 * MiB, "anon-redis.pages")
    node = NodeProcess(tmp_path, "--memory", "16M", "--export", f"swap:swap:8M:{tmp_path}/swap.img",
                       "--allocator", "dense")
    try:
        node.swap_io(data)
        st = node.stats()
        rows = st["classes"]
        c = st["counters"]
        assert rows and {r["pool"] for r in rows} == {"pers"}
        assert sum(r["objects"] for r in rows) == c["dense.pers_zpages"]
        assert sum(r["frames"] for r in rows) == c["dense.pers_pageframes"]
        assert sum(r["unused_bytes"] for r in rows) >= 0
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=10) as r:
            text = r.read()
        samples = {(m.name, tuple(sorted(x.labels.items()))): x.value
                   for m in text_string_to_metric_families(text.decode()) for x in m.samples}
        for r in rows:
            labels = (("class_size", str(r["size"])), ("pool", "pers"))
            assert samples[("ramster_dense_class_objects", labels)] == r["objects"]
            assert samples[("ramster_dense_class_frames_bytes", labels)] == r["frames"] * 4096
        lint = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint
    finally:
        assert node.stop() == 0
    zbud = NodeProcess(tmp_path / "zbud", "--memory", "16M")
    try:
        assert zbud.stats()["classes"] == []
    finally:
        assert zbud.stop() == 0
