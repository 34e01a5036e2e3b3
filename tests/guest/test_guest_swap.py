"""A real Linux kernel swapping on ramster: a QEMU guest (TCG) whose only disk is a node's swap export.

The guest (160 MiB) runs a memory hog of 400 MiB whose pages are random,
same-filled, structured and half random, reads every page back twice in two
orders and prints HOG PASS or HOG FAIL; any I/O error line on its console
fails the test too (see ramster.guest).
"""
from __future__ import annotations

import pytest
from support import free_port

from ramster.guest import vm
from ramster.remote import keys

pytestmark = pytest.mark.guest

GUEST_TIMEOUT = 240  # seconds; a passing case takes ~40 s here
# pages the guest must have written to swap: the hog's excess over the guest's memory, at least
MIN_SWAPPED_OUT = (vm.HOG_MIB - vm.GUEST_MEMORY_MIB) * 256


def boot(guest_image, node, tmp_path) -> vm.GuestRun:
    kernel, initrd = guest_image
    run = vm.run(kernel, initrd, vm.nbd_unix(node.sock, "swap"), tmp_path / "console.txt", GUEST_TIMEOUT)
    print(f"guest on node {node.name}: {run.verdict()}, {run.wall_seconds:.1f} s wall, hog {run.hog}, "
          f"vmstat {run.vmstat}")
    return run


def check_guest(run: vm.GuestRun, *nodes) -> None:
    logs = "\n".join(f"--- node {n.name} (last lines)\n{n.stderr()[-2000:]}" for n in nodes)
    assert run.passed, f"{run.verdict()}\n--- guest console (last lines)\n{run.tail()}\n{logs}"
    assert run.vmstat.get("pswpout", 0) >= MIN_SWAPPED_OUT, f"the guest hardly swapped: {run.vmstat}"


def check_stopped_cleanly(*nodes) -> None:
    for n in nodes:
        status = n.stop()
        out = n.stderr()
        assert "Traceback" not in out, f"node {n.name} logged a traceback:\n{out[-5000:]}"
        assert status == 0, f"node {n.name} exited with {status} on SIGTERM:\n{out[-3000:]}"


def export_counters(stats: dict) -> dict:
    return stats["exports"]["swap"]["counters"]


def test_swap_export_in_memory(guest_image, nodes, tmp_path):
    """(a) No backing file, memory enough for everything: every page, incompressible ones too, stays in memory."""
    node = nodes(tmp_path, "a", "512M", "swap:swap:1G")
    run = boot(guest_image, node, tmp_path)
    stats = node.stats()
    check_guest(run, node)
    c, e = stats["counters"], export_counters(stats)
    assert e["errors"] == 0 and e["failed_writes"] == 0, e
    assert c["frontswap.succ_stores"] >= MIN_SWAPPED_OUT, c
    assert c["zcache.huge_pages_max"] > 0, "no page was stored raw: the hog's random pages never reached the node"
    assert c["zcache.same_filled_pages"] + c["zcache.zero_filled_pages"] > 0, c
    check_stopped_cleanly(node)


def test_swap_export_writes_back_to_its_file(guest_image, nodes, tmp_path):
    """(b) A backing file and a budget far smaller than the hog: pages go to the file by writeback."""
    disk = tmp_path / "swap.disk"
    node = nodes(tmp_path, "a", "48M", f"swap:swap:1G:{disk}")
    run = boot(guest_image, node, tmp_path)
    stats = node.stats()
    check_guest(run, node)
    c, e = stats["counters"], export_counters(stats)
    assert e["errors"] == 0 and e["failed_writes"] == 0, e
    assert c["zcache.writtenback_pages"] > 0 and e["written_back"] > 0, (c, e)
    assert e["backing_reads"] > 0, f"no page was read back from the file: {e}"
    assert c["zcache.pers_pageframes_max"] <= 48 * 256, c
    check_stopped_cleanly(node)
    assert disk.stat().st_blocks > 0


def write_cluster(tmp_path, names: list[str]):
    """tmp_path/cluster.toml, every node's private key in tmp_path/keys (the default key_dir, beside the file)."""
    public = keys.node_keys(tmp_path / "keys", names)
    lines = ['[cluster]', 'name = "guest"', "request_timeout = 5"]
    for i, name in enumerate(names):
        lines += ["[[cluster.node]]", f'name = "{name}"', f"number = {i}", f'address = "127.0.0.1:{free_port()}"',
                  f'public_key = "{public[name]}"']
    lines += ["[remotify]", "persistent = true", "ephemeral = true", "replicas = 1"]
    path = tmp_path / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_swap_export_remotified_to_peers(guest_image, nodes, tmp_path):
    """(c) Three nodes: the guest's node has no file and too little memory, so pages live on its two large peers.

    128 MiB is about two thirds of the frames the hog's pages take (~200 MiB), and large enough that memory
    runs out while the guest is writing at full speed: stores must then wait for remotify rather than
    fail (a smaller node slows the guest down from its first writes and hides that)."""
    cfg = write_cluster(tmp_path, ["a", "b", "c"])
    a = nodes(tmp_path, "a", "128M", "swap:swap:1G", config=cfg)
    peers = [nodes(tmp_path, name, "512M", "swap:swap:4M", config=cfg) for name in ("b", "c")]
    a.wait_for(lambda s: sum(p["connected"] for p in s["peers"]) == 2, "connecting to both peers")
    run = boot(guest_image, a, tmp_path)
    stats = a.stats()
    held = {p.name: p.stats()["counters"]["ramster.foreign_pers_pages"] for p in peers}
    check_guest(run, a, *peers)
    c, e = stats["counters"], export_counters(stats)
    assert e["errors"] == 0 and e["failed_writes"] == 0, e
    assert c["ramster.pers_pages_remoted"] > 0, c
    assert c["ramster.remote_pers_pages_succ_get"] > 0, "no page came back from a peer"
    assert c["ramster.remote_pers_pages_lost"] == 0 and c["ramster.remote_checksum_errors"] == 0, c
    assert sum(held.values()) > 0 or c["ramster.remote_pers_pages"] == 0, held
    check_stopped_cleanly(a, *peers)
