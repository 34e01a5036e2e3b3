"""A node gives its heap's free memory back to the kernel once a burst of NBD traffic stops
(heaptrim.py): counted in /stats and on /metrics."""
from __future__ import annotations

import urllib.request

import pytest
from pages import image
from support import NodeProcess, need_nbd

pytestmark = pytest.mark.interop

MiB = 1 << 20


def test_node_trims_its_heap_after_a_burst(tmp_path):
    nbd = need_nbd()
    node = NodeProcess(tmp_path, "--memory", "32M", "--export", f"swap:swap:16M:{tmp_path}/swap.img")
    try:
        s = node.stats()["counters"]
        assert s["heap.trims"] == 1  # once at start
        data = image(8 * MiB, "anon-python.pages")
        h = nbd.NBD()
        h.connect_uri(node.uri("swap"))
        for off in range(0, len(data), 256 << 10):
            h.pwrite(data[off:off + (256 << 10)], off)
        s = node.wait_for(lambda s: s["counters"]["heap.trims"] >= 2, "a heap trim after the writes")
        assert s["counters"]["heap.untrimmed_traffic_bytes"] == 0
        assert s["counters"]["heap.trimmed_bytes"] >= 0
        back = b"".join(h.pread(MiB, off) for off in range(0, len(data), MiB))
        assert back == data  # nothing a page needs went with it
        h.shutdown()
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert "ramster_heap_trims_total 2.0" in metrics or "ramster_heap_trims_total 3.0" in metrics
    finally:
        assert node.stop() == 0
