"""Hostile clients against a real server process: memory stays bounded and others stay served.

Each attack runs against `python -m ramster ramdisk` (RAM disks, short
timeouts given on its command line) and against a real `ramster node` (its
defaults), from raw sockets, while a libnbd client keeps writing and reading
back verified data. The server's VmRSS is sampled throughout and must stay
within its budget plus 256 MiB (DESIGN.md, the trust contract, point 4).
"""
from __future__ import annotations

import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import RAMSTER, need_nbd, stop_process

from ramster.nbd import wire as P

pytestmark = pytest.mark.interop

MiB = 1 << 20
MAX = 2 * MiB               # the advertised maximum request length
BUDGET = 64 * MiB           # the RAM disk's size / the node's --memory
OVERHEAD = 256 * MiB        # what the trust contract allows on top of the budget
SLOW_TIMEOUT = 2.0          # handshake/request/drain limits given to the RAM-disk server


# --- the two servers ---------------------------------------------------------------------
class Server:
    def __init__(self, tmp: Path, cmd: list[str], export: str):
        self.sock = tmp / "nbd.sock"
        self.export = export
        self.stderr_path = tmp / "server.err"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd + ["--listen", f"unix:{self.sock}"], stdout=subprocess.DEVNULL,
                                         stderr=err, cwd=tmp)
        deadline = time.monotonic() + 30
        while True:  # readiness: the greeting arrives
            assert self.proc.poll() is None, self.stderr()
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(self.sock))
                    if s.recv(8) == b"NBDMAGIC":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not start: " + self.stderr()
            time.sleep(0.05)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.export}?socket={self.sock}"

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc, timeout=30)


def _serve(kind: str, tmp_path):
    if kind == "ramdisk":
        srv = Server(tmp_path, [sys.executable, "-m", "ramster", "ramdisk", "-v", "--memory", f"disk:{BUDGET}",
                                "--handshake-timeout", str(SLOW_TIMEOUT), "--request-timeout", str(SLOW_TIMEOUT),
                                "--drain-timeout", str(SLOW_TIMEOUT)], "disk")
    else:
        srv = Server(tmp_path, [*RAMSTER, "node", "--memory", f"{BUDGET >> 20}M", "--export", "swap:swap:256M",
                                "--metrics", "off"], "swap")
    srv.kind = kind
    yield srv
    status = srv.stop()
    log = srv.stderr()
    assert "Traceback" not in log, log
    assert status == 0, f"server exited with {status}:\n{log}"


@pytest.fixture(params=["ramdisk", "node"])
def server(request, tmp_path):
    yield from _serve(request.param, tmp_path)


@pytest.fixture
def ramdisk_server(tmp_path):
    """The RAM-disk server, whose limits the test can shorten (the node's are its defaults)."""
    yield from _serve("ramdisk", tmp_path)


# --- raw protocol helpers --------------------------------------------------------------------
def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "server closed the connection"
        buf += chunk
    return buf


def _connect(srv: Server) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(srv.sock))
    return s


def _go(srv: Server) -> socket.socket:
    s = _connect(srv)
    _recv_exact(s, 18)
    name = srv.export.encode()
    data = struct.pack(">I", len(name)) + name + b"\0\0"
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, len(data)) + data)
    while True:
        _, _, rep, length = struct.unpack(">QIII", _recv_exact(s, 20))
        _recv_exact(s, length)
        if rep == P.REP_ACK:
            return s
        assert rep in (P.REP_INFO,), rep


def _req(cmd: int, offset: int, length: int, cookie: int = 1) -> bytes:
    return struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, cmd, cookie, offset, length)


