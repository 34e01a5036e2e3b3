"""RAMster between real `ramster node` processes on loopback, driven through their NBD exports."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import NodeProcess, free_port, need, need_nbd
from pages import image

pytestmark = pytest.mark.interop

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
RAMSTER = [sys.executable, "-m", "ramster.cli"]


def corpus_image(path: Path, size: int) -> bytes:
    """Real pages that all compress (a swap export without a disk refuses the others)."""
    data = image(size, "anon-python.pages")
    path.write_bytes(data)
    return data


def write_config(tmp: Path, names: list[str], replicas: int = 1, **extra) -> Path:
    """tmp/cluster.toml, with every node's private key in tmp/keys (the default key_dir)."""
    from ramster.remote.keys import node_keys

    public = node_keys(tmp / "keys", names)
    lines = ['[cluster]', 'name = "lab"', "request_timeout = 2", "keepalive = 0.5", "idle_timeout = 5"]
    for k, v in extra.items():
        lines.append(f"{k} = {v}")
    for i, name in enumerate(names):
        lines += ["[[cluster.node]]", f'name = "{name}"', f"number = {i}", f'address = "127.0.0.1:{free_port()}"',
                  f'public_key = "{public[name]}"']
    lines += ["[remotify]", "persistent = true", "ephemeral = true", f"replicas = {replicas}"]
    path = tmp / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def Node(tmp: Path, config: Path, name: str, memory: str, *exports: str) -> NodeProcess:
    """Node `name` of the cluster file, in tmp/name, logging at debug level."""
    args = ["--config", str(config), "--name", name, "--memory", memory, "--log-level", "debug"]
    for e in exports:
        args += ["--export", e]
    return NodeProcess(tmp / name, *args, name=name)


@pytest.fixture
def nodes():
    started: list[Node] = []
    yield started
    for n in started:
        n.stop()


def connected(peer_name: str):
    return lambda s: any(p["name"] == peer_name and p["connected"] for p in s["peers"])


