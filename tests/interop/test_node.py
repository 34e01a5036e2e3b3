"""`ramster node` as a real process, driven by real NBD clients (nbdinfo, nbdcopy, qemu-img)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import NodeProcess, free_port, need, need_nbd
from pages import image

pytestmark = pytest.mark.interop

PAGE = 4096
MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
RAMSTER = [sys.executable, "-m", "ramster.cli"]


def corpus_image(path: Path, size: int, which: int = 0) -> bytes:
    """`size` bytes of real pages (shared corpus, else synthetic ones) written to `path`."""
    data = image(size, which=which)
    path.write_bytes(data)
    return data


@pytest.fixture
def node(tmp_path_factory):
    """A fresh node for each test (none depends on what another left behind): a swap export
    with a backing file, a cache export over an 8 MiB image, a small swap export without one."""
    tmp = tmp_path_factory.mktemp("node")
    disk = corpus_image(tmp / "disk.img", 8 * MiB, which=1)
    # 4 MiB of memory for a 16 MiB swap device: the writeback tier must carry the rest
    n = NodeProcess(tmp, "--memory", "4M", "--export", f"swap:swap:16M:{tmp}/swap.img",
                    "--export", f"disk:cache:8M:{tmp}/disk.img", "--export", "small:swap:1M")
    n.tmp = tmp
    n.disk = disk
    yield n
    if n.proc.poll() is None:
        assert n.stop() == 0, n.stderr()
    assert "Traceback" not in n.stderr()


def run(*cmd, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def test_banner_says_how_to_connect(node):
    out = node.stdout_path.read_text()
    assert f"nbdinfo 'nbd+unix:///swap?socket={node.sock}'" in out
    assert f"http://127.0.0.1:{node.port}/metrics" in out


def test_nbdinfo(node):
    need("nbdinfo")
    r = run("nbdinfo", "--list", "--json", f"nbd+unix:///?socket={node.sock}")
    assert r.returncode == 0, r.stderr
    exports = {e["export-name"]: e for e in json.loads(r.stdout)["exports"]}
    assert set(exports) == {"swap", "disk", "small"}
    assert exports["swap"]["export-size"] == 16 * MiB
    assert exports["disk"]["export-size"] == 8 * MiB
    swap = exports["swap"]
    assert swap["can_trim"] and swap["can_zero"] and swap["can_flush"] and swap["can_fua"]
    assert swap["can_multi_conn"] and not swap["is_read_only"]
    assert "base:allocation" in swap["contexts"]


def test_cache_export_second_read_hits(node, tmp_path):
    need("nbdcopy")
    before = node.stats()["exports"]["disk"]["counters"]
    for name in ("a.img", "b.img"):
        r = run("nbdcopy", node.uri("disk"), str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / name).read_bytes() == node.disk
    after = node.stats()["exports"]["disk"]["counters"]
    assert after["cache_misses"] > before["cache_misses"]
    assert after["cache_hits"] > before["cache_hits"]
    assert after["bytes_read"] - before["bytes_read"] == 16 * MiB


def test_nbdcopy_and_qemu_img_through_writeback(node, tmp_path):
    need("nbdcopy", "qemu-img")
    data = corpus_image(tmp_path / "in.img", 16 * MiB)
    r = run("nbdcopy", str(tmp_path / "in.img"), node.uri("swap"))
    assert r.returncode == 0, r.stderr
    r = run("nbdcopy", node.uri("swap"), str(tmp_path / "out.img"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.img").read_bytes() == data
    r = run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(tmp_path / "in.img"), node.uri("swap"))
    assert r.returncode == 0, r.stdout + r.stderr
    s = node.stats()
    assert s["counters"]["zcache.writtenback_pages"] > 0
    assert s["counters"]["zcache.pers_pageframes"] <= 1024
    assert s["exports"]["swap"]["counters"]["errors"] == 0


def test_libnbd_random_ops_on_two_connections(node):
    """Random reads, writes, trims and zeroes on two connections to the swap export (through the
    writeback tier) and the cache export, checked against a bytearray model."""
    nbd = need_nbd()
    import random

    rng = random.Random(3)
    for export in ("swap", "disk"):
        handles = []
        for _ in range(2):
            h = nbd.NBD()
            h.connect_uri(node.uri(export))
            handles.append(h)
        size = handles[0].get_size()
        # in pieces: the server refuses requests over its maximum (2 MiB)
        model = bytearray(b"".join(handles[0].pread(min(MiB, size - o), o) for o in range(0, size, MiB)))
        defined = bytearray(b"\1") * size  # trimmed bytes are the server's to choose
        src = corpus_image(node.tmp / f"src-{export}.img", 4 * MiB, which=2)
        for i in range(300):
            h = handles[i % 2]
            op = rng.choice("wwwrrtz")
            off = rng.randrange(size)
            ln = rng.randint(1, min(size - off, 200_000))
            if op == "w":
                s = rng.randrange(len(src) - ln)
                h.pwrite(src[s:s + ln], off, nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0)
                model[off:off + ln] = src[s:s + ln]
                defined[off:off + ln] = b"\1" * ln
            elif op == "r":
                got = h.pread(ln, off)
                want = bytes(model[off:off + ln])
                if defined[off:off + ln].count(0):
                    got = bytes(g if d else 0 for g, d in zip(got, defined[off:off + ln]))
                    want = bytes(w if d else 0 for w, d in zip(want, defined[off:off + ln]))
                assert got == want, (export, i, off, ln)
            elif op == "t":
                h.trim(ln, off)
                defined[off:off + ln] = bytes(ln)
            else:
                h.zero(ln, off)
                model[off:off + ln] = bytes(ln)
                defined[off:off + ln] = b"\1" * ln
        handles[0].flush()
        for h in handles:
            h.shutdown()
    s = node.stats()["exports"]
    assert s["swap"]["counters"]["errors"] == 0 and s["disk"]["counters"]["errors"] == 0


def test_fio_verify_through_writeback(node):
    # 12 MiB of compressible pages on a 4 MiB budget: most of them go through the swap file
    need("fio")
    before = node.stats()["counters"]["zcache.writtenback_pages"]
    r = run("fio", "--name=verify", "--ioengine=nbd", f"--uri={node.uri('swap')}", "--rw=randwrite",
            "--bs=4k", "--iodepth=16", "--size=12M", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0",
            "--buffer_compress_percentage=60", "--refill_buffers", "--output-format=json", timeout=180)
    out = r.stdout
    job = json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)["jobs"][0]
    assert job["error"] == 0, r.stderr
    assert job["write"]["io_bytes"] == 12 * MiB and job["read"]["io_bytes"] == 12 * MiB
    after = node.stats()
    assert after["exports"]["swap"]["counters"]["errors"] == 0
    assert after["counters"]["zcache.writtenback_pages"] > before


@pytest.fixture
def tiny(tmp_path):
    """A node whose 256 KiB of memory (64 frames) is all a 1 MiB swap export without backing file has."""
    n = NodeProcess(tmp_path, "--memory", "256K", "--export", "small:swap:1M")
    yield n
    assert n.stop() == 0
    assert "Traceback" not in n.stderr()


def test_swap_without_backing_takes_any_page_and_reports_enospc_when_full(tiny, tmp_path):
    need("nbdcopy")
    # incompressible pages are kept as they are: 64 of them fit the 64 frames
    data = os.urandom(64 * PAGE)
    (tmp_path / "rand.img").write_bytes(data)
    r = run("nbdcopy", str(tmp_path / "rand.img"), tiny.uri("small"))
    assert r.returncode == 0, r.stderr
    assert tiny.stats()["counters"]["zcache.huge_pages"] == 64
    r = run("nbdcopy", tiny.uri("small"), str(tmp_path / "back.img"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.img").read_bytes()[:len(data)] == data
    # memory is full now: one page more is refused, and the message says what is full
    nbd = need_nbd()

    h = nbd.NBD()
    h.connect_uri(tiny.uri("small"))
    with pytest.raises(nbd.Error) as e:
        h.pwrite(os.urandom(PAGE), 64 * PAGE)
    assert e.value.errno == "ENOSPC"
    for _ in range(3):  # a client retrying the same page
        with pytest.raises(nbd.Error):
            h.pwrite(os.urandom(PAGE), 64 * PAGE)
    with pytest.raises(nbd.Error) as e:
        h.pread(PAGE, 64 * PAGE)  # never zeros for a page whose write failed
    assert e.value.errno == "EIO"
    assert h.pread(PAGE, 0) == data[:PAGE]
    h.shutdown()
    small = tiny.stats()["exports"]["small"]
    assert small["gauges"]["lost_pages"] == 1
    assert small["counters"]["failed_writes"] == 1  # retries of one page count once
    assert small["counters"]["errors"] == 5  # but every error reply is counted


def test_every_error_reply_is_counted_once(tiny):
    nbd = need_nbd()

    def errors() -> int:
        return tiny.stats()["exports"]["small"]["counters"]["errors"]

    h = nbd.NBD()
    h.set_strict_mode(0)  # let the bad request reach the server
    h.connect_uri(tiny.uri("small"))
    before = errors()
    with pytest.raises(nbd.Error):
        h.pread(4096, MiB)  # past the end: the protocol core refuses it
    assert errors() == before + 1
    for i in range(64):
        h.pwrite(os.urandom(4096), i * PAGE)
    with pytest.raises(nbd.Error):
        h.pwrite(os.urandom(4096), 64 * PAGE)  # memory full, no backing file: the export fails it
    assert errors() == before + 2
    h.shutdown()


def test_random_bytes_round_trip_without_backing_file(tmp_path):
    """64 MiB of random bytes into a swap export without a backing file (256 MiB of memory) and back."""
    need("nbdcopy")
    n = NodeProcess(tmp_path, "--memory", "256M", "--export", "swap:swap:128M")
    try:
        data = os.urandom(64 * MiB)
        (tmp_path / "rand.img").write_bytes(data)
        r = run("nbdcopy", str(tmp_path / "rand.img"), n.uri("swap"), timeout=300)
        assert r.returncode == 0, r.stderr
        r = run("nbdcopy", n.uri("swap"), str(tmp_path / "back.img"), timeout=300)
        assert r.returncode == 0, r.stderr
        with open(tmp_path / "back.img", "rb") as f:
            assert f.read(len(data)) == data
        assert n.stats()["exports"]["swap"]["counters"]["errors"] == 0
    finally:
        assert n.stop() == 0
    assert "Traceback" not in n.stderr()


def test_ramster_stats(node):
    r = run(*RAMSTER, "stats", "--json", "--url", node.url)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["node"]["memory"] == 4 * MiB and set(s["exports"]) == {"swap", "disk", "small"}
    r = run(*RAMSTER, "stats", "--summary", "--url", node.url, env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    for word in ("original data", "compressed", "memory used", "ratio", "written back", "swap", "disk"):
        assert word in r.stdout
    # the default view: zramctl's table, a row per export and one for the node
    r = run(*RAMSTER, "stats", "--url", node.url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "KIND", "ALGORITHM", "DISKSIZE"]
    assert [ln.split()[0] for ln in lines[1:]] == ["swap", "disk", "small", "(node)"]
    r = run(*RAMSTER, "stats", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no ramster node" in r.stderr


def test_metrics_endpoint(node):
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "ramster_zcache_writtenback_pages_total" in text
    assert 'ramster_export_requests_total{command="read",export="swap",kind="swap"}' in text


def test_sigterm_exits_zero_and_syncs(node):
    """A cache export's writes reach its file by the time SIGTERM's exit is done."""
    nbd = need_nbd()
    src = corpus_image(node.tmp / "src.img", 8 * MiB, which=2)
    want = bytearray(node.disk)
    h = nbd.NBD()
    h.connect_uri(node.uri("disk"))
    for off in range(0, 8 * MiB, 3 * MiB // 2):  # every other 768 KiB: a mix of old and new pages
        h.pwrite(src[off:off + 3 * MiB // 4], off)
        want[off:off + 3 * MiB // 4] = src[off:off + 3 * MiB // 4]
    assert h.pread(MiB, 0) == want[:MiB]  # some pages cached, so the cache's copies are what's new
    h.shutdown()
    status = node.stop()
    err = node.stderr()
    assert status == 0, err
    assert "Traceback" not in err
    assert "SIGTERM received" in err and "node stopped" in err
    assert not node.sock.exists()
    assert (node.tmp / "disk.img").read_bytes() == want


@pytest.mark.parametrize("args,message", [
    (["--export", "a:tape:1M"], "unknown kind 'tape'"),
    (["--export", "a:swap:1000"], "not a positive multiple of 4096"),
    (["--export", "a:cache:1M:/proc/version"], "cannot use backing file /proc/version"),
    (["--export", "a:cache:1M:node.err/img"], "not a directory"),
    (["--export", "a:cache:1M:/no/such/dir/img"], "cannot be created"),
    (["--memory", "lots"], "invalid memory"),
])
def test_bad_config_one_line(tmp_path, args, message):
    (tmp_path / "node.err").write_text("a file, not a directory")
    r = run(*RAMSTER, "node", "--listen", f"unix:{tmp_path}/s.sock", "--metrics", "off", *args, cwd=tmp_path)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for args in (["--listen", f"127.0.0.1:{port}", "--metrics", "off"],
                     ["--listen", f"unix:{tmp_path}/s.sock", "--metrics", f"127.0.0.1:{port}"]):
            r = run(*RAMSTER, "node", "--memory", "1M", *args, cwd=tmp_path)
            assert r.returncode != 0
            assert r.stderr.count("\n") == 1, r.stderr
            assert "address already in use" in r.stderr


def test_config_file(tmp_path):
    need("nbdinfo")
    (tmp_path / "ramster.toml").write_text("""