def _is_closed(s: socket.socket, timeout: float) -> bool:
    """Whether the server ends the connection within `timeout` (reading what it sends meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        s.settimeout(remaining)
        try:
            if not s.recv(1 << 20):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True


def _hung_up(s: socket.socket, timeout: float) -> bool:
    """Whether the server ends the connection within `timeout`, without reading what it sent."""
    poller = select.poll()
    poller.register(s, select.POLLRDHUP | select.POLLHUP)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in poller.poll(remaining * 1000)):
            return True


# --- what runs during an attack ---------------------------------------------------------------
class RssSampler(threading.Thread):
    def __init__(self, srv: Server):
        super().__init__(daemon=True)
        self.srv = srv
        self.peak = srv.rss()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            try:
                self.peak = max(self.peak, self.srv.rss())
            except (OSError, RuntimeError):
                return

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def served_meanwhile(srv: Server, rounds: int = 40, timeout: float = 60.0) -> None:
    """A well-behaved client writes and reads back `rounds` pieces of random data, verified."""
    nbd = need_nbd()
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    rng = random.Random(7)
    deadline = time.monotonic() + timeout
    try:
        for i in range(rounds):
            assert time.monotonic() < deadline, f"only {i} of {rounds} verified rounds in {timeout}s"
            length = rng.choice([4096, 65536, 256 * 1024, MAX])
            offset = rng.randrange(0, (BUDGET - length) // 4096) * 4096
            data = rng.randbytes(length // 2) + bytes(length // 2)  # half random: it compresses 2:1
            h.pwrite(data, offset)
            assert h.pread(length, offset) == data, (i, offset, length)
    finally:
        h.shutdown()


def check_rss(srv: Server, peak: int, what: str) -> None:
    print(f"{srv.kind}: peak VmRSS {peak / MiB:.0f} MiB under {what}")
    assert peak <= BUDGET + OVERHEAD, f"{srv.kind}: VmRSS reached {peak / MiB:.0f} MiB under {what}"


def warnings_for(srv: Server, text: str) -> list[str]:
    return [line for line in srv.stderr().splitlines() if "WARNING" in line and text in line]


# --- the attacks ----------------------------------------------------------------------------------
def test_pipelined_reads_never_read(server):
    """One connection pipelines 70 READs of 32 MiB (over the maximum), 70 of the maximum
    and 2000 small ones, and never reads a reply."""
    served_meanwhile(server, rounds=4)  # the pages exist and the allocator is warm
    sampler = RssSampler(server)
    sampler.start()
    attacker = _go(server)
    attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    attacker.sendall(b"".join(_req(P.CMD_READ, (i % 7) * 32 * MiB, 32 * MiB, cookie=i) for i in range(70))
                     + b"".join(_req(P.CMD_READ, (i % 30) * MAX, MAX, cookie=100 + i) for i in range(70))
                     + b"".join(_req(P.CMD_READ, 0, 4096, cookie=200 + i) for i in range(2000)))
    served_meanwhile(server)
    check_rss(server, sampler.stop(), "pipelined 32 MiB, 2 MiB and 4 KiB READs never read")
    if server.kind == "ramdisk":
        # The client that never reads is dropped once its replies have not moved for the limit.
        assert _hung_up(attacker, SLOW_TIMEOUT * 5 + 10)
        assert len(warnings_for(server, "read no reply")) == 1
    attacker.close()


def test_many_connections_pipelining_reads(server):
    """20 connections each pipeline 70 maximum-size READs: the node-wide cap holds them all."""
    served_meanwhile(server, rounds=4)
    sampler = RssSampler(server)
    sampler.start()
    attackers = []
    for c in range(20):
        s = _go(server)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"".join(_req(P.CMD_READ, (i % 30) * MAX, MAX, cookie=i) for i in range(70)))
        attackers.append(s)
    served_meanwhile(server)
    check_rss(server, sampler.stop(), "20 connections x 70 pipelined 2 MiB READs")
    for s in attackers:
        s.close()


@pytest.mark.parametrize("announced", ["max", "over"])
def test_announced_writes_barely_sent(server, announced):
    """30 connections announce WRITEs of the maximum (half of them send one byte, half all
    but one) or of 32 MiB, over it (they send one byte; a few send 4 MiB, skipped)."""
    served_meanwhile(server, rounds=4)
    sampler = RssSampler(server)
    sampler.start()
    length = MAX if announced == "max" else 32 * MiB
    attackers = []
    for c in range(30):
        s = _go(server)
        if announced == "max":
            sent = 1 if c % 2 else length - 1
        else:
            sent = 1 if c % 10 else 4 * MiB
        s.sendall(_req(P.CMD_WRITE, 0, length, cookie=c) + os.urandom(sent))
        attackers.append(s)
    served_meanwhile(server)
    check_rss(server, sampler.stop(), f"30 connections with {length >> 20} MiB WRITEs barely sent")
    if server.kind == "ramdisk":
        # Requests that do not arrive within the limit cost their connection.
        for s in attackers:
            assert _is_closed(s, SLOW_TIMEOUT * 5 + 10)
        assert len(warnings_for(server, "request not completed")) == 30
    for s in attackers:
        s.close()


def test_write_over_2_to_the_25_is_refused_and_dropped(server):
    s = _go(server)
    s.sendall(_req(P.CMD_WRITE, 0, (1 << 25) + 4096, cookie=9) + bytes(65536))
    _, err, cookie = struct.unpack(">IIQ", _recv_exact(s, 16))
    assert (err, cookie) == (P.EINVAL, 9)
    assert _is_closed(s, 10)
    s.close()
    served_meanwhile(server, rounds=4)


def test_handshake_slowloris(server):
    """One byte every few seconds during the handshake: dropped at the handshake limit."""
    limit = SLOW_TIMEOUT if server.kind == "ramdisk" else 10.0  # the node runs with its default
    s = _connect(server)
    _recv_exact(s, 18)
    hello = struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_LIST, 0)
    start = time.monotonic()
    closed = False
    for byte in hello * 4:
        try:
            s.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if _is_closed(s, limit / 4):
            closed = True
            break
    elapsed = time.monotonic() - start
    assert closed, "the slow handshake was never dropped"
    assert limit * 0.9 <= elapsed <= limit + 5, elapsed
    s.close()
    served_meanwhile(server, rounds=4)
    if server.kind == "ramdisk":
        assert len(warnings_for(server, "handshake not completed")) == 1


def test_transmission_slowloris(ramdisk_server):
    """A request header trickling in after the handshake is dropped at the request limit
    (on the RAM-disk server: the node's limit, 30 s, is its default)."""
    server = ramdisk_server
    s = _go(server)
    start = time.monotonic()
    closed = False
    for byte in _req(P.CMD_READ, 0, 4096) * 2:
        s.sendall(bytes([byte]))
        if _is_closed(s, SLOW_TIMEOUT / 4):
            closed = True
            break
    assert closed and time.monotonic() - start <= SLOW_TIMEOUT + 5
    assert len(warnings_for(server, "request not completed")) == 1


def test_connections_over_the_limit_are_refused(tmp_path):
    srv = Server(tmp_path, [sys.executable, "-m", "ramster", "ramdisk", "--memory", "disk:1M",
                            "--max-connections", "4", "--handshake-timeout", "0"], "disk")
    try:
        held = [_go(srv) for _ in range(4)]
        for _ in range(20):
            s = _connect(srv)
            assert _is_closed(s, 10)  # no greeting: closed at once
            s.close()
        held.pop().close()
        # A slot frees when a connection ends; the next client is served.
        deadline = time.monotonic() + 10
        while True:
            s = _connect(srv)
            s.settimeout(10)
            try:
                if s.recv(8) == b"NBDMAGIC":
                    break
            except ConnectionResetError:
                pass
            finally:
                s.close()
            assert time.monotonic() < deadline
        for s in held:
            s.close()
    finally:
        assert srv.stop() == 0
    refused = [line for line in srv.stderr().splitlines() if "refused" in line]
    assert len(refused) == 1, refused  # 20 refusals, one line: a rate a person can read
