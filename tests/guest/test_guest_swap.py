"""A real Linux kernel swapping on ramster: a QEMU guest (TCG) whose only disk is a node's swap export.

The guest (160 MiB) runs a memory hog of 400 MiB whose pages are random,
same-filled, structured and half random, reads every page back twice in two
orders and prints HOG PASS or HOG FAIL; any I/O error line on its console
fails the test too (see ramster.guest).
"""
from __future__ import annotations

import concurrent.futures
import subprocess
import threading

import pytest
from support import RAMSTER, free_port

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


# the dense allocator, dedup and recompression in the background, together
DENSE_ALL = ("--allocator", "dense", "--dedup", "--recompress-cpu", "0.5")


def operator(node, stop: threading.Event) -> list[str]:
    """What an operator might run against a node while a kernel swaps on it: zram's verbs,
    one after another until `stop`; the failures, as lines."""
    verbs = [["mark-idle"], ["recompress", "2000"], ["compact"], ["writeback", "idle", "500"]]
    failed = []
    while not stop.is_set():
        for v in verbs:
            r = subprocess.run([*RAMSTER, "ctl", "--control", str(node.sock) + ".ctl", *v],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                failed.append(f"ctl {' '.join(v)}: {r.returncode} {r.stdout}{r.stderr}")
        stop.wait(0.5)  # a pace, not a synchronisation: the verbs run whenever they run
    return failed


def test_dense_dedup_recompress_export_writes_back_to_its_file(guest_image, nodes, tmp_path):
    """(b') As (b), storing with the dense allocator, dedup and background recompression,
    while an operator marks pages idle, recompresses, compacts and writes idle pages back:
    the kernel's pages go through all of it and the file, and come back intact. (The hog
    writes no two equal pages but same-filled ones, so every page takes dedup's store
    path and none is shared.)"""
    disk = tmp_path / "swap.disk"
    node = nodes(tmp_path, "a", "48M", f"swap:swap:1G:{disk}", flags=DENSE_ALL)
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        failed = pool.submit(operator, node, stop)
        try:
            run = boot(guest_image, node, tmp_path)
        finally:
            stop.set()
        assert not failed.result(), failed.result()
    stats = node.stats()
    check_guest(run, node)
    c, e = stats["counters"], export_counters(stats)
    assert e["errors"] == 0 and e["failed_writes"] == 0, e
    assert c["zcache.writtenback_pages"] > 0 and e["backing_reads"] > 0, (c, e)
    assert c["zcache.recompressed"] > 0 and c["control.recompressions"] > 0, c
    assert c["dense.pers_pageframes"] <= 48 * 256, c
    check_stopped_cleanly(node)


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


@pytest.mark.parametrize("flags", [(), DENSE_ALL], ids=["zbud", "dense-dedup-recompress"])
def test_swap_export_remotified_to_peers(guest_image, nodes, tmp_path, flags):
    """(c) Three nodes: the guest's node has no file and too little memory, so pages live on its two large peers.

    128 MiB is about two thirds of the frames the hog's pages take (~200 MiB), and large enough that memory
    runs out while the guest is writing at full speed: stores must then wait for remotify rather than
    fail (a smaller node slows the guest down from its first writes and hides that)."""
    cfg = write_cluster(tmp_path, ["a", "b", "c"])
    a = nodes(tmp_path, "a", "128M", "swap:swap:1G", config=cfg, flags=flags)
    peers = [nodes(tmp_path, name, "512M", "swap:swap:4M", config=cfg, flags=flags) for name in ("b", "c")]
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
