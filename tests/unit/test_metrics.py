"""/metrics and /stats over real HTTP on loopback (port 0), reading a real node's counters."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ramster.cli import stats as stats_cli
from ramster.config import build
from ramster.metrics import MetricsServer, is_gauge
from ramster.node import Node

PAGE = 4096


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()  # the server closes after one response
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def make_node(tmp_path) -> Node:
    cfg = build(memory="1M", exports=["swap:swap:1M", f"disk:cache:1M:{tmp_path}/disk.img"],
                metrics="127.0.0.1:0", listen=[f"unix:{tmp_path}/nbd.sock"])
    return Node(cfg)


def test_metrics_and_stats(tmp_path):
    node = make_node(tmp_path)
    swap, disk = node.exports["swap"], node.exports["disk"]

    async def go():
        await swap.write(0, b"ab" * PAGE)
        await swap.read(0, PAGE)
        await disk.read(0, PAGE)
        await disk.read(0, PAGE)
        swap.counters.reads += 1  # the server counts requests; stand in for it
        srv = MetricsServer(node.stats)
        await srv.start("127.0.0.1", 0)
        try:
            status, headers, body = await http(srv.port, get("/metrics"))
            assert status == 200
            assert headers["Content-Type"].startswith("text/plain")
            assert int(headers["Content-Length"]) == len(body)
            metrics = body.decode()

            status, headers, body = await http(srv.port, get("/stats?x=1"))
            assert status == 200 and headers["Content-Type"] == "application/json"
            stats = json.loads(body)

            status, _, body = await http(srv.port, get("/nope"))
            assert status == 404
            status, _, _ = await http(srv.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            assert status == 405
            status, _, _ = await http(srv.port, b"garbage\r\n\r\n")
            assert status == 400
            status, headers, body = await http(srv.port, b"HEAD /stats HTTP/1.1\r\n\r\n")
            assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
            # `ramster stats` reads the same document and sums it up like zramctl
            loop = asyncio.get_running_loop()
            fetched = await loop.run_in_executor(None, stats_cli.fetch, f"127.0.0.1:{srv.port}/metrics")
            summary = stats_cli.summary(fetched)
            assert summary["original"] == 3 * PAGE  # two swap pages and one cached page
            assert summary["memory_used"] == (summary["eph_pageframes"] + summary["pers_pageframes"]) * PAGE
            assert summary["memory_limit"] == 1 << 20
            # a client that connects and says nothing does not block the others
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            status, _, _ = await http(srv.port, get("/stats"))
            assert status == 200
            w.close()
        finally:
            await srv.stop()
        return metrics, stats

    metrics, stats = asyncio.run(go())
    fams = {f.name: f for f in text_string_to_metric_families(metrics)}
    # every engine counter is there, as a counter or a gauge
    for key, value in stats["counters"].items():
        name = "ramster_" + key.replace(".", "_")
        if not is_gauge(key):  # a counter family is named without its _total suffix
            name = name.removesuffix("_total")
        assert name in fams, name
        assert fams[name].type == ("gauge" if is_gauge(key) else "counter"), key
        assert fams[name].samples[0].value == value
    assert fams["ramster_zcache_pers_zpages"].samples[0].value == 2
    assert fams["ramster_frontswap_succ_stores"].type == "counter"
    assert fams["ramster_cleancache_succ_gets"].samples[0].value == 1

    req = {(s.labels["export"], s.labels["command"]): s.value for s in fams["ramster_export_requests"].samples}
    assert req[("swap", "reads")] == 1 and req[("disk", "writes")] == 0
    hits = {s.labels["export"]: s.value for s in fams["ramster_export_cache_hits"].samples}
    assert hits == {"disk": 1}
    assert {s.labels["export"] for s in fams["ramster_export_errors"].samples} == {"swap", "disk"}
    assert {s.labels["direction"] for s in fams["ramster_export_bytes"].samples} == {"read", "write"}
    lost = {s.labels["export"]: s.value for s in fams["ramster_export_lost_pages"].samples}
    assert lost == {"swap": 0}

    assert stats["exports"]["swap"]["kind"] == "swap"
    assert stats["exports"]["disk"]["counters"]["cache_misses"] == 1
    assert stats["exports"]["disk"]["backing"].endswith("disk.img")
    assert stats["node"]["memory"] == 1 << 20
    assert stats["counters"]["zcache.max_pageframes"] == 256


def test_gauge_classification():
    assert is_gauge("zcache.pers_pageframes") and is_gauge("zcache.obj_count_max")
    assert is_gauge("zbud.pers_zombie_count") and is_gauge("zcache.outstanding_writeback_pages")
    assert not is_gauge("zcache.evicted_eph_pageframes") and not is_gauge("zbud.eph_cumul_zpages")
    assert not is_gauge("zcache.writtenback_pages") and not is_gauge("frontswap.loads")


def test_stats_cli_without_a_node():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(stats_cli.NodeUnreachable, match="no ramster node answering"):
        stats_cli.fetch(f"http://127.0.0.1:{port}")
