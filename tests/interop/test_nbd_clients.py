"""The NBD server against real clients (libnbd tools and bindings, qemu, fio) and
hostile raw-socket clients; plus the asyncio shell's own guarantees in-process."""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import subprocess

import pytest
from support import need, need_nbd

from ramster.nbd import wire as P
from ramster.nbd.ramdisk import MemoryExport
from ramster.nbd.server import MAX_INFLIGHT, NbdServer

pytestmark = pytest.mark.interop

MiB = 1 << 20


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def nbd():
    return need_nbd()


# --- nbdinfo -------------------------------------------------------------------------------
def test_nbdinfo_list_size_flags_json(nbd_server):
    need("nbdinfo")
    srv = nbd_server("disk:16M", "small:1M")
    listing = run("nbdinfo", "--list", srv.uri("")).stdout
    assert 'export="disk"' in listing and 'export="small"' in listing
    assert run("nbdinfo", "--size", srv.uri("small")).stdout.strip() == str(MiB)
    info = json.loads(run("nbdinfo", "--json", srv.uri("disk")).stdout)
    (export,) = info["exports"]
    assert export["export-name"] == "disk"
    assert export["export-size"] == 16 * MiB
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_cache",
                 "can_multi_conn", "can_df"):
        assert export[flag] is True, flag
    assert export["is_read_only"] is False
    assert export["block_size_maximum"] == 2 * MiB  # NbdServer's max_request caps Export.max_payload
    assert "base:allocation" in export["contexts"]
    for can in ("flush", "trim", "zero", "multi-conn"):
        assert run("nbdinfo", "--can", can, srv.uri("disk"), check=False).returncode == 0, can


def test_nbdinfo_read_only(nbd_server):
    need("nbdinfo")
    srv = nbd_server("ro:1M", read_only=True)
    assert run("nbdinfo", "--is", "read-only", srv.uri("ro"), check=False).returncode == 0
    assert run("nbdinfo", "--can", "trim", srv.uri("ro"), check=False).returncode != 0


def test_tcp_and_unix_listeners(nbd_server):
    need("nbdinfo")
    srv = nbd_server("disk:1M", listen=("127.0.0.1:0",))
    tcp = [a for a in srv.addresses if not a.startswith("unix:")]
    assert len(tcp) == 1 and tcp[0].startswith("127.0.0.1:") and not tcp[0].endswith(":0")
    assert run("nbdinfo", "--size", f"nbd://{tcp[0]}/disk").stdout.strip() == str(MiB)


# --- copying data in and out -----------------------------------------------------------------
def _random_image(path, size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    data = bytearray(size)
    # Data, zero runs and sparse areas so nbdcopy uses zeroes and extents too.
    for start in range(0, size, 256 * 1024):
        if rng.random() < 0.6:
            n = rng.randrange(1, 256 * 1024)
            data[start:start + n] = rng.randbytes(n)
    path.write_bytes(data)
    return bytes(data)


def test_nbdcopy_in_and_out(nbd_server, tmp_path):
    need("nbdcopy")
    srv = nbd_server("disk:16M")
    src, back = tmp_path / "src.img", tmp_path / "back.img"
    data = _random_image(src, 16 * MiB)
    run("nbdcopy", str(src), srv.uri())
    run("nbdcopy", srv.uri(), str(back))
    assert back.read_bytes() == data
    # And again with a single connection and synchronous requests.
    back.unlink()
    run("nbdcopy", "--connections=1", "--requests=1", srv.uri(), str(back))
    assert back.read_bytes() == data


def test_qemu_img_compare(nbd_server, tmp_path):
    need("qemu-img", "nbdcopy")
    srv = nbd_server("disk:8M")
    img = tmp_path / "a.img"
    _random_image(img, 8 * MiB, seed=2)
    run("nbdcopy", str(img), srv.uri())
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(img), srv.uri()).returncode == 0
    with open(img, "r+b") as f:
        f.seek(5 * MiB + 3)
        f.write(b"\xff")
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(img), srv.uri(), check=False).returncode == 1


def test_qemu_io(nbd_server):
    need("qemu-io")
    srv = nbd_server("disk:8M")
    cmds = [
        "write -P 0xab 4096 65536", "read -P 0xab 4096 65536",
        "write -P 0x11 1000 3000", "read -P 0x11 1000 3000",
        "aio_write -P 0xcd 1M 128k", "aio_flush", "read -P 0xcd 1M 128k",
        "write -z 1M 64k", "read -P 0 1M 64k", "read -P 0xcd 1088k 64k",
        "discard 4M 1M", "flush", "write -f -P 0x22 7M 4k", "read -P 0x22 7M 4k",
    ]
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    out = run(*args, srv.uri()).stdout
    assert "fail" not in out.lower(), out
    assert out.count("read ") >= 6


