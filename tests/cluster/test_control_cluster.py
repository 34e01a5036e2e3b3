"""`ramster ctl` in a RAMster cluster of real node processes: the seed's sysfs controls
(remotify on/off, the remotify target, a node marked down or up) and selfshrink on demand."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pages import image
from support import RAMSTER, NodeProcess, need_nbd
from test_cluster import Node, connected, nodes, write_config  # noqa: F401 - nodes is a fixture

pytestmark = pytest.mark.interop

MiB = 1 << 20


def ctl(node: NodeProcess, *words: str) -> str:
    r = subprocess.run([*RAMSTER, "ctl", "--control", f"{node.sock}.ctl", *words], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"ramster ctl {' '.join(words)}: {r.stderr}"
    return r.stdout.strip()


def write(uri: str, data: bytes, offset: int) -> None:
    nbd = need_nbd()
    h = nbd.NBD()
    h.connect_uri(uri)
    for off in range(0, len(data), MiB):
        h.pwrite(data[off:off + MiB], offset + off)
    h.flush()
    h.shutdown()


def read(uri: str, size: int) -> bytes:
    nbd = need_nbd()
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        return b"".join(h.pread(MiB, off) for off in range(0, size, MiB))
    finally:
        h.shutdown()


def peer(stats: dict, name: str) -> dict:
    return next(p for p in stats["peers"] if p["name"] == name)


def test_remotify_switches_pins_and_peers_marked_down_steer_placement(tmp_path, nodes):
    need_nbd()
    cfg = write_config(tmp_path, ["a", "b", "c"])
    a = Node(tmp_path, cfg, "a", "4M", f"swap:swap:32M:{tmp_path / 'a.swap'}")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "32M", "swap:swap:4M")
    nodes.append(b)
    c = Node(tmp_path, cfg, "c", "32M", "swap:swap:4M")
    nodes.append(c)
    for name in ("b", "c"):
        a.wait_for(connected(name), f"connecting to {name}")
    assert ctl(a, "selfshrink", "off") == "selfshrink on -> off"  # pages stay where this test puts them
    # remotify off: a full memory goes to the swap disk only
    assert ctl(a, "remotify", "all", "off") == "persistent on -> off; ephemeral on -> off"
    s = a.stats()
    assert s["counters"]["ramster.pers_remotify_enable"] == 0 and s["counters"]["ramster.eph_remotify_enable"] == 0
    first = image(12 * MiB, "anon-python.pages")
    write(a.uri("swap"), first, 0)
    s = a.stats()
    assert s["counters"]["ramster.pers_pages_remoted"] == 0 and s["counters"]["zcache.writtenback_pages"] > 0
    # pinned to b and on again: pages go to b only
    assert ctl(a, "pin", "b") == "targets b,c -> b"
    assert ctl(a, "remotify", "pers", "on") == "persistent off -> on"
    s = a.wait_for(lambda s: s["counters"]["ramster.pers_pages_remoted"] > 0, "remotify to b")
    assert peer(s, "b")["target"] and not peer(s, "c")["target"]
    assert s["counters"]["control.target_changes"] == 1 and s["counters"]["control.pers_remotify_switches"] == 2
    b.wait_for(lambda s: s["counters"]["ramster.foreign_pers_pages"] > 0, "b holding a's pages")
    assert c.counters()["ramster.foreign_pers_pages_max"] == 0
    # unpinned, with b marked down: new pages go to c, none to b
    assert ctl(a, "unpin") == "targets b -> b,c"
    assert ctl(a, "peer", "b", "down") == "peer b up -> down"
    s = a.stats()
    assert peer(s, "b")["down"] and peer(s, "b")["connected"]  # the link stays; the engine treats b as gone
    held_by_b = b.counters()["ramster.foreign_pers_pages_max"]
    second = image(12 * MiB, "anon-python.pages")[::-1]
    write(a.uri("swap"), second, 16 * MiB)
    c.wait_for(lambda s: s["counters"]["ramster.foreign_pers_pages"] > 0, "c holding a's pages")
    assert b.counters()["ramster.foreign_pers_pages_max"] == held_by_b
    assert "ctl: peer b up -> down" in a.stderr()
    # b's copies are unavailable while it is down: those pages come from the swap disk
    whole = first + bytes(4 * MiB) + second + bytes(4 * MiB)
    assert read(a.uri("swap"), 32 * MiB) == whole
    assert a.counters()["ramster.remote_pers_pages_unsucc_get"] > 0
    # b up again: everything reads back, wherever it is
    assert ctl(a, "peer", "b", "up") == "peer b down -> up"
    assert read(a.uri("swap"), 32 * MiB) == whole
    c_ = a.counters()
    assert c_["control.peers_marked_down"] == 1 and c_["control.peers_marked_up"] == 1
    # selfshrink on demand: with room again, remote pages come home
    a.wait_for(lambda s: s["counters"]["ramster.remote_pers_pages"] > 0, "pages on peers")
    ctl(a, "remotify", "all", "off")
    ctl(a, "memory", "64M")
    remote = a.counters()["ramster.remote_pers_pages"]
    out = ctl(a, "selfshrink", "now", "50")
    assert out.startswith("selfshrink: 50 page(s) brought home"), out
    c_ = a.counters()
    assert c_["ramster.remote_pers_pages"] == remote - 50 and c_["control.selfshrinks"] == 1


def test_ctl_refuses_what_the_cluster_cannot_do(tmp_path, nodes):
    cfg = write_config(tmp_path, ["a", "b"])
    a = Node(tmp_path, cfg, "a", "4M", "swap:swap:4M")
    nodes.append(a)
    for words, text in ((("pin", "a"), "a is this node, not a peer"),
                        (("pin", "zz"), "no node 'zz' in cluster lab"),
                        (("peer", "b", "sideways"), "expected up or down"),
                        (("remotify", "both", "on"), "expected eph, pers or all")):
        r = subprocess.run([*RAMSTER, "ctl", "--control", f"{a.sock}.ctl", *words], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and text in r.stderr, (words, r.stderr)
    assert Path(f"{a.sock}.ctl").exists()