def run(*cmd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_three_times_one_nodes_memory_round_trips_through_a_peer(tmp_path, nodes):
    need("nbdcopy")
    cfg = write_config(tmp_path, ["a", "b"])
    a = Node(tmp_path, cfg, "a", "4M", "swap:swap:12M")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "32M", "swap:swap:4M")
    nodes.append(b)
    a.wait_for(connected("b"), "connecting to b")
    image = tmp_path / "in.img"
    data = corpus_image(image, 12 * MiB)
    r = run("nbdcopy", str(image), a.uri("swap"))
    assert r.returncode == 0, r.stderr + a.stderr()[-3000:]
    out = tmp_path / "out.img"
    r = run("nbdcopy", a.uri("swap"), str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    sa, sb = a.counters(), b.counters()
    assert sa["ramster.pers_pages_remoted"] > 0 and sa["ramster.remote_pers_pages_succ_get"] > 0
    assert sb["ramster.foreign_pers_pages"] > 0
    assert a.stats()["exports"]["swap"]["counters"]["errors"] == 0
    peer = [p for p in a.stats()["peers"] if p["name"] == "b"][0]
    assert peer["connected"] and peer["pages_held"] > 0
    # discarding the whole device (swapon --discard) reaches the remote copies
    nbd = need_nbd()

    h = nbd.NBD()
    h.connect_uri(a.uri("swap"))
    h.trim(h.get_size(), 0)
    h.shutdown()
    b.wait_for(lambda s: s["counters"]["ramster.foreign_pers_pages"] == 0, "remote flushes")
    assert a.counters()["ramster.remote_pers_pages"] == 0
    assert a.counters()["ramster.remote_objects_flushed"] > 0


def test_node_with_a_key_the_cluster_does_not_list_is_refused(tmp_path, nodes):
    from ramster.remote.keys import node_keys

    cfg = write_config(tmp_path, ["a", "b"])
    # b's copy of the file lists a key of its own making; a's lists b's real one
    bad = tmp_path / "bad"
    own = node_keys(bad / "keys", ["b"])["b"]
    real = cfg.read_text().split('name = "b"')[1].split('public_key = "')[1].split('"')[0]
    (bad / "cluster.toml").write_text(cfg.read_text().replace(real, own))
    a = Node(tmp_path, cfg, "a", "4M", "swap:swap:4M")
    nodes.append(a)
    b = Node(tmp_path, bad / "cluster.toml", "b", "4M", "swap:swap:4M")
    nodes.append(b)
    # b (the higher number) dials a; a refuses it and says why, and they stay apart
    s = a.wait_for(lambda s: s["counters"]["ramster.auth_failures"] > 0, "refusing the peer")
    assert s["peers"][0]["refused"] > 0 and s["counters"]["ramster.handshakes_refused"] > 0
    assert "authentication failed" in a.stderr()
    b.wait_for(lambda s: "refused this connection, saying: authentication failed" in b.stderr(),
               "b learning why")
    assert not any(p["connected"] for p in a.stats()["peers"])
    assert not any(p["connected"] for p in b.stats()["peers"])


def _read_all(uri: str, size: int) -> bytes:
    nbd = need_nbd()

    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        return b"".join(h.pread(min(1 * MiB, size - off), off) for off in range(0, size, MiB))
    finally:
        h.shutdown()


def test_metrics_and_stats_show_peers(tmp_path, nodes):
    cfg = write_config(tmp_path, ["a", "b"])
    a = Node(tmp_path, cfg, "a", "4M", "swap:swap:8M")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "16M", "swap:swap:4M")
    nodes.append(b)
    a.wait_for(lambda s: connected("b")(s) and s["peers"][0]["rtt_seconds"] is not None, "a measured round trip")
    with urllib.request.urlopen(a.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'ramster_peer_connected{peer="b"} 1.0' in text
    assert 'ramster_pages_remoted_total{pool="pers"}' in text and "ramster_peer_rtt_seconds" in text
    r = run(*RAMSTER, "stats", "--summary", "--url", a.url)
    assert r.returncode == 0 and "peers" in r.stdout and "connected" in r.stdout and "RAMster" in r.stdout
    r = run(*RAMSTER, "stats", "-n", "--raw", "-o", "name,peers,remote", "--url", a.url)
    assert r.returncode == 0 and r.stdout.split()[:3] == ["swap", "1/1", str(a.counters()["ramster.remote_pers_pages"])]


def test_kill_one_replica_during_load_loses_nothing_and_rereplicates(tmp_path, nodes):
    need("nbdcopy")
    import threading

    nbd = need_nbd()

    cfg = write_config(tmp_path, ["a", "b", "c", "d"], replicas=2)
    a = Node(tmp_path, cfg, "a", "4M", "swap:swap:12M")
    nodes.append(a)
    for name in ("b", "c", "d"):
        nodes.append(Node(tmp_path, cfg, name, "16M", "swap:swap:4M"))
    for name in ("b", "c", "d"):
        a.wait_for(connected(name), f"connecting to {name}")
    image = tmp_path / "in.img"
    data = corpus_image(image, 12 * MiB)
    r = run("nbdcopy", str(image), a.uri("swap"))
    assert r.returncode == 0, r.stderr
    # one snapshot: the remotify worker may still be moving pages between two
    s = a.stats()
    remote = s["counters"]["ramster.remote_pers_pages"]
    assert remote > 1000
    held = {p["name"]: p["pages_held"] for p in s["peers"]}
    assert sum(held.values()) == 2 * remote  # two copies of every remote page
    victim = max(held, key=held.get)
    # the load: one client reads the first half, another rewrites the second half
    half = 6 * MiB
    new_half = data[:half][::-1]
    out = tmp_path / "out.img"
    reader = subprocess.Popen(["nbdcopy", a.uri("swap"), str(out)], stderr=subprocess.PIPE, text=True)
    errors: list[BaseException] = []

    def write_second_half() -> None:
        try:
            h = nbd.NBD()
            h.connect_uri(a.uri("swap"))
            for off in range(0, half, 256 * 1024):
                h.pwrite(new_half[off:off + 256 * 1024], half + off)
            h.shutdown()
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    writer = threading.Thread(target=write_second_half)
    writer.start()
    next(n for n in nodes if n.name == victim).proc.kill()  # kill -9 under the load
    _, err = reader.communicate(timeout=120)
    writer.join(timeout=120)
    assert reader.returncode == 0, err
    assert not errors, errors
    assert out.read_bytes()[:half] == data[:half]
    # the pages the victim held get a second copy on the fourth node
    s = a.wait_for(lambda s: s["counters"]["ramster.pages_rereplicated"] > 0, "re-replication")
    assert s["counters"]["ramster.remote_pers_pages_lost"] == 0
    assert _read_all(a.uri("swap"), 12 * MiB) == data[:half] + new_half


def test_paused_peer_times_out_and_recovers(tmp_path, nodes):
    need("nbdcopy")
    nbd = need_nbd()

    cfg = write_config(tmp_path, ["a", "b"])
    a = Node(tmp_path, cfg, "a", "4M", "swap:swap:12M")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "32M", "swap:swap:4M")
    nodes.append(b)
    a.wait_for(connected("b"), "connecting to b")
    image = tmp_path / "in.img"
    data = corpus_image(image, 12 * MiB)
    assert run("nbdcopy", str(image), a.uri("swap")).returncode == 0
    assert a.counters()["ramster.remote_pers_pages"] > 0
    b.proc.send_signal(signal.SIGSTOP)
    try:
        h = nbd.NBD()
        h.connect_uri(a.uri("swap"))
        # the oldest pages went to b first, but a page's frame moves to the LRU tail when
        # its buddy arrives: find the first page that lives on b
        for off in range(0, 12 * MiB, 4096):
            t0 = time.monotonic()
            try:
                assert h.pread(4096, off) == data[off:off + 4096]  # held here: served at once
            except nbd.Error as e:
                assert e.errno == "EIO" and time.monotonic() - t0 < 10  # EIO within the request timeout
                break
        else:
            pytest.fail("no page read failed while b was paused")
        # the node keeps serving the pages it holds itself (nbdcopy writes in parallel
        # chunks, so which offsets stayed here is not known: the first one served will do)
        assert a.counters()["zcache.pers_zpages"] > 0
        deadline = time.monotonic() + 60
        for back in range(12 * MiB - 4096, -1, -4096):
            try:
                assert h.pread(4096, back) == data[back:back + 4096]
                break
            except nbd.Error as e:
                assert e.errno == "EIO" and time.monotonic() < deadline
        else:
            pytest.fail("no page was served while b was paused")
    finally:
        b.proc.send_signal(signal.SIGCONT)
    a.wait_for(connected("b"), "reconnecting to b")
    assert h.pread(4096, off) == data[off:off + 4096]
    h.shutdown()
    assert _read_all(a.uri("swap"), 12 * MiB) == data


