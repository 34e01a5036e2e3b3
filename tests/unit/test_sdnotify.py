"""sd_notify by hand: datagrams on a socket the test binds, as systemd binds NOTIFY_SOCKET."""
from __future__ import annotations

import os
import socket
import time

import pytest

from ramster import sdnotify


@pytest.fixture
def listener(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(5)
    yield s
    s.close()


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.enabled()
    assert sdnotify.notify("READY=1") is False


def test_ready_reaches_a_path_socket(monkeypatch, listener):
    monkeypatch.setenv("NOTIFY_SOCKET", listener.getsockname())
    assert sdnotify.enabled()
    assert sdnotify.notify("READY=1\nSTATUS=serving") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving"


def test_abstract_socket(monkeypatch):
    name = f"ramster-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1") is True
        assert s.recv(4096) == b"STOPPING=1"


def test_status_is_one_line(monkeypatch, listener):
    monkeypatch.setenv("NOTIFY_SOCKET", listener.getsockname())
    sdnotify.status("two\nlines")
    assert listener.recv(4096) == b"STATUS=two lines"


def test_reloading_carries_the_monotonic_clock(monkeypatch, listener):
    monkeypatch.setenv("NOTIFY_SOCKET", listener.getsockname())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sdnotify.notify("RELOADING=1")
    lines = listener.recv(4096).decode().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=", 1)[1]) <= after


def test_sender_is_this_process(monkeypatch, listener):
    # the manager accepts a notification only from the service's main pid (NotifyAccess=main)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    monkeypatch.setenv("NOTIFY_SOCKET", listener.getsockname())
    sdnotify.notify("READY=1")
    msg, anc, _, _ = listener.recvmsg(4096, socket.CMSG_SPACE(12))
    assert msg == b"READY=1"
    (level, kind, data), = anc
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    assert int.from_bytes(data[:4], "little") == os.getpid()


def test_a_missing_manager_is_logged_once_and_not_raised(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    monkeypatch.setattr(sdnotify, "_warned", False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.notify("STATUS=x") is False
    warnings = [r for r in caplog.records if r.name == "ramster.sdnotify"]
    assert len(warnings) == 1 and "NOTIFY_SOCKET" in warnings[0].getMessage()
