"""A swap export with a backing file across stops of its node: SIGTERM, kill -9, restart on the same file.

After any stop, every page reads its last acknowledged version, or EIO where
that version lived only in memory (kill -9): never an older version, never zeros.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess

import pytest
from support import RAMSTER, NodeProcess, need, need_nbd

pytestmark = pytest.mark.interop

PAGE = 4096
MiB = 1 << 20
PAGES = 2048  # 8 MiB of pages on a 1 MiB budget: most of them go through the file


def version(v: int, p: int) -> bytes:
    """Page p's content at version v: compressible, distinct per page and per version."""
    line = f"v{v} page {p:06d} ".encode()
    return (line * (PAGE // len(line) + 1))[:PAGE - 64] + hashlib.blake2b(line, digest_size=64).digest()


def shared_version(v: int, p: int) -> bytes:
    """As version(), but every even page is one of 64 contents (copies dedup shares), and
    each begins with 1800 random bytes, so the dense allocator cannot keep them all either."""
    q = p % 64 if p % 2 == 0 else p
    return random.Random(f"{v}/{q}").randbytes(1800) + version(v, q)[1800:]


# what the node stores with -> (its flags, the pages written)
STORES = {
    "zbud": ((), version),
    "dense-dedup-recompress": (("--allocator", "dense", "--dedup", "--recompress-cpu", "0.5"), shared_version),
}


def start(tmp, backing, *extra) -> NodeProcess:
    return NodeProcess(tmp, "--memory", "1M", "--export", f"swap:swap:16M:{backing}", *extra)


def write_two_versions(node: NodeProcess, content=version) -> tuple[list[bytes], list[bytes]]:
    nbd = need_nbd()

    h = nbd.NBD()
    h.connect_uri(node.uri("swap"))
    v1 = [content(1, p) for p in range(PAGES)]
    v2 = [content(2, p) for p in range(PAGES)]
    for v in (v1, v2):
        for p, data in enumerate(v):
            h.pwrite(data, p * PAGE)
    h.flush()
    h.shutdown()
    return v1, v2


def read_back(node: NodeProcess) -> list[bytes | None]:
    """Every page, None where the read failed with EIO."""
    nbd = need_nbd()

    h = nbd.NBD()
    h.connect_uri(node.uri("swap"))
    out = []
    for p in range(PAGES):
        try:
            out.append(h.pread(PAGE, p * PAGE))
        except nbd.Error as e:
            assert e.errno == "EIO", e
            out.append(None)
    h.shutdown()
    return out


@pytest.mark.parametrize("store", STORES)
def test_sigterm_then_restart_reads_every_last_version(tmp_path, store):
    need("nbdinfo")
    flags, content = STORES[store]
    backing = tmp_path / "swap.img"
    node = start(tmp_path, backing, *flags)
    try:
        _, v2 = write_two_versions(node, content)
        assert node.stats()["counters"]["zcache.writtenback_pages"] > 0  # the file held v1 of many pages
    except BaseException:
        node.stop()  # no node left behind by a failure
        raise
    assert node.stop() == 0
    node = start(tmp_path, backing, *flags)
    try:
        got = read_back(node)
        assert sum(g is None for g in got) == 0, "a clean stop must keep every page"
        assert [p for p in range(PAGES) if got[p] != v2[p]] == []
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.stderr()


@pytest.mark.parametrize("store", STORES)
def test_kill9_then_restart_reads_last_version_or_eio(tmp_path, store):
    need("nbdinfo")
    flags, content = STORES[store]
    backing = tmp_path / "swap.img"
    node = start(tmp_path, backing, *flags)
    try:
        v1, v2 = write_two_versions(node, content)
        if content is shared_version:
            assert node.counters()["zcache.dedup_hits"] > 0
    finally:
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
    node = start(tmp_path, backing, *flags)
    try:
        got = read_back(node)
        older = [p for p in range(PAGES) if got[p] == v1[p]]
        zeros = [p for p in range(PAGES) if got[p] == bytes(PAGE)]
        other = [p for p in range(PAGES) if got[p] is not None and got[p] != v2[p]]
        eio = [p for p in range(PAGES) if got[p] is None]
        assert older == [] and zeros == [] and other == []
        assert 0 < len(eio) < PAGES  # the pages in memory at the kill, and only those
        assert node.stats()["exports"]["swap"]["gauges"]["lost_pages"] == len(eio)
        # a page that read EIO is whole again once written
        nbd = need_nbd()

        h = nbd.NBD()
        h.connect_uri(node.uri("swap"))
        h.pwrite(version(3, eio[0]), eio[0] * PAGE)
        assert h.pread(PAGE, eio[0] * PAGE) == version(3, eio[0])
        h.trim(PAGE, eio[1] * PAGE)  # a trimmed page reads as zeros, not as EIO
        assert h.pread(PAGE, eio[1] * PAGE) == bytes(PAGE)
        h.shutdown()
    finally:
        assert node.stop() == 0
    assert "their last version in memory" in node.stderr()


def test_backing_file_is_locked_through_a_hard_link(tmp_path):
    backing = tmp_path / "swap.img"
    first = start(tmp_path, backing)
    try:
        link = tmp_path / "link.img"
        os.link(backing, link)
        for path in (backing, link):
            r = subprocess.run([*RAMSTER, "node", "--memory", "1M", "--export", f"swap:swap:16M:{path}",
                                "--listen", f"unix:{tmp_path}/other.sock", "--metrics", "off"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 2
            assert r.stderr.count("\n") == 1 and "in use by another running ramster node" in r.stderr, r.stderr
    finally:
        assert first.stop() == 0


def test_restart_with_another_size_is_refused(tmp_path):
    backing = tmp_path / "swap.img"
    node = start(tmp_path, backing)
    assert node.stop() == 0
    r = subprocess.run([*RAMSTER, "node", "--memory", "1M", "--export", f"swap:swap:32M:{backing}",
                        "--listen", f"unix:{tmp_path}/other.sock", "--metrics", "off"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "swap export of 16777216 bytes" in r.stderr, r.stderr
