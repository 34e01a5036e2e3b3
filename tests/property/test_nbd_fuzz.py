"""Fuzzing the sans-I/O NBD core with random and mutated client byte streams.

Whatever the client sends, the core must not raise (other than its own
ProtocolError), must keep its buffers bounded, must only hand out requests
that passed validation, and must keep its own output well framed.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ramster.nbd import wire as P
from ramster.nbd.base import ExportError
from ramster.nbd.handshake import MAX_OPTION_DATA
from ramster.nbd.protocol import Close, NbdConnection, ProtocolError, REQUEST_COST, Request, UNLIMITED
from ramster.nbd.ramdisk import MemoryExport

SIZE = 64 * 1024
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_OPT_MAGIC = struct.pack(">Q", P.OPT_REPLY_MAGIC)
_SIMPLE = struct.pack(">I", P.SIMPLE_REPLY_MAGIC)
_STRUCT = struct.pack(">I", P.STRUCTURED_REPLY_MAGIC)


# --- building valid client traffic ------------------------------------------------------
def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", P.IHAVEOPT, opt, len(data)) + data


def name_block(name: bytes, tail: bytes) -> bytes:
    return struct.pack(">I", len(name)) + name + tail


def request(cmd, offset, length, flags=0, cookie=1, data=b""):
    return struct.pack(">IHHQQI", P.REQUEST_MAGIC, flags, cmd, cookie, offset, length) + data


names = st.sampled_from([b"disk", b"", b"other", b"d\xffisk"])

options = st.one_of(
    st.builds(lambda: option(P.OPT_LIST)),
    st.builds(lambda: option(P.OPT_STRUCTURED_REPLY)),
    st.builds(lambda n, infos: option(P.OPT_INFO, name_block(n, struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos))), names, st.lists(st.integers(0, 5), max_size=4)),
    st.builds(lambda o, n, q: option(o, name_block(n, struct.pack(">I", len(q)) + b"".join(
        struct.pack(">I", len(x)) + x for x in q))),
        st.sampled_from([P.OPT_LIST_META_CONTEXT, P.OPT_SET_META_CONTEXT]), names,
        st.lists(st.sampled_from([b"base:allocation", b"base:", b"x-y:z", b"nocolon"]), max_size=3)),
    # Anything but the options that end the handshake.
    st.builds(option, st.integers(0, 20).filter(lambda o: o not in (1, 2, 7)), st.binary(max_size=40)),
)

offsets = st.one_of(st.integers(0, SIZE), st.sampled_from([SIZE - 1, 2**63, 2**64 - 1]))
lengths = st.one_of(st.integers(0, 8192), st.sampled_from([SIZE, 2**31, 2**32 - 1]))


@st.composite
def requests(draw):
    cmd = draw(st.sampled_from([0, 0, 1, 1, 3, 4, 5, 6, 7, 9]))
    flags = draw(st.sampled_from([0, 0, 1, 2, 4, 8, 16, 0xFFFF]))
    offset = draw(offsets)
    length = draw(lengths)
    cookie = draw(st.integers(0, 2**64 - 1))
    data = b""
    if cmd == P.CMD_WRITE:
        length = min(length, 4096)
        data = draw(st.binary(min_size=length, max_size=length))
    return request(cmd, offset, length, flags, cookie, data)


@st.composite
def sessions(draw):
    """A plausible client session: flags, options, GO, requests, DISC."""
    sr = draw(st.booleans())
    out = [struct.pack(">I", draw(st.sampled_from([0, 1, 3])))]
    out += draw(st.lists(options, max_size=4))
    if sr:
        out.append(option(P.OPT_STRUCTURED_REPLY))
        out.append(option(P.OPT_SET_META_CONTEXT, name_block(b"disk", struct.pack(">I", 1)
                                                              + struct.pack(">I", 15) + b"base:allocation")))
    if draw(st.booleans()):
        out.append(option(P.OPT_GO, name_block(b"disk", b"\0\0")))
    else:
        out.append(option(P.OPT_EXPORT_NAME, b"disk"))
    out += draw(st.lists(requests(), max_size=8))
    if draw(st.booleans()):
        out.append(request(P.CMD_DISC, 0, 0))
    return b"".join(out)


@st.composite
def mutated(draw, base):
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set32"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "set32" and len(data) >= pos + 4:
            data[pos:pos + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x10001, 4097])))
    return bytes(data)


def chunkings():
    return st.lists(st.integers(1, 300), min_size=1, max_size=20)


# --- driving the core ------------------------------------------------------------------
def run_sync(coro):
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("coroutine suspended")


def check_request(conn: NbdConnection, req: Request) -> None:
    assert req.command in (P.CMD_READ, P.CMD_WRITE, P.CMD_FLUSH, P.CMD_TRIM, P.CMD_CACHE,
                           P.CMD_WRITE_ZEROES, P.CMD_BLOCK_STATUS)
    if req.command == P.CMD_FLUSH:
        assert req.offset == 0 and req.length == 0
    else:
        assert 0 < req.length and req.offset + req.length <= conn.export.size
    if req.command == P.CMD_WRITE:
        assert len(req.data) == req.length
    if req.command == P.CMD_READ:
        assert req.length <= conn.export.max_payload
    if req.command == P.CMD_BLOCK_STATUS:
        assert conn.structured_replies


def execute(conn: NbdConnection, req: Request) -> None:
    export = conn.export
    try:
        if req.command == P.CMD_READ:
            conn.reply_read(req, run_sync(export.read(req.offset, req.length)))
        elif req.command == P.CMD_BLOCK_STATUS:
            conn.reply_block_status(req, export.block_status(req.offset, req.length))
        else:
            if req.command == P.CMD_WRITE:
                run_sync(export.write(req.offset, req.data))
            elif req.command == P.CMD_TRIM:
                run_sync(export.trim(req.offset, req.length))
            elif req.command == P.CMD_WRITE_ZEROES:
                run_sync(export.zero(req.offset, req.length))
            conn.reply_ok(req)
    except ExportError as exc:
        conn.reply_error(req, exc.errno)


def drive(data: bytes, chunks: list[int], credits: list[int] | None = None) -> tuple[NbdConnection, bytes, list]:
    """Feed `data` in `chunks`; with `credits`, grant the shell's credit per feed
    (0 meaning "holds nothing": one request may overdraw) and resume a stopped parse."""
    conn = NbdConnection({"disk": MemoryExport("disk", SIZE), "other": MemoryExport("other", 4096)}, "disk")
    out = bytearray(conn.data_to_send())
    events = []
    pos = 0
    i = 0
    while pos < len(data) or conn.blocked:
        assert i <= 2 * len(data) + 10, "parsing made no progress"
        if credits is not None:
            conn.credit = credits[i % len(credits)]
            conn.overdraw = conn.credit == 0
        n = chunks[i % len(chunks)] if not conn.blocked else 0
        i += 1
        try:
            new = conn.feed(data[pos:pos + n])
        except ProtocolError:
            return conn, bytes(out), events
        pos += n
        # Only a partial message may be held: never a whole payload or option
        # (or, while parsing is stopped for credit, the input not parsed yet).
        assert conn.buffered < MAX_OPTION_DATA + 16 or (conn.blocked and conn.buffered <= len(data))
        for ev in new:
            if isinstance(ev, Request):
                check_request(conn, ev)
                execute(conn, ev)
        events += new
        out += conn.data_to_send()
    return conn, bytes(out), events


def check_output(conn: NbdConnection, out: bytes) -> None:
    """The server's byte stream must stay well framed."""
    assert out[:18] == struct.pack(">QQH", P.NBDMAGIC, P.IHAVEOPT, 3)
    pos = 18
    while out[pos:pos + 8] == _OPT_MAGIC:
        _, _, rep, length = struct.unpack_from(">QIII", out, pos)
        pos += 20 + length
        assert pos <= len(out)
    if conn.export is None:
        assert pos == len(out)
        return
    if pos < len(out) and out[pos:pos + 4] not in (_SIMPLE, _STRUCT):
        pos += 10  # NBD_OPT_EXPORT_NAME reply, maybe with 124 zeroes
        if pos < len(out) and out[pos:pos + 4] not in (_SIMPLE, _STRUCT):
            assert out[pos:pos + 124] == bytes(124)
            pos += 124
    if not conn.structured_replies:
        return  # simple READ replies carry data that only the cookie explains
    while pos < len(out):
        magic = out[pos:pos + 4]
        if magic == _SIMPLE:
            pos += 16
        else:
            assert magic == _STRUCT
            _, flags, typ, _, length = struct.unpack_from(">IHHQI", out, pos)
            assert flags == P.REPLY_FLAG_DONE
            assert typ in (P.REPLY_TYPE_OFFSET_DATA, P.REPLY_TYPE_BLOCK_STATUS, P.REPLY_TYPE_ERROR)
            pos += 20 + length
    assert pos == len(out)