def test_fio_verify(nbd_server):
    need("fio")
    srv = nbd_server("disk:16M")
    out = run("fio", "--name=verify", "--ioengine=nbd", f"--uri={srv.uri()}", "--rw=randwrite",
              "--bs=4k", "--iodepth=16", "--size=8M", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0",
              "--output-format=json", timeout=120).stdout
    result = json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)
    job = result["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] == 8 * MiB
    assert job["read"]["io_bytes"] == 8 * MiB  # the verify pass


# --- libnbd --------------------------------------------------------------------------------
def _connect(nbd, uri: str, structured: bool):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    if structured:
        h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    assert h.get_structured_replies_negotiated() == structured
    return h


def _trim_model(model: bytearray, off: int, length: int) -> None:
    """MemoryExport drops whole 4 KiB blocks only (the tail block counts as whole)."""
    first = -(-off // 4096) * 4096
    last = (off + length) // 4096 * 4096 if off + length < len(model) else len(model)
    if first < last:
        model[first:last] = bytes(last - first)


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_libnbd_random_io_two_connections(nbd, nbd_server, structured):
    size, slots = 4 * MiB, 32
    slot = size // slots
    srv = nbd_server(f"disk:{size}")
    handles = [_connect(nbd, srv.uri(), structured) for _ in range(2)]
    model = bytearray(size)
    rng = random.Random(1234 + structured)
    for _ in range(25):
        reads = []
        # Commands of a batch touch disjoint slots, so their order is irrelevant.
        for i, s in enumerate(rng.sample(range(slots), 16)):
            h = handles[i % 2]
            off = s * slot + rng.randrange(slot - 1)
            length = rng.randint(1, s * slot + slot - off)
            op = rng.choice(["write", "write", "read", "read", "zero", "trim", "cache"])
            if op == "write":
                data = rng.randbytes(length)
                h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off,
                             flags=nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0)
                model[off:off + length] = data
            elif op == "read":
                buf = nbd.Buffer(length)
                reads.append((h, h.aio_pread(buf, off), buf, bytes(model[off:off + length])))
            elif op == "zero":
                flags = rng.choice([0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_FUA])
                h.aio_zero(length, off, flags=flags)
                model[off:off + length] = bytes(length)
            elif op == "trim":
                h.aio_trim(length, off)
                _trim_model(model, off, length)
            else:
                h.aio_cache(length, off)
        for h in handles:
            while h.aio_in_flight() > 0:
                h.poll(-1)
        for h, cookie, buf, expected in reads:
            assert h.aio_command_completed(cookie)
            assert bytes(buf.to_bytearray()) == expected
        handles[rng.randrange(2)].flush()
    for h in handles:
        whole = b"".join(h.pread(min(MiB, size - o), o) for o in range(0, size, MiB))
        assert whole == model
        h.shutdown()


def _extents(h, length: int, offset: int = 0, flags: int = 0):
    got = []

    def cb(metacontext, off, entries, err):
        assert metacontext == "base:allocation"
        got.extend(zip(entries[::2], entries[1::2]))
        return 0

    h.block_status(length, offset, cb, flags)
    return got


def test_libnbd_block_status(nbd, nbd_server):
    srv = nbd_server("disk:1M")
    h = _connect(nbd, srv.uri(), structured=True)
    assert h.can_meta_context("base:allocation")
    h.pwrite(b"x" * 4096, 0)
    h.pwrite(b"y" * 10, 8192)
    h.zero(4096, 16384, nbd.CMD_FLAG_NO_HOLE)
    assert _extents(h, MiB) == [(4096, 0), (4096, 3), (4096, 0), (4096, 3), (4096, 2), (MiB - 20480, 3)]
    assert _extents(h, 100, 8200, nbd.CMD_FLAG_REQ_ONE) == [(100, 0)]
    h.trim(MiB, 0)
    assert _extents(h, MiB) == [(MiB, 3)]
    assert h.pread(4096, 0) == bytes(4096)
    h.shutdown()


def test_libnbd_errors_keep_the_session(nbd, nbd_server):
    srv = nbd_server("disk:1M")
    h = _connect(nbd, srv.uri(), structured=True)
    h.set_strict_mode(0)  # let the bad requests reach the server
    with pytest.raises(nbd.Error) as e:
        h.pread(4096, MiB - 100)
    assert e.value.errno == "EINVAL"
    with pytest.raises(nbd.Error) as e:
        h.pwrite(b"z" * 200, MiB - 100)
    assert e.value.errno == "ENOSPC"
    h.pwrite(b"ok", 0)
    assert h.pread(2, 0) == b"ok"
    h.shutdown()


# --- hostile clients over raw sockets --------------------------------------------------------
def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"server closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _raw_go(path, structured: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(path))
    _recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3))
    opts = [(P.OPT_STRUCTURED_REPLY, b"")] if structured else []
    opts.append((P.OPT_GO, struct.pack(">I", 4) + b"disk" + b"\0\0"))
    for opt, data in opts:
        s.sendall(struct.pack(">QII", P.IHAVEOPT, opt, len(data)) + data)
        while True:
            _, _, rep, length = struct.unpack(">QIII", _recv_exact(s, 20))
            _recv_exact(s, length)
            if rep != P.REP_INFO:
                assert rep == P.REP_ACK
                break
    return s


