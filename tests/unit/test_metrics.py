"""/metrics and /stats over real HTTP on loopback (port 0), reading a real node's counters."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ramster import __version__
from ramster.cli import stats as stats_cli
from ramster.config import build
from ramster.counters import (BUILD_INFO, BYTES, COUNTER, COUNTERS, EXPORT_STATS, FRAMES, GAUGE,
                              METRICS, NUMBER, PEER_STATS, SECONDS, undeclared)
from ramster.metrics import MetricsServer
from ramster.node import Node
from ramster.units import PAGE_SIZE

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
        swap.counters.reads += 1  # the server counts requests and their bytes; stand in for it
        swap.counters.bytes_read += PAGE
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

    def sample(name: str, **labels) -> float:
        (value,) = [s.value for s in fams[name].samples if s.labels == labels and not s.name.endswith("_created")]
        return value

    assert undeclared(stats) == []  # tests/interop/test_node_metrics.py checks a cluster node too
    # every engine counter is there under its declared name, kind, labels and unit
    for key, value in stats["counters"].items():
        st = COUNTERS[key]
        m = st.metric
        assert fams[m.name].type == m.kind, key
        assert sample(m.name, **dict(zip(m.labels, st.labels))) == value * m.scale, key
    assert sample("ramster_zcache_zpages", pool="pers") == 2
    assert sample("ramster_zcache_pageframes_bytes", pool="pers") == stats["counters"]["zcache.pers_pageframes"] * PAGE
    assert sample("ramster_zcache_pageframes_limit_bytes") == 1 << 20
    assert fams["ramster_frontswap_succ_stores"].type == "counter"
    assert sample("ramster_frontswap_succ_stores") == stats["counters"]["frontswap.succ_stores"] > 0
    assert sample("ramster_cleancache_succ_gets") == 1
    assert not [f for f in fams if f.startswith("ramster_ramster") or "_eph_" in f or "_pers_" in f]

    assert sample("ramster_export_requests", export="swap", kind="swap", command="read") == 1
    assert sample("ramster_export_requests", export="disk", kind="cache", command="write") == 0
    assert sample("ramster_export_cache_hits", export="disk", kind="cache") == 1
    assert {s.labels["export"] for s in fams["ramster_export_errors"].samples} == {"swap", "disk"}
    assert sample("ramster_export_io_bytes", export="swap", kind="swap", direction="read") == PAGE
    assert {s.labels["direction"] for s in fams["ramster_export_io_bytes"].samples} == {"read", "write"}
    lost = {s.labels["export"]: s.value for s in fams["ramster_export_lost_pages"].samples}
    assert lost == {"swap": 0}
    assert sample("ramster_export_size_bytes", export="disk", kind="cache") == 1 << 20
    assert sample("ramster_build_info", version=__version__) == 1
    assert fams["process_resident_memory_bytes"].samples[0].value > 0  # the process collector
    assert "python_info" in fams

    # /stats keeps the seed's names
    assert stats["exports"]["swap"]["kind"] == "swap"
    assert stats["exports"]["disk"]["counters"]["cache_misses"] == 1
    assert stats["exports"]["disk"]["backing"].endswith("disk.img")
    assert stats["node"]["memory"] == 1 << 20
    assert stats["counters"]["zcache.max_pageframes"] == 256
    assert stats["counters"]["zcache.pers_zpages"] == 2


def test_declarations_follow_prometheus_conventions():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names)), "a family declared twice"
    # a counter's sample (NAME_total) and a histogram's reserved suffixes must not meet another family
    samples = {m.sample_name for m in METRICS}
    for m in METRICS:
        assert m.name.startswith("ramster_") and not m.name.startswith("ramster_ramster_"), m.name
        assert not m.name.endswith(("_total", "_count", "_sum", "_bucket", "_created")), m.name
        assert m.kind == COUNTER or m.name + "_total" not in samples, m.name
        assert m.unit in (NUMBER, BYTES, FRAMES, SECONDS)
        assert m.name.endswith("_" + m.base_unit) if m.base_unit else not m.name.endswith(("_bytes", "_seconds"))
        assert m.scale == (PAGE_SIZE if m.unit == FRAMES else 1)
        assert not any(part in ("eph", "pers") for part in m.base.split("_")), f"{m.name}: pool kind belongs in a label"
        # help: a sentence about what is counted, calling a gauge a gauge, never the name again
        assert m.help[0].isupper() or m.help[0].isdigit(), m.help
        assert m.help.endswith("."), m.help
        assert m.base not in m.help and m.name not in m.help, m.help
        assert "counter" not in m.help.lower(), m.help
        assert ("gauge" in m.help) == (m.kind == GAUGE) or m is BUILD_INFO, m.help
    for table in (COUNTERS, EXPORT_STATS, PEER_STATS):
        for key, st in table.items():
            assert st.key == key
            assert len(st.labels) == len(st.metric.labels) - (table is EXPORT_STATS) * 2 - (table is PEER_STATS), key
            seed = key.partition(".")[2]
            assert "_" not in seed or seed not in st.metric.help, key
    # the seed's names map where the naming scheme says
    assert COUNTERS["zcache.eph_pageframes"].metric.name == "ramster_zcache_pageframes_bytes"
    assert COUNTERS["zcache.eph_pageframes"].labels == ("eph",)
    assert COUNTERS["ramster.remote_pages_short"].metric.sample_name == "ramster_remote_pages_short"
    assert COUNTERS["zcache.writtenback_pages"].metric.sample_name == "ramster_zcache_writtenback_pages_total"
    assert COUNTERS["zbud.pers_cumul_zbytes"].metric.sample_name == "ramster_zbud_compressed_added_bytes_total"


def test_undeclared_keys_are_found():
    stats = {"counters": {"zcache.flush_total": 1, "zcache.new_thing": 2},
             "exports": {"x": {"kind": "swap", "size": 1, "counters": {"reads": 0, "odd": 1}, "gauges": {"g": 1},
                               "extra": 3}},
             "peers": [{"name": "b", "rtt_seconds": None, "mood": "good"}],
             "node": {"version": "1", "shoe_size": 44},
             "more": {}}
    assert undeclared(stats) == ["exports.counters.odd", "exports.extra", "exports.gauges.g", "more",
                                 "node.shoe_size", "peers.mood", "zcache.new_thing"]
    assert undeclared({"counters": {"zcache.flush_total": 1}, "node": {"pid": 1}}) == []


def test_stats_cli_without_a_node():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(stats_cli.NodeUnreachable, match="no ramster node answering"):
        stats_cli.fetch(f"http://127.0.0.1:{port}")
