"""The link proxy itself, against a plain TCP server: each fault does what it says, and heal() undoes it."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from .proxy import ProxyLoop

pytestmark = pytest.mark.fault


class Sink:
    """A TCP server that records what each connection sent, and answers b"<n>" per chunk received."""

    def __init__(self) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.received: list[bytearray] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            buf = bytearray()
            with self.changed:
                self.received.append(buf)
                self.changed.notify_all()
            threading.Thread(target=self._serve, args=(conn, buf), daemon=True).start()

    def _serve(self, conn: socket.socket, buf: bytearray) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.changed:
                    buf += data
                    self.changed.notify_all()
                try:
                    conn.sendall(b"ack:%d;" % len(buf))
                except OSError:
                    return

    def wait(self, predicate, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def link():
    sink = Sink()
    with ProxyLoop() as loop:
        yield loop.proxy("test", sink.port), sink
    sink.close()


def dial(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def recv_until(s: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_forwards_both_ways(link):
    proxy, sink = link
    s = dial(proxy.port)
    s.sendall(b"hello")
    assert recv_until(s, b";") == b"ack:5;"
    assert sink.received[0] == b"hello"


def test_cut_after_n_bytes_now(link):
    proxy, sink = link
    s = dial(proxy.port)
    s.sendall(b"x" * 10)
    assert recv_until(s, b";") == b"ack:10;"
    proxy.cut(after=25, direction="c2s")
    s.sendall(b"y" * 100)
    assert sink.wait(lambda: len(sink.received[0]) >= 35)
    time.sleep(0.2)  # the cut is a reset: nothing after byte 25 may follow
    assert bytes(sink.received[0]) == b"x" * 10 + b"y" * 25
    with pytest.raises(ConnectionResetError):
        while s.recv(4096):
            pass


def test_cut_next_connection_from_its_start(link):
    proxy, sink = link
    proxy.cut(after=3, direction="c2s", scope="next")
    s = dial(proxy.port)
    s.sendall(b"abcdef")
    assert sink.wait(lambda: sink.received and len(sink.received[0]) >= 3)
    time.sleep(0.2)
    assert bytes(sink.received[0]) == b"abc"
    # the rule was for one connection
    t = dial(proxy.port)
    t.sendall(b"later")
    assert recv_until(t, b";") == b"ack:5;"


def test_blackhole_holds_one_direction_until_heal(link):
    proxy, sink = link
    s = dial(proxy.port)
    s.sendall(b"1")
    assert recv_until(s, b";") == b"ack:1;"
    proxy.blackhole("s2c")
    s.sendall(b"2")
    assert sink.wait(lambda: sink.received[0] == b"12")  # the other direction still flows
    s.settimeout(0.3)
    with pytest.raises(socket.timeout):
        s.recv(4096)
    s.settimeout(5)
    proxy.heal()
    assert recv_until(s, b";") == b"ack:2;"


def test_partition_refuses_new_connections_and_stalls_live_ones(link):
    proxy, sink = link
    s = dial(proxy.port)
    s.sendall(b"0")
    assert recv_until(s, b";") == b"ack:1;"
    proxy.partition("refuse")
    with pytest.raises(ConnectionRefusedError):
        dial(proxy.port)
    s.sendall(b"held")
    time.sleep(0.3)
    assert sink.received[0] == b"0"
    proxy.heal()
    assert recv_until(s, b";") == b"ack:5;"
    assert dial(proxy.port)


def test_partition_stall_accepts_but_forwards_nothing(link):
    proxy, sink = link
    proxy.partition("stall")
    s = dial(proxy.port)
    s.sendall(b"wait")
    time.sleep(0.3)
    assert sink.received == []  # not even connected to the target
    proxy.heal()
    assert recv_until(s, b";") == b"ack:4;"


def test_delay(link):
    proxy, sink = link
    s = dial(proxy.port)
    proxy.delay(0.3)
    t0 = time.monotonic()
    s.sendall(b"slow")
    assert recv_until(s, b";") == b"ack:4;"
    assert time.monotonic() - t0 >= 0.55  # both directions
    proxy.heal()
    t0 = time.monotonic()
    s.sendall(b"fast")
    assert recv_until(s, b";") == b"ack:8;"
    assert time.monotonic() - t0 < 0.25
