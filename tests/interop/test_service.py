"""The node as a service: sd_notify readiness, log lines a collector parses, the example
systemd unit, budgets the machine cannot hold, and where relative paths point."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import IN_CI, NodeProcess, need, need_nbd

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
RAMSTER = [sys.executable, "-m", "ramster.cli"]


def recv_until(sock: socket.socket, key: str) -> tuple[list[str], int]:
    """Datagrams until one that assigns `key`: the assignments seen and that one's sender pid."""
    seen = []
    while True:
        msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))  # the socket's timeout bounds the wait
        pid = next(int.from_bytes(d[:4], "little") for lvl, kind, d in anc
                   if (lvl, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS))
        lines = msg.decode().split("\n")
        seen += lines
        if key in lines:
            return seen, pid


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_when_listening_and_stopping_on_sigterm(tmp_path, monkeypatch, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        if abstract:
            name = f"ramster-notify-{os.getpid()}-{tmp_path.name}"
            notify.bind(b"\0" + name.encode())
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            notify.bind(str(tmp_path / "notify.sock"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        notify.settimeout(30)
        node = NodeProcess(tmp_path / "n", "--memory", "4M", start=False)
        node.start()
        try:
            lines, pid = recv_until(notify, "READY=1")
            assert pid == node.proc.pid  # systemd's NotifyAccess=main accepts only the main process
            # READY=1 means every listener is bound: both answer now, without retrying
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(node.sock))
                assert s.recv(8) == b"NBDMAGIC"
            assert node.stats()["node"]["pid"] == pid
            status = next(line for line in lines if line.startswith("STATUS="))
            assert f"on unix:{node.sock}" in status and "of 4.0 MiB" in status, status
            node.proc.send_signal(15)
            lines, pid = recv_until(notify, "STOPPING=1")
            assert pid == node.proc.pid
            assert any(line.startswith("STATUS=stopping") for line in lines)
            assert node.proc.wait(30) == 0, node.stderr()
        finally:
            node.stop()
    assert "Traceback" not in node.stderr() and "cannot notify" not in node.stderr()


def test_no_manager_listening_is_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-here"))
    node = NodeProcess(tmp_path, "--memory", "4M")
    assert node.stop() == 0
    err = node.stderr()
    assert err.count("cannot notify the service manager") == 1, err
    assert "node stopped" in err


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_log_lines_parse(tmp_path, fmt):
    node = NodeProcess(tmp_path, "--memory", "4M", "--log-format", fmt, "--log-level", "debug")
    assert node.stop() == 0
    lines = node.stderr().splitlines()
    assert lines, "the node logged nothing"
    records = [json.loads(line) if fmt == "json" else parse_logfmt(line) for line in lines]
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= set(r), r
        assert r["level"] in ("debug", "info", "warning", "error", "critical")
    msgs = [r["msg"] for r in records]
    assert any(m.startswith("node started: 4.0 MiB memory") for m in msgs), msgs
    assert "SIGTERM received: stopping" in msgs and msgs[-1] == "node stopped"
    assert {r["logger"] for r in records} >= {"ramster.node"}


LOGFMT_PAIR = r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"=]*)'


def parse_logfmt(line: str) -> dict:
    """key=value pairs separated by single spaces, and nothing else on the line."""
    assert re.fullmatch(f"{LOGFMT_PAIR}( {LOGFMT_PAIR})*", line), line
    out = {}
    for m in re.finditer(LOGFMT_PAIR, line):
        v = m.group(2)
        out[m.group(1)] = re.sub(r'\\(.)', r"\1", v[1:-1]) if v.startswith('"') else v
    return out


def test_log_format_from_the_config_file(tmp_path):
    (tmp_path / "ramster.toml").write_text('[node]\nmemory = "4M"\nlog_format = "json"\n')
    node = NodeProcess(tmp_path, "--config", "ramster.toml")
    assert node.stop() == 0
    assert [json.loads(line)["msg"] for line in node.stderr().splitlines()][-1] == "node stopped"


# ---- the example systemd unit --------------------------------------------------------

UNIT = REPO / "contrib" / "ramster.service"
VENV_RAMSTER = "/opt/ramster/.venv/bin/ramster"


def installed_unit(tmp_path: Path) -> Path:
    """The unit as an operator installs it: ExecStart pointed at this venv's ramster
    (systemd-analyze checks that the program exists), nothing else changed."""
    text = UNIT.read_text()
    assert f"ExecStart={VENV_RAMSTER} node --config /etc/ramster/ramster.toml" in text
    ramster = Path(sys.executable).with_name("ramster")
    assert ramster.is_file(), f"no {ramster}: the venv's entry point is what ExecStart names"
    unit = tmp_path / "ramster.service"
    unit.write_text(text.replace(VENV_RAMSTER, str(ramster)))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    need("systemd-analyze")
    unit = installed_unit(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on an unknown key or a bad value, only saying so: both must be silent
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr + r.stdout


def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path):
    need("systemd-analyze")
    unit = installed_unit(tmp_path)
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Failed to parse service type" in r.stderr


def test_the_unit_is_hardened(tmp_path):
    """systemd's own score of what the service could do if taken over: at most 2.0 of 10
    ("OK"); the node needs no root, no devices and no other address families."""
    need("systemd-analyze")
    unit = installed_unit(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "DynamicUser=yes"):
        assert f"\n{line}\n" in text, line


def test_the_example_config_loads():
    from ramster import config

    toml = REPO / "contrib" / "ramster.toml"
    node = config.load_file(toml)
    assert node["log_format"] == "logfmt"
    # its paths are absolute (the unit lets the node write only under /var/lib and /run)
    assert all(not a.startswith("unix:") or a.startswith("unix:/") for a in node["listen"])
    assert all(Path(e["backing"]).is_absolute() for e in node["export"])
    # everything but the paths, which need the unit's directories, validates here
    cfg = config.build(toml, listen=["127.0.0.1:1"], exports=["swap:swap:4M"])
    assert cfg.memory == 1 << 30 and cfg.log_format == "logfmt"


# The kernel's own form of the unit's MemoryDenyWriteExecute=yes (prctl PR_SET_MDWE, Linux
# 6.3): no mapping may become writable and executable, in this process and what it execs.
MDWE_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[1], sys.argv[1:])
"""


class MdweNode(NodeProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", MDWE_EXEC, *super().command()]


def test_the_node_runs_with_memory_deny_write_execute(tmp_path):
    """The unit denies W+X memory; a node under that rule starts, stores and returns pages."""
    probe = subprocess.run([sys.executable, "-c", MDWE_EXEC, sys.executable, "-c",
                            "import mmap; mmap.mmap(-1, 4096, prot=7)"], capture_output=True, text=True)
    if "PR_SET_MDWE" in probe.stderr:
        (pytest.fail if IN_CI else pytest.skip)(f"this kernel has no PR_SET_MDWE: {probe.stderr.strip()}")
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe.stderr  # the rule holds
    nbd = need_nbd()
    node = MdweNode(tmp_path, "--memory", "4M", "--export", "s:swap:1M")
    try:
        h = nbd.NBD()
        h.connect_uri(node.uri("s"))
        data = b"".join(bytes([i]) * 2048 + os.urandom(2048) for i in range(64))
        h.pwrite(data, 0)
        assert h.pread(len(data), 0) == data
        h.shutdown()
        assert node.counters()["zcache.pers_zpages"] > 0
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.stderr()


# ---- budgets and paths ------------------------------------------------------------------

def test_a_budget_above_the_machine_is_refused_in_one_line(tmp_path):
    from ramster import hostmem

    most, where = hostmem.limit()
    over = (most // 4096 + 1) * 4096
    r = subprocess.run([*RAMSTER, "node", "--memory", str(over), "--listen", f"unix:{tmp_path}/s.sock",
                        "--metrics", "off"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("ramster node: memory ") and r.stderr.count("\n") == 1, r.stderr
    assert where in r.stderr and r.stdout == ""
    assert not (tmp_path / "s.sock").exists()


def test_a_budget_near_the_machine_starts_with_one_warning(tmp_path):
    from ramster import hostmem

    most, where = hostmem.limit()
    near = most * 19 // 20 // 4096 * 4096  # 95%, less the rounding down to a page
    node = NodeProcess(tmp_path, "--memory", str(near), "--export", "s:swap:1M", "--log-format", "json")
    assert node.stop() == 0
    records = [json.loads(line) for line in node.stderr().splitlines()]
    warnings = [r for r in records if r["level"] == "warning"]
    assert len(warnings) == 1 and where in warnings[0]["msg"], warnings
    assert re.search(r"is 9[45]% of", warnings[0]["msg"]), warnings


def test_relative_paths_file_beside_the_file_command_line_in_the_working_directory(tmp_path):
    etc, cwd = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    (etc / "ramster.toml").write_text('[node]\nmemory = "4M"\n[[node.export]]\n'
                                      'name = "f"\nkind = "swap"\nsize = "1M"\nbacking = "f.img"\n')
    node = NodeProcess(cwd, "--config", "../etc/ramster.toml")  # started in cwd
    try:
        assert node.stats()["exports"]["f"]["backing"] == str(etc / "f.img")
    finally:
        assert node.stop() == 0
    assert (etc / "f.img").exists() and not (cwd / "f.img").exists()
    node = NodeProcess(cwd, "--config", "../etc/ramster.toml", "--export", "c:swap:1M:c.img")
    try:
        assert node.stats()["exports"]["c"]["backing"] == str(cwd / "c.img")
    finally:
        assert node.stop() == 0
    assert (cwd / "c.img").exists() and not (etc / "c.img").exists()


# ---- what the program says it is --------------------------------------------------------

@pytest.mark.parametrize("module", ["ramster", "ramster.cli"])
def test_version(module):
    import tomllib

    import ramster

    want = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert ramster.__version__ == want
    r = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == f"ramster {want}\n", r.stdout + r.stderr
    entry = Path(sys.executable).with_name("ramster")
    r = subprocess.run([str(entry), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == f"ramster {want}\n", r.stdout + r.stderr
