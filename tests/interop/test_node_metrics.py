"""A real two-node cluster's /stats and /metrics against counters.py and `promtool check metrics`.

Node a has a swap export, a cache export and a peer, so its /stats holds every
part counters.py declares: the engine's, zbud's, the front-ends' and RAMster's
counters, both kinds of export and a peer (connected, its round trip measured).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from support import NodeProcess, free_port, need

from ramster.counters import ALLOCATOR_KEYS, COUNTERS, EXPORT_STATS, PEER_STATS, undeclared
from ramster.remote.keys import node_keys

pytestmark = pytest.mark.interop


@pytest.fixture
def promtool() -> str:
    need("promtool")  # a failure naming Debian's prometheus package in CI, a skip elsewhere
    return shutil.which("promtool")


def cluster_config(tmp: Path, names: list[str]) -> Path:
    public = node_keys(tmp / "keys", names)
    lines = ["[cluster]", 'name = "metrics"', "request_timeout = 2", "keepalive = 0.2", "idle_timeout = 5"]
    for number, name in enumerate(names):
        lines += ["[[cluster.node]]", f'name = "{name}"', f"number = {number}",
                  f'address = "127.0.0.1:{free_port()}"', f'public_key = "{public[name]}"']
    lines += ["[remotify]", "persistent = true", "ephemeral = true", "replicas = 1"]
    path = tmp / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path):
    config = cluster_config(tmp_path, ["a", "b"])
    (tmp_path / "disk.img").write_bytes(bytes(range(256)) * (1 << 12))  # 1 MiB
    nodes = []
    try:
        # b keeps its pages with the dense allocator, a with zbud: each reports its allocator's keys
        for name, exports, allocator in (("b", ["spare:swap:1M"], "dense"),
                                         ("a", ["swap:swap:4M", f"disk:cache:1M:{tmp_path}/disk.img"], "zbud")):
            d = tmp_path / name
            d.mkdir()
            args = ["--config", str(config), "--name", name, "--memory", "2M", "--allocator", allocator]
            for e in exports:
                args += ["--export", e]
            nodes.append(NodeProcess(d, *args))
        b, a = nodes
        wait_for(lambda: all(p["connected"] and p["rtt_seconds"] is not None for p in a.stats()["peers"]))
        yield a, b
    finally:
        for n in nodes:
            n.stop()


def lint(promtool: str, text: bytes) -> str:
    """What `promtool check metrics` says of a scrape ("" when nothing), with its exit status."""
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    return f"{r.returncode} {(r.stdout + r.stderr).decode()}".strip()


def test_promtool_finds_what_it_should(promtool):
    # the check below can fail: a counter without _total is one of promtool's warnings
    assert "_total" in lint(promtool, b"# HELP x Things.\n# TYPE x counter\nx 1\n")
    assert lint(promtool, b"# HELP x_total Things.\n# TYPE x_total counter\nx_total 1\n") == "0"


def test_every_stats_key_is_declared_and_metrics_pass_promtool(promtool, cluster):
    a, b = cluster
    with urllib.request.urlopen(a.url + "/stats", timeout=10) as r:
        stats = json.load(r)
    assert undeclared(stats) == []
    # and every declaration is live: a stale one would name a number nobody reports
    # (the other allocator's keys are another node's)
    assert set(COUNTERS) - ALLOCATOR_KEYS["dense"] == set(stats["counters"])
    with urllib.request.urlopen(b.url + "/stats", timeout=10) as r:
        dense = json.load(r)
    assert undeclared(dense) == []
    assert (stats["node"]["allocator"], dense["node"]["allocator"]) == ("zbud", "dense")
    assert set(COUNTERS) - ALLOCATOR_KEYS["zbud"] == set(dense["counters"])
    fields = {f"{part}.{k}" for e in stats["exports"].values() for part in ("counters", "gauges") for k in e[part]}
    assert set(EXPORT_STATS) == fields | {"size"}
    assert set(PEER_STATS) <= set(stats["peers"][0])

    with urllib.request.urlopen(a.url + "/metrics", timeout=10) as r:
        text = r.read()
    assert b'ramster_peer_connected{peer="b"} 1.0' in text
    assert lint(promtool, text) == "0"
    with urllib.request.urlopen(b.url + "/metrics", timeout=10) as r:
        text = r.read()
    assert b"ramster_dense_pageframes_bytes" in text
    assert lint(promtool, text) == "0"
