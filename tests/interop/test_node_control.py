"""SIGHUP and `ramster ctl` against real node processes: the reload, each verb in /stats,
the rule that a ctl change survives a reload, the socket's permissions and its errors."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pages import image
from support import RAMSTER, NodeProcess, need_nbd

pytestmark = pytest.mark.interop

MiB = 1 << 20
PAGE = 4096


def write_config(path: Path, memory: str, level: str = "info", backing: str | None = None) -> Path:
    lines = ["[node]", f'memory = "{memory}"', f'log_level = "{level}"',
             "[[node.export]]", 'name = "swap"', 'kind = "swap"', 'size = "16M"']
    if backing:
        lines.append(f'backing = "{backing}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def ctl(node: NodeProcess, *words: str, control: Path | None = None) -> subprocess.CompletedProcess:
    path = control or Path(str(node.sock) + ".ctl")
    return subprocess.run([*RAMSTER, "ctl", "--control", str(path), *words], capture_output=True, text=True,
                          timeout=60)


def reloaded(n: int):
    return lambda s: s["counters"]["control.reloads"] >= n


def test_sighup_applies_the_changed_file_and_the_node_keeps_serving(tmp_path):
    cfg = write_config(tmp_path / "node.toml", "8M")
    node = NodeProcess(tmp_path / "n", "--config", str(cfg))
    try:
        assert node.stats()["node"]["memory"] == 8 * MiB
        write_config(cfg, "16M", "debug")
        node.proc.send_signal(signal.SIGHUP)
        s = node.wait_for(reloaded(1), "the reload")
        assert node.alive()
        assert s["counters"]["zcache.max_pageframes"] == 16 * MiB // PAGE
        assert s["node"]["memory"] == 16 * MiB and s["node"]["log_level"] == "debug"
        assert s["counters"]["control.memory_changes"] == 1 and s["counters"]["control.log_level_changes"] == 1
        log = node.stderr()
        assert "SIGHUP: memory 8.0 MiB -> 16.0 MiB" in log and "SIGHUP: log_level info -> debug" in log
        node.wait_ready()  # NBD and /stats still answer
        # the same file again: nothing changes, and the log says so
        node.proc.send_signal(signal.SIGHUP)
        s = node.wait_for(reloaded(2), "the second reload")
        assert s["counters"]["control.memory_changes"] == 1 and s["node"]["memory"] == 16 * MiB
        assert "SIGHUP: nothing changed in the config" in node.stderr()
        # what cannot change at run time is named, not applied
        cfg.write_text(cfg.read_text().replace('log_level = "debug"', 'log_level = "debug"\ncompressor = "zlib"'))
        node.proc.send_signal(signal.SIGHUP)
        node.wait_for(reloaded(3), "the third reload")
        assert "compressor changed in the config (lz4 -> zlib): needs a restart, not applied" in node.stderr()
        assert node.stats()["node"]["compressor"] == "lz4"
    finally:
        assert node.stop() == 0
    assert not Path(str(node.sock) + ".ctl").exists()  # the control socket goes with the node


def test_each_ctl_verb_shows_in_stats_and_survives_a_sighup(tmp_path):
    nbd = need_nbd()
    cfg = write_config(tmp_path / "node.toml", "8M", backing=str(tmp_path / "swap.img"))
    node = NodeProcess(tmp_path / "n", "--config", str(cfg))
    try:
        r = ctl(node, "memory", "12M")
        assert r.returncode == 0 and r.stdout.strip() == "memory 8.0 MiB -> 12.0 MiB", r.stderr
        assert ctl(node, "log-level", "warning").returncode == 0
        s = node.stats()
        assert s["counters"]["zcache.max_pageframes"] == 12 * MiB // PAGE and s["node"]["log_level"] == "warning"
        assert s["counters"]["control.memory_changes"] == 1 and s["counters"]["control.log_level_changes"] == 1
        assert "ctl: memory 8.0 MiB -> 12.0 MiB" in node.stderr()
        # an unchanged file leaves the ctl changes in force
        node.proc.send_signal(signal.SIGHUP)
        s = node.wait_for(reloaded(1), "the reload")
        assert s["counters"]["zcache.max_pageframes"] == 12 * MiB // PAGE and s["node"]["log_level"] == "warning"
        # a file that changes one of them wins for that one only
        write_config(cfg, "8M", "error", backing=str(tmp_path / "swap.img"))
        r = ctl(node, "reload")
        assert r.returncode == 0 and "log_level warning -> error" in r.stdout, r.stdout + r.stderr
        s = node.stats()
        assert s["counters"]["zcache.max_pageframes"] == 12 * MiB // PAGE and s["node"]["log_level"] == "error"
        # zram's verbs: pages to mark and write back
        h = nbd.NBD()
        h.connect_uri(node.uri("swap"))
        data = image(4 * MiB, "anon-python.pages")
        for off in range(0, len(data), MiB):
            h.pwrite(data[off:off + MiB], off)
        h.shutdown()
        r = ctl(node, "mark-idle")
        assert r.returncode == 0 and "page(s) marked idle" in r.stdout
        # with a swap disk, a page that does not compress goes to it at once: no huge page to move
        huge = node.counters()["zcache.huge_pages"]
        r = ctl(node, "writeback", "huge")
        assert r.returncode == 0 and f"writeback huge: {huge} page(s)" in r.stdout, r.stdout + r.stderr
        r = ctl(node, "writeback", "idle", "100")
        assert r.returncode == 0 and "writeback idle: 100 page(s)" in r.stdout, r.stdout + r.stderr
        c = node.counters()
        assert c["control.idle_marks"] == 1 and c["control.huge_writebacks"] == 1 and c["control.idle_writebacks"] == 1
        assert c["zcache.written_back_idle"] == 100 and c["zcache.written_back_huge"] == huge
        r = ctl(node, "show")
        assert r.returncode == 0 and "memory = 12.0 MiB" in r.stdout.splitlines()
        assert node.counters()["control.requests"] == 7  # memory, log-level, reload, mark-idle, 2 writebacks, show
    finally:
        assert node.stop() == 0


def test_ctl_errors_are_one_line_with_the_right_status(tmp_path):
    node = NodeProcess(tmp_path / "n", "--memory", "8M")
    try:
        for words, text in ((("memory", "12X"), "invalid memory '12X'"),
                            (("memory", "100T"), "is more than"),
                            (("peer", "b", "down"), "not in a cluster"),
                            (("log-level", "loud"), "unknown log level 'loud'")):
            r = ctl(node, *words)
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and text in r.stderr, (words, r.stderr)
            assert r.stderr.startswith("ramster ctl: ")
        r = ctl(node, "memory")
        assert r.returncode == 2 and "usage: ramster ctl memory SIZE" in r.stderr
        assert node.stats()["node"]["memory"] == 8 * MiB
    finally:
        node.stop()
    r = ctl(node, "show")
    assert r.returncode == 1 and "no node running with control socket" in r.stderr
    assert r.stderr.count("\n") == 1
    r = subprocess.run([*RAMSTER, "ctl", "--help"], capture_output=True, text=True, timeout=60)
    for verb in ("memory", "log-level", "remotify", "pin", "unpin", "peer", "selfshrink", "mark-idle", "writeback"):
        assert verb in r.stdout


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run `ramster` in a forked child that became uid nobody: (exit status, stderr)."""
    from ramster.cli import main

    main.build_parser()  # every module imported while still root
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on
        code = 99
        try:
            sys.stderr = os.fdopen(wr, "w")
            os.setgid(65534)
            os.setuid(65534)
            code = main.main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(wr)
    with os.fdopen(rd) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_another_user_is_refused(tmp_path):
    # a directory every user may enter, so only the socket's own checks stand in the way
    d = Path(tempfile.mkdtemp(prefix="ramster-ctl-"))
    os.chmod(d, 0o755)
    path = d / "control.sock"
    node = NodeProcess(tmp_path / "n", "--memory", "8M", "--control", str(path))
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        code, err = _as_nobody(["ctl", "--control", str(path), "memory", "16M"])
        assert code == 2 and "permission denied" in err, err
        # past the file's mode, the node itself asks the kernel who is calling
        os.chmod(path, 0o666)
        code, err = _as_nobody(["ctl", "--control", str(path), "memory", "16M"])
        assert code == 2 and "permission denied: uid 65534 may not control this node" in err, err
        s = node.stats()
        assert s["node"]["memory"] == 8 * MiB and s["counters"]["control.requests_refused"] == 1
        assert "refused a connection from uid 65534" in node.stderr()
        # the node's own user (root here) is served
        assert ctl(node, "show", control=path).returncode == 0
    finally:
        node.stop()
        path.unlink(missing_ok=True)
        d.rmdir()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path):
    path = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX) as s:  # bound, never listening: what a killed node leaves
        s.bind(str(path))
    node = NodeProcess(tmp_path / "a", "--memory", "8M", "--control", str(path))
    try:
        assert ctl(node, "show", control=path).returncode == 0
        other = NodeProcess(tmp_path / "b", "--memory", "8M", "--control", str(path), start=False)
        other.start()
        assert other.proc.wait(30) == 2
        assert f"cannot serve control socket {path}: a running node answers on {path}" in other.stderr()
        assert ctl(node, "show", control=path).returncode == 0
    finally:
        node.stop()


def test_sighup_before_a_config_file_changes_nothing_and_does_not_kill(tmp_path):
    node = NodeProcess(tmp_path / "n", "--memory", "8M")
    try:
        node.proc.send_signal(signal.SIGHUP)
        s = node.wait_for(reloaded(1), "the reload")
        assert node.alive() and s["node"]["memory"] == 8 * MiB
    finally:
        assert node.stop() == 0


def test_a_reload_tells_the_service_manager(tmp_path, monkeypatch):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify.sock"))
        manager.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        cfg = write_config(tmp_path / "node.toml", "8M")
        node = NodeProcess(tmp_path / "n", "--config", str(cfg))

        def next_state(*wanted: str) -> list[str]:
            while True:
                states = manager.recv(4096).decode().split("\n")
                if any(w in states for w in wanted):
                    return states

        try:
            assert "READY=1" in next_state("READY=1")
            write_config(cfg, "16M")
            node.proc.send_signal(signal.SIGHUP)
            assert "RELOADING=1" in next_state("RELOADING=1", "READY=1")
            assert "READY=1" in next_state("READY=1")
            assert node.stats()["node"]["memory"] == 16 * MiB
        finally:
            assert node.stop() == 0