@SETTINGS
@given(st.binary(max_size=3000), chunkings())
def test_random_bytes(data, chunks):
    conn, out, events = drive(data, chunks)
    check_output(conn, out)


@SETTINGS
@given(sessions(), chunkings())
def test_valid_sessions(data, chunks):
    conn, out, events = drive(data, chunks)
    assert conn.export is not None
    check_output(conn, out)


@SETTINGS
@given(mutated(sessions()), chunkings())
def test_mutated_sessions(data, chunks):
    conn, out, events = drive(data, chunks)
    check_output(conn, out)
    closes = [e for e in events if isinstance(e, Close)]
    assert len(closes) <= 1 and (not closes or events[-1] is closes[0])


@SETTINGS
@given(mutated(sessions()), chunkings(),
       st.lists(st.sampled_from([0, 1, REQUEST_COST, REQUEST_COST + 4096, UNLIMITED]), min_size=1, max_size=5)
       .filter(lambda c: 0 in c or UNLIMITED in c))
def test_mutated_sessions_with_little_credit(data, chunks, credits):
    conn, out, events = drive(data, chunks, credits)
    check_output(conn, out)
    closes = [e for e in events if isinstance(e, Close)]
    assert len(closes) <= 1 and (not closes or events[-1] is closes[0])


@SETTINGS
@given(st.booleans(), st.binary(max_size=2000), chunkings())
def test_garbage_in_transmission(sr, garbage, chunks):
    prefix = struct.pack(">I", 3)
    if sr:
        prefix += option(P.OPT_STRUCTURED_REPLY)
    prefix += option(P.OPT_GO, name_block(b"disk", b"\0\0"))
    conn, out, events = drive(prefix + garbage, chunks)
    check_output(conn, out)
    # Garbage that is not a request header ends the connection.
    if len(garbage) >= 28 and garbage[:4] != struct.pack(">I", P.REQUEST_MAGIC):
        assert conn.closed