def test_restarted_peer_lost_pages_are_eio_or_come_from_the_swap_disk(tmp_path, nodes):
    need("nbdcopy")
    nbd = need_nbd()

    cfg = write_config(tmp_path, ["a", "b"])
    disk = tmp_path / "a-swap.img"
    a = Node(tmp_path, cfg, "a", "4M", "nb:swap:8M", f"wb:swap:8M:{disk}")
    nodes.append(a)
    b = Node(tmp_path, cfg, "b", "32M", "swap:swap:4M")
    nodes.append(b)
    a.wait_for(connected("b"), "connecting to b")
    image = tmp_path / "in.img"
    data = corpus_image(image, 8 * MiB)
    for export in ("nb", "wb"):
        assert run("nbdcopy", str(image), a.uri(export)).returncode == 0
    assert a.counters()["ramster.remote_pers_pages"] > 500
    b.proc.kill()
    b.proc.wait()
    nodes.append(Node(tmp_path, cfg, "b", "32M", "swap:swap:4M"))  # back, empty, with a new boot id
    a.wait_for(lambda s: connected("b")(s) and s["peers"][0]["pages_held"] == 0, "learning b lost its pages")
    # the export with a swap disk lost nothing (remotify wrote it through)
    assert _read_all(a.uri("wb"), 8 * MiB) == data
    # the one without: every page reads back right or fails with EIO, never wrong or zeros
    h = nbd.NBD()
    h.connect_uri(a.uri("nb"))
    eio = 0
    for off in range(0, 8 * MiB, 4096):
        try:
            assert h.pread(4096, off) == data[off:off + 4096]
        except nbd.Error as e:
            assert e.errno == "EIO"
            eio += 1
    h.shutdown()
    assert eio > 0 and a.counters()["ramster.remote_pers_pages_lost"] >= eio
