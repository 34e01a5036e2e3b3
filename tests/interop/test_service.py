"""The node as a service: sd_notify readiness, log lines a collector parses, the example
systemd unit, budgets the machine cannot hold, and where relative paths point."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import NodeProcess, need

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


def parse_logfmt(line: str) -> dict:
    import re

    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        out[m.group(1)] = re.sub(r'\\(.)', r"\1", v[1:-1]) if v.startswith('"') else v
    assert " ".join(f"{k}=" for k in out) and line.startswith("ts="), line
    return out


def test_log_format_from_the_config_file(tmp_path):
    (tmp_path / "ramster.toml").write_text('[node]\nmemory = "4M"\nlog_format = "json"\n')
    node = NodeProcess(tmp_path, "--config", "ramster.toml")
    assert node.stop() == 0
    assert [json.loads(line)["msg"] for line in node.stderr().splitlines()][-1] == "node stopped"