def _req(cmd, offset, length, cookie=1, flags=0) -> bytes:
    return struct.pack(">IHHQQI", P.REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def _wait_closed(s: socket.socket) -> None:
    """Drain until EOF: the server must hang up on its own."""
    while s.recv(65536):
        pass
    s.close()


def _still_serves(srv) -> None:
    run("nbdinfo", "--size", srv.uri())


def test_garbage_after_handshake(nbd_server):
    need("nbdinfo")
    srv = nbd_server("disk:1M")
    for structured in (False, True):
        s = _raw_go(srv.socket, structured)
        s.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" + os.urandom(100))
        _wait_closed(s)
    _still_serves(srv)
    assert "bad request magic" in srv.stderr()


def test_disconnect_mid_write_payload(nbd_server, nbd):
    need("nbdinfo")
    srv = nbd_server("disk:4M")
    other = _connect(nbd, srv.uri(), structured=True)
    other.pwrite(b"a" * 4096, 0)
    for _ in range(5):
        s = _raw_go(srv.socket)
        s.sendall(_req(P.CMD_WRITE, 0, 2 * MiB) + b"b" * (MiB + 123))
        s.close()
    # The torn writes were never applied, and the other client never noticed.
    assert other.pread(4096, 0) == b"a" * 4096
    other.shutdown()
    _still_serves(srv)


@pytest.mark.parametrize("structured", [False, True])
def test_4gib_lengths(nbd_server, structured):
    srv = nbd_server("disk:1M")
    s = _raw_go(srv.socket, structured)

    def error_of_next_reply() -> tuple[int, int]:
        if structured:
            _, _, _, cookie, length = struct.unpack(">IHHQI", _recv_exact(s, 20))
            err = struct.unpack_from(">I", _recv_exact(s, length))[0]
            return err, cookie
        _, err, cookie = struct.unpack(">IIQ", _recv_exact(s, 16))
        return err, cookie

    # A 4 GiB read is refused but the session goes on ...
    s.sendall(_req(P.CMD_READ, 0, 0xFFFFFFFF, cookie=1))
    assert error_of_next_reply() == (P.EINVAL, 1)
    s.sendall(_req(P.CMD_TRIM, 0, 0xFFFFFFFF, cookie=2))
    assert error_of_next_reply() == (P.EINVAL, 2)
    # ... a 4 GiB write cannot be skipped: error, then the server hangs up.
    s.sendall(_req(P.CMD_WRITE, 0, 0xFFFFFFFF, cookie=3) + bytes(65536))
    assert error_of_next_reply() == (P.EINVAL, 3)
    _wait_closed(s)


def _cycle(path, kind: int) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(path))
    if kind == 0:  # connect and vanish
        s.close()
        return
    _recv_exact(s, 18)
    if kind == 1:  # vanish mid-handshake
        s.sendall(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, 100) + b"dis")
        s.close()
        return
    if kind == 2:  # bad client flags
        s.sendall(struct.pack(">I", 0xFF))
        _wait_closed(s)
        return
    s.close()
    s = _raw_go(path, structured=kind == 3)
    if kind == 3:  # polite
        s.sendall(_req(P.CMD_READ, 0, 4096) + _req(P.CMD_DISC, 0, 0))
        _wait_closed(s)
    else:  # a request in flight, then gone
        s.sendall(_req(P.CMD_READ, 0, 65536) + _req(P.CMD_WRITE, 0, 4096) + b"x" * 100)
        s.close()


def test_connect_disconnect_cycles_do_not_leak(nbd_server):
    need("nbdinfo")
    srv = nbd_server("disk:1M")
    for i in range(100):  # warm up allocator pools and caches
        _cycle(srv.socket, i % 5)
    before = srv.rss_kib()
    for i in range(500):
        _cycle(srv.socket, i % 5)
    _still_serves(srv)
    growth = srv.rss_kib() - before
    assert growth < 8 * 1024, f"server RSS grew by {growth} KiB over 500 connections"


# --- the asyncio shell, in-process -------------------------------------------------------------
class GatedExport(MemoryExport):
    """Reads and writes wait for `gate`; records concurrency and ordering."""

    def __init__(self, name: str, size: int):
        super().__init__(name, size)
        self.gate = asyncio.Event()
        self.active = 0
        self.max_active = 0
        self.log: list[str] = []

    async def _enter(self, what: str) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.log.append(what + "-start")
        await self.gate.wait()
        self.active -= 1
        self.log.append(what + "-end")

    async def read(self, offset, length):
        await self._enter("read")
        return await super().read(offset, length)

    async def write(self, offset, data, fua=False):
        await self._enter("write")
        await super().write(offset, data, fua)

    async def flush(self):
        self.log.append("flush")


