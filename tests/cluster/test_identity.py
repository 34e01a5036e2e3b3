"""Node identity and settings across real `ramster node` processes on loopback.

- a node holding only its own key cannot act as another node, nor evict it;
- nodes with different compressors are refused at handshake, and no page moves;
- `ramster keygen` makes the keys a cluster file needs, and a node without them
  says how to make them.

Nothing waits by sleeping: each test polls /stats (or a log) against a deadline.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from pages import image
from support import RAMSTER, NodeProcess, free_port, need_nbd

from ramster.remote import keys

pytestmark = pytest.mark.interop

MiB = 1 << 20


def write_config(tmp: Path, names: list[str], **cluster) -> tuple[Path, dict[str, str]]:
    """tmp/cluster.toml and each node's key in tmp/keys; (path, public keys by name)."""
    public = keys.node_keys(tmp / "keys", names)
    addresses = {n: f"127.0.0.1:{free_port()}" for n in names}
    return write_toml(tmp / "cluster.toml", names, public, addresses, **cluster), public


def write_toml(path: Path, names, public, addresses, **cluster) -> Path:
    lines = ["[cluster]", 'name = "lab"', "request_timeout = 2", "keepalive = 0.5", "idle_timeout = 5"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in cluster.items()]
    for i, n in enumerate(names):
        lines += ["[[cluster.node]]", f'name = "{n}"', f"number = {i}", f'address = "{addresses[n]}"',
                  f'public_key = "{public[n]}"']
    lines += ["[remotify]", "persistent = true", "ephemeral = true", "replicas = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def Node(tmp: Path, config: Path, name: str, memory: str, *args: str) -> NodeProcess:
    return NodeProcess(tmp / name, "--config", str(config), "--name", name, "--memory", memory, *args, name=name)


@pytest.fixture
def nodes():
    started: list[Node] = []
    yield started
    for n in started:
        n.stop()


def connected(peer: str):
    return lambda s: any(p["name"] == peer and p["connected"] for p in s["peers"])


def write_pages(nbd, uri: str, data: bytes) -> None:
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        for off in range(0, len(data), 256 * 1024):
            h.pwrite(data[off:off + 256 * 1024], off)
        h.flush()
    finally:
        h.shutdown()


def read_pages(nbd, uri: str, size: int) -> bytes:
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        return b"".join(h.pread(min(MiB, size - off), off) for off in range(0, size, MiB))
    finally:
        h.shutdown()


def test_a_node_holding_only_its_own_key_cannot_act_as_another(tmp_path, nodes):
    """c's operator runs a node that claims to be b (number 1), with c's key: the only one it has."""
    nbd = need_nbd()
    cfg, public = write_config(tmp_path, ["a", "b", "c"])
    a = Node(tmp_path, cfg, "a", "4M", "--export", "swap:swap:12M")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "32M", "--export", "swap:swap:4M")
    nodes.append(b)
    a.wait_for(connected("b"), "connecting to b")
    data = image(12 * MiB, "anon-python.pages")
    write_pages(nbd, a.uri("swap"), data)
    a.wait_for(lambda s: s["counters"]["ramster.remote_pers_pages"] > 0, "pages moving to b")
    held = a.peer("b")["pages_held"]
    assert held > 0

    # The impostor's copy of the file lists c's public key for "b" (so its own start-up check
    # passes; c gets another so no two nodes share one) and an address of its own for "b";
    # its key directory holds c's private key under b's name.
    evil = tmp_path / "evil"
    keys.write_private_key(evil / "keys" / "b.key", keys.read_private_key(tmp_path / "keys" / "c.key"))
    addresses = {n["name"]: n["address"] for n in tomllib.loads(cfg.read_text())["cluster"]["node"]}
    write_toml(evil / "cluster.toml", ["a", "b", "c"],
               {"a": public["a"], "b": public["c"], "c": keys.public_key_text(keys.new_private_key())},
               dict(addresses, b=f"127.0.0.1:{free_port()}"))
    impostor = Node(evil, evil / "cluster.toml", "b", "4M", "--export", "swap:swap:4M")
    nodes.append(impostor)

    # the impostor dials a again and again (backing off); each attempt is refused and counted
    s = a.wait_for(lambda s: s["counters"]["ramster.auth_failures"] >= 3, "refusing the impostor 3 times")
    assert a.peer("b")["refused"] >= 3 and s["counters"]["ramster.handshakes_refused"] >= 3
    impostor.stats()  # still running, refused, never connected
    assert not any(p["connected"] for p in impostor.stats()["peers"])
    assert "refused this connection, saying: authentication failed" in impostor.stderr()

    # b's connection never dropped nor looked like a restart, and its pages are all readable
    log = a.stderr()
    assert log.count("node 1 (b): connected") == 1 and "restarted" not in log, log[-3000:]
    assert a.peer("b")["connected"] and a.peer("b")["pages_held"] >= held  # none dropped (more may move)
    assert read_pages(nbd, a.uri("swap"), 12 * MiB) == data
    c = a.counters()
    assert c["ramster.remote_pers_pages_lost"] == 0 and c["ramster.remote_pers_pages_succ_get"] > 0
    # logged at a readable rate: the first refusal at once, the next ones summed up later
    lines = [ln for ln in a.stderr().splitlines() if "authentication failed" in ln]
    assert 1 <= len(lines) <= 2, lines
    assert "claiming node 1 (b)" in lines[0] and "WARNING" in lines[0]