[dashboard]
panels = ["memory"]   # another tool's table: not the node's business

[node]
memory = "8M"
compressor = "zstd"
log_level = "debug"

[[node.export]]
name = "wb"
kind = "swap"
size = "4M"
backing = "wb.img"
""")
    n = NodeProcess(tmp_path, "--config", str(tmp_path / "ramster.toml"))
    try:
        r = run("nbdinfo", "--size", n.uri("wb"))
        assert r.returncode == 0 and r.stdout.strip() == str(4 * MiB), r.stderr
        s = n.stats()
        assert s["node"]["compressor"] == "zstd" and s["node"]["memory"] == 8 * MiB
        assert s["exports"]["wb"]["backing"] == str(tmp_path / "wb.img")
    finally:
        assert n.stop() == 0
    assert "DEBUG" in n.stderr() and "Traceback" not in n.stderr()


def test_cluster_config_needs_a_name(tmp_path):
    (tmp_path / "c.toml").write_text('[cluster]\nname = "lab"\n')
    r = run(*RAMSTER, "node", "--config", str(tmp_path / "c.toml"), "--metrics", "off")
    assert r.returncode == 2 and "--name" in r.stderr and "Traceback" not in r.stderr
    r = run(*RAMSTER, "node", "--name", "a", "--metrics", "off")
    assert r.returncode == 2 and "[cluster]" in r.stderr


def test_sigterm_finishes_requests_in_flight(tmp_path):
    """Writes in flight when SIGTERM arrives are answered, and those answered OK are in the file."""
    nbd = need_nbd()
    corpus_image(tmp_path / "disk.img", 8 * MiB)
    n = NodeProcess(tmp_path, "--memory", "4M", "--export", f"disk:cache:8M:{tmp_path}/disk.img")
    h = nbd.NBD()
    h.connect_uri(n.uri("disk"))
    chunk = 128 * 1024
    src = corpus_image(tmp_path / "src.img", 8 * MiB, which=3)
    offsets = list(range(0, 8 * MiB, chunk))
    cookies = {h.aio_pwrite(nbd.Buffer.from_bytearray(src[off:off + chunk]), off): off for off in offsets}
    done: list[int] = []
    failed: dict[int, str | None] = {}  # offset -> errno of the reply, None: no reply at all

    def collect() -> None:
        for cookie in list(cookies):
            try:
                if h.aio_command_completed(cookie):
                    done.append(cookies.pop(cookie))
            except nbd.Error as e:
                failed[cookies.pop(cookie)] = e.errno

    # the first write answered, the other 63 queued or in flight: now stop the node
    while not done and not failed:
        h.poll(-1)
        collect()
    n.proc.send_signal(signal.SIGTERM)
    while cookies:
        if h.aio_is_dead() or h.aio_is_closed():
            failed.update(dict.fromkeys(cookies.values()))  # the connection went away first
            break
        try:
            h.poll(-1)
        except nbd.Error:  # the node closed with requests still unread: a reset, not a reply
            failed.update(dict.fromkeys(cookies.values()))
            break
        collect()
    assert n.proc.wait(timeout=30) == 0, n.stderr()
    assert "Traceback" not in n.stderr()
    # The node reads requests in order; each one read before SIGTERM is carried out and
    # answered, each one after is refused (ESHUTDOWN) or never read (the connection closes).
    # So the writes that succeeded are the first ones sent, all of them in the file, and
    # no write failed for any other reason.
    assert done and sorted(done) == offsets[:len(done)], (sorted(done), failed)
    assert set(failed) == set(offsets[len(done):])
    assert set(failed.values()) <= {"ESHUTDOWN", "ENOTCONN", "ECONNRESET", "EPIPE", None}, failed
    image = (tmp_path / "disk.img").read_bytes()
    for off in done:
        assert image[off:off + chunk] == src[off:off + chunk], off
    print(f"{len(done)} writes answered before the node stopped, {len(failed)} not: {set(failed.values())}")