async def _until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0)


async def _aio_go(path):
    r, w = await asyncio.open_unix_connection(str(path))
    await r.readexactly(18)
    data = struct.pack(">I", 4) + b"disk" + b"\0\0"
    w.write(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, len(data)) + data)
    while True:
        _, _, rep, length = struct.unpack(">QIII", await r.readexactly(20))
        await r.readexactly(length)
        if rep == P.REP_ACK:
            return r, w


async def _simple_reply(r, data_len=0):
    _, err, cookie = struct.unpack(">IIQ", await r.readexactly(16))
    if err == 0 and data_len:
        await r.readexactly(data_len)
    return err, cookie


def test_stop_finishes_inflight_and_refuses_new(tmp_path):
    async def main():
        export = GatedExport("disk", MiB)
        server = NbdServer({"disk": export})
        await server.start([f"unix:{tmp_path}/s.sock"])
        r, w = await _aio_go(tmp_path / "s.sock")
        w.write(_req(P.CMD_READ, 0, 512, cookie=1))
        await _until(lambda: export.active == 1)
        stopping = asyncio.create_task(server.stop(timeout=10))
        await _until(lambda: server.stopping)
        assert not (tmp_path / "s.sock").exists()
        w.write(_req(P.CMD_READ, 0, 512, cookie=2))
        assert await _simple_reply(r) == (P.ESHUTDOWN, 2)
        export.gate.set()
        assert await _simple_reply(r, 512) == (0, 1)
        assert await r.read() == b""
        await stopping
        assert server.connections == 0

    asyncio.run(main())


def test_flush_waits_for_earlier_writes(tmp_path):
    async def main():
        export = GatedExport("disk", MiB)
        server = NbdServer({"disk": export})
        await server.start([f"unix:{tmp_path}/s.sock"])
        r, w = await _aio_go(tmp_path / "s.sock")
        w.write(_req(P.CMD_WRITE, 0, 4, cookie=1) + b"abcd" + _req(P.CMD_FLUSH, 0, 0, cookie=2))
        await _until(lambda: export.active == 1)
        for _ in range(50):  # give the flush every chance to overtake
            await asyncio.sleep(0)
        assert "flush" not in export.log
        export.gate.set()
        replies = [await _simple_reply(r), await _simple_reply(r)]
        assert replies == [(0, 1), (0, 2)]
        assert export.log == ["write-start", "write-end", "flush"]
        w.close()
        await server.stop()

    asyncio.run(main())


def test_inflight_requests_are_bounded(tmp_path):
    async def main():
        export = GatedExport("disk", MiB)
        server = NbdServer({"disk": export})
        await server.start([f"unix:{tmp_path}/s.sock"])
        r, w = await _aio_go(tmp_path / "s.sock")
        n = MAX_INFLIGHT * 3
        w.write(b"".join(_req(P.CMD_READ, i * 512, 512, cookie=i) for i in range(n)))
        await _until(lambda: export.active == MAX_INFLIGHT)
        for _ in range(50):
            await asyncio.sleep(0)
        assert export.active == MAX_INFLIGHT
        export.gate.set()
        cookies = {(await _simple_reply(r, 512))[1] for _ in range(n)}
        assert cookies == set(range(n))
        assert export.max_active == MAX_INFLIGHT
        assert export.counters.reads == n and export.counters.bytes_read == n * 512
        w.close()
        await server.stop()

    asyncio.run(main())


def test_unix_socket_files(tmp_path):
    path = tmp_path / "s.sock"

    async def main():
        # A stale socket file (nobody listening) is replaced ...
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()
        server = NbdServer({"disk": MemoryExport("disk", MiB)})
        await server.start([f"unix:{path}"])
        # ... a live one is not.
        second = NbdServer({"disk": MemoryExport("disk", MiB)})
        with pytest.raises(OSError, match="listening"):
            await second.start([f"unix:{path}"])
        await server.stop()
        assert not path.exists()
        path.write_text("not a socket")
        with pytest.raises(OSError, match="not a socket"):
            await second.start([f"unix:{path}"])

    asyncio.run(main())


def test_command_line_errors_are_one_line(tmp_path):
    import sys
    proc = subprocess.run([sys.executable, "-m", "ramster", "ramdisk", "--memory", "disk:lots",
                           "--listen", f"unix:{tmp_path}/x.sock"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "ramster ramdisk: invalid --memory size 'lots': expected bytes or a size like 4096, 64M, 1G, 2GiB"
