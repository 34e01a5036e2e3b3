"""The asyncio shell's limits, in-process: credit, caps, accounting, timeouts, connection cap.

Clients are asyncio streams on a Unix socket in the test's directory; the
server's own accounting (`NbdServer.held`) is checked against the bound the
module docstring promises.
"""
from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from ramster.nbd import wire as P
from ramster.nbd.protocol import REQUEST_COST
from ramster.nbd.ramdisk import MemoryExport
from ramster.nbd.server import NbdServer

MiB = 1 << 20
KiB = 1 << 10


def _req(cmd: int, offset: int, length: int, cookie: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">IHHQQI", P.REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def _pattern_export(size: int) -> MemoryExport:
    export = MemoryExport("disk", size)
    export._view[:] = bytes(range(251)) * (size // 251) + bytes(size % 251)
    return export


async def _until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def _go(path, *, read_limit: int = 1 << 16):
    r, w = await asyncio.open_unix_connection(str(path), limit=read_limit)
    await r.readexactly(18)
    data = struct.pack(">I", 4) + b"disk" + b"\0\0"
    w.write(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, len(data)) + data)
    while True:
        _, _, rep, length = struct.unpack(">QIII", await r.readexactly(20))
        await r.readexactly(length)
        if rep == P.REP_ACK:
            return r, w


async def _reply(r, data_len: int = 0) -> tuple[int, int, bytes]:
    _, err, cookie = struct.unpack(">IIQ", await r.readexactly(16))
    return err, cookie, (await r.readexactly(data_len) if err == 0 and data_len else b"")


def _bound(server: NbdServer) -> int:
    return server.node_cap + server.connections * (server.max_request + REQUEST_COST)


def test_a_pipelining_reader_is_held_at_its_cap_then_gets_every_reply(tmp_path):
    async def main():
        export = _pattern_export(8 * MiB)
        server = NbdServer({"disk": export}, max_request=MiB, connection_cap=4 * MiB, node_cap=8 * MiB)
        await server.start([f"unix:{tmp_path}/s.sock"])
        r, w = await _go(tmp_path / "s.sock")
        w.transport.pause_reading()  # the client reads nothing for now
        n = 40
        w.write(b"".join(_req(P.CMD_READ, (i % 8) * MiB, MiB, cookie=i) for i in range(n)))
        await _until(lambda: server.admission.blocked)
        (conn,) = server.conns
        assert conn._reading_paused and conn.core.blocked
        assert server.held <= server.connection_cap
        assert export.counters.reads < n
        w.transport.resume_reading()
        seen = set()
        for _ in range(n):
            err, cookie, data = await _reply(r, MiB)
            assert err == 0 and data == export.getvalue()[(cookie % 8) * MiB:(cookie % 8 + 1) * MiB]
            seen.add(cookie)
        assert seen == set(range(n))
        await _until(lambda: server.held == 0)
        w.close()
        await server.stop()

    asyncio.run(main())


def test_a_client_holding_nothing_is_served_while_hogs_hold_the_node_cap(tmp_path):
    async def main():
        export = _pattern_export(8 * MiB)
        server = NbdServer({"disk": export}, max_request=MiB, connection_cap=4 * MiB, node_cap=6 * MiB)
        await server.start([f"unix:{tmp_path}/s.sock"])
        hogs = []
        for _ in range(4):
            r, w = await _go(tmp_path / "s.sock")
            w.transport.pause_reading()
            w.write(b"".join(_req(P.CMD_READ, 0, MiB, cookie=i) for i in range(30)))
            hogs.append((r, w))
        await _until(lambda: len(server.admission.blocked) == 4)
        assert server.held >= server.node_cap - server.max_request
        r, w = await _go(tmp_path / "s.sock")
        for i in range(20):
            data = bytes([i]) * (256 * KiB)
            w.write(_req(P.CMD_WRITE, i * 256 * KiB, len(data), cookie=i) + data)
            assert await _reply(r) == (0, i, b"")
            w.write(_req(P.CMD_READ, i * 256 * KiB, len(data), cookie=100 + i))
            assert await _reply(r, len(data)) == (0, 100 + i, data)
            assert server.held <= _bound(server)
        for _, hw in hogs:
            hw.transport.abort()
        w.close()
        await _until(lambda: server.held == 0)
        await server.stop()

    asyncio.run(main())


def test_accounting_returns_to_zero_after_abrupt_ends(tmp_path):
    async def main():
        server = NbdServer({"disk": MemoryExport("disk", 8 * MiB)}, max_request=MiB,
                           connection_cap=2 * MiB, node_cap=4 * MiB)
        await server.start([f"unix:{tmp_path}/s.sock"])
        clients = []
        # mid-payload
        r, w = await _go(tmp_path / "s.sock")
        w.write(_req(P.CMD_WRITE, 0, MiB) + b"x" * 1000)
        clients.append(w)
        # blocked, with requests buffered behind the header that did not fit
        r, w = await _go(tmp_path / "s.sock")
        w.transport.pause_reading()
        w.write(b"".join(_req(P.CMD_READ, 0, MiB, cookie=i) for i in range(10)))
        clients.append(w)
        # a skipped over-long write
        r, w = await _go(tmp_path / "s.sock")
        w.write(_req(P.CMD_WRITE, 0, 3 * MiB) + b"y" * 5000)
        clients.append(w)
        await _until(lambda: server.admission.blocked and any(c._partial for c in server.conns))
        assert 0 < server.held <= _bound(server)
        for w in clients:
            w.transport.abort()
        await _until(lambda: server.connections == 0)
        assert server.held == 0 and not server.admission.blocked
        await server.stop()

    asyncio.run(main())


def test_stop_answers_what_is_buffered_behind_a_blocked_header(tmp_path):
    async def main():
        server = NbdServer({"disk": MemoryExport("disk", 8 * MiB)}, max_request=MiB,
                           connection_cap=2 * MiB, node_cap=2 * MiB)
        await server.start([f"unix:{tmp_path}/s.sock"])
        r, w = await _go(tmp_path / "s.sock")
        w.transport.pause_reading()
        w.write(b"".join(_req(P.CMD_READ, 0, MiB, cookie=i) for i in range(6)))
        await _until(lambda: server.admission.blocked)
        stopping = asyncio.create_task(server.stop(timeout=10))
        w.transport.resume_reading()
        replies = [await _reply(r, MiB) for _ in range(6)]
        assert {c for _, c, _ in replies} == set(range(6))
        assert {e for e, _, _ in replies} <= {0, P.ESHUTDOWN} and replies[-1][0] == P.ESHUTDOWN
        assert await r.read() == b""
        await stopping

    asyncio.run(main())


@pytest.mark.parametrize("stall, message", [
    ("handshake", "handshake not completed within 0.2 s"),
    ("header", "request not completed within 0.2 s of its first byte"),
    ("payload", "request not completed within 0.2 s of its first byte"),
    ("drain", "the client read no reply for 0.2 s"),
])
def test_timeouts_drop_the_connection_with_one_warning(tmp_path, caplog, stall, message):
    async def main():
        server = NbdServer({"disk": MemoryExport("disk", 8 * MiB)}, handshake_timeout=0.2,
                           request_timeout=0.2, drain_timeout=0.2)
        await server.start([f"unix:{tmp_path}/s.sock"])
        if stall == "handshake":
            r, w = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
            await r.readexactly(18)
            w.write(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, 100))
        else:
            r, w = await _go(tmp_path / "s.sock")
            if stall == "header":
                w.write(_req(P.CMD_READ, 0, 4096)[:20])
            elif stall == "payload":
                w.write(_req(P.CMD_WRITE, 0, 65536) + b"z" * 100)
            else:
                w.transport.pause_reading()
                w.write(b"".join(_req(P.CMD_READ, 0, MiB, cookie=i) for i in range(64)))
        await _until(lambda: server.connections == 0, timeout=10)
        w.close()
        await server.stop()

    with caplog.at_level(logging.INFO, logger="ramster.nbd"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and message in warnings[0].getMessage(), [r.getMessage() for r in warnings]


def test_slow_but_steady_reader_is_not_dropped(tmp_path):
    async def main():
        server = NbdServer({"disk": MemoryExport("disk", 8 * MiB)}, drain_timeout=0.3)
        await server.start([f"unix:{tmp_path}/s.sock"])
        r, w = await _go(tmp_path / "s.sock", read_limit=4096)
        n = 16
        w.write(b"".join(_req(P.CMD_READ, 0, 1 * MiB, cookie=i) for i in range(n)))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(n):
            err, _, _ = await _reply(r, MiB)
            assert err == 0
            await asyncio.sleep(0.05)  # the client's own pace, well over the drain limit in total
        assert loop.time() - start > 0.6
        w.close()
        await server.stop()

    asyncio.run(main())


def test_connections_over_the_limit_are_closed_and_logged_once(tmp_path, caplog):
    async def main():
        server = NbdServer({"disk": MemoryExport("disk", MiB)}, max_connections=2)
        await server.start([f"unix:{tmp_path}/s.sock"])
        held = [await _go(tmp_path / "s.sock") for _ in range(2)]
        for _ in range(10):
            r, w = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
            assert await r.read() == b""  # no greeting
            w.close()
        assert server.connections == 2
        held[0][1].close()
        await _until(lambda: server.connections == 1)
        r, w = await _go(tmp_path / "s.sock")  # a freed slot serves the next client
        w.close()
        for _, hw in held[1:]:
            hw.close()
        await server.stop()

    with caplog.at_level(logging.WARNING, logger="ramster.nbd"):
        asyncio.run(main())
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "2 connections are open" in refused[0]


def test_limits_are_checked():
    export = {"disk": MemoryExport("disk", MiB)}
    with pytest.raises(ValueError, match="max_request"):
        NbdServer(export, max_request=64 * MiB)
    with pytest.raises(ValueError, match="one request"):
        NbdServer(export, max_request=4 * MiB, connection_cap=MiB)
    with pytest.raises(ValueError, match="max_connections"):
        NbdServer(export, max_connections=0)


def test_option_flood_without_reading_is_held(tmp_path):
    async def main():
        exports = {f"e{i:02}": MemoryExport(f"e{i:02}", 4096, description="x" * 1000) for i in range(30)}
        server = NbdServer(exports)
        await server.start([f"unix:{tmp_path}/s.sock"])
        r, w = await asyncio.open_unix_connection(str(tmp_path / "s.sock"), limit=4096)
        await r.readexactly(18)
        w.transport.pause_reading()
        n = 5000  # 80 KB of options asking for 150 MB of replies
        w.write(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_LIST, 0) * n)
        await _until(lambda: server.admission.blocked)
        (conn,) = server.conns
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert conn._transport.get_write_buffer_size() + conn.core.buffered < MiB
        w.transport.resume_reading()
        acks = 0
        while acks < n:
            _, _, rep, length = struct.unpack(">QIII", await r.readexactly(20))
            await r.readexactly(length)
            acks += rep == P.REP_ACK
        w.close()
        await server.stop()

    asyncio.run(main())