def test_nodes_with_different_compressors_are_refused_and_no_page_moves(tmp_path, nodes):
    nbd = need_nbd()
    cfg, _ = write_config(tmp_path, ["a", "b"])
    disk = tmp_path / "a-swap.img"
    t0 = time.monotonic()
    a = Node(tmp_path, cfg, "a", "4M", "--compressor", "lz4", "--export", f"swap:swap:8M:{disk}")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "32M", "--compressor", "zstd", "--export", "swap:swap:4M")
    nodes.append(b)
    s = a.wait_for(lambda s: s["counters"]["ramster.compressor_mismatches"] >= 2, "refusing b twice")
    sb = b.wait_for(lambda s: s["counters"]["ramster.compressor_mismatches"] >= 2, "b refusing a")
    elapsed = time.monotonic() - t0
    # memory runs short: with b refused, pages go to the swap disk, none to b
    data = image(8 * MiB, "anon-python.pages")
    write_pages(nbd, a.uri("swap"), data)
    assert read_pages(nbd, a.uri("swap"), 8 * MiB) == data
    ca, cb = a.counters(), b.counters()
    assert ca["ramster.pers_pages_remoted"] == 0 and ca["ramster.eph_pages_remoted"] == 0
    assert cb["ramster.foreign_pers_pages"] == 0 and cb["ramster.foreign_eph_pages"] == 0
    assert not a.peer("b")["connected"] and not b.peer("a")["connected"]
    assert a.peer("b")["refused"] >= 2 and b.peer("a")["refused"] >= 2
    assert ca["ramster.auth_failures"] == 0 and s["counters"]["ramster.handshakes_refused"] >= 2
    # the message, on both sides
    assert ("node b uses zstd, this node uses lz4: all nodes of a cluster must use the same compressor"
            in a.stderr())
    assert ("node a uses lz4, this node uses zstd: all nodes of a cluster must use the same compressor"
            in b.stderr())
    # no hot loop: b redials after 0.5 s, then 1, 2, 4, 5 s (+-20%)
    n = a.counters()["ramster.compressor_mismatches"]
    assert n <= 2 + (time.monotonic() - t0) / 0.4, (n, elapsed)
    assert len([ln for ln in a.stderr().splitlines() if "same compressor" in ln]) <= 2
    # what an operator sees
    r = subprocess.run([*RAMSTER, "stats", "--url", a.url, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["counters"]["ramster.compressor_mismatches"] >= 2 and st["peers"][0]["refused"] >= 2
    with urllib.request.urlopen(a.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "ramster_compressor_mismatches_total" in text
    assert sb["counters"]["ramster.handshakes_refused"] >= 2


def keygen(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*RAMSTER, "keygen", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_keygen_round_trip(tmp_path, nodes):
    addresses = {n: f"127.0.0.1:{free_port()}" for n in "ab"}
    lines = ["[cluster]", 'name = "lab"', "request_timeout = 2", "keepalive = 0.5", "idle_timeout = 5"]
    for i, n in enumerate("ab"):
        lines += ["[[cluster.node]]", f'name = "{n}"', f"number = {i}", f'address = "{addresses[n]}"']
    cfg = tmp_path / "lab.toml"
    cfg.write_text("\n".join(lines) + "\n")

    # a node without keys does not start, and says how to make them (in one line)
    r = subprocess.run([*RAMSTER, "node", "--config", str(cfg), "--name", "a", "--metrics", "off",
                        "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "node 'a' has no public_key" in r.stderr and f"ramster keygen a --config {cfg}" in r.stderr

    # keygen, from anywhere: the key lands beside the cluster file, the line on stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = keygen("a", "--config", str(cfg), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    key = tmp_path / "keys" / "a.key"
    assert key.stat().st_mode & 0o777 == 0o600 and (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    line_a = r.stdout.strip()
    assert re.fullmatch(r'public_key = "[A-Za-z0-9+/]{43}="', line_a), r.stdout
    assert "wrote" in r.stderr and "[[cluster.node]]" in r.stderr
    # never overwritten without --force; --show prints the line of the key that is there
    before = key.read_bytes()
    r = keygen("a", "--config", str(cfg))
    assert r.returncode == 2 and "exists" in r.stderr and "--force" in r.stderr and r.stdout == ""
    assert key.read_bytes() == before
    r = keygen("a", "--config", str(cfg), "--show")
    assert r.returncode == 0 and r.stdout.strip() == line_a
    r = keygen("a", "--config", str(cfg), "--force")
    assert r.returncode == 0 and r.stdout.strip() != line_a and key.read_bytes() != before
    line_a = r.stdout.strip()
    # mistakes are one clear line
    r = keygen("z", "--config", str(cfg))
    assert r.returncode == 2 and "no node named 'z' (nodes: a, b)" in r.stderr
    r = keygen("../a", "--dir", str(tmp_path))
    assert r.returncode == 2 and "invalid node name" in r.stderr
    r = keygen("b", "--config", str(tmp_path / "none.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = keygen("--help")
    assert r.returncode == 0 and "public_key" in r.stdout and "--force" in r.stdout
    # --dir (the default key_dir is keys/ in the current directory)
    r = keygen("b", cwd=elsewhere)
    assert r.returncode == 0 and (elsewhere / "keys" / "b.key").exists()
    r = keygen("b", "--dir", str(tmp_path / "keys"))
    assert r.returncode == 0
    line_b = r.stdout.strip()

    # the lines go into the file; both nodes start and connect
    text = cfg.read_text()
    for n, line in (("a", line_a), ("b", line_b)):
        text = text.replace(f'address = "{addresses[n]}"', f'address = "{addresses[n]}"\n{line}')
    cfg.write_text(text)
    a = Node(tmp_path, cfg, "a", "4M", "--export", "swap:swap:4M")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "4M", "--export", "swap:swap:4M")
    nodes.append(b)
    a.wait_for(connected("b"), "connecting to b")
    b.wait_for(connected("a"), "connecting to a")
    assert a.counters()["ramster.auth_failures"] == 0
