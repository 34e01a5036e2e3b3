"""The sans-I/O NBD core, driven byte by byte (and in one piece) with no sockets."""
from __future__ import annotations

import errno
import struct

import pytest

from ramster.nbd import wire as P
from ramster.nbd.base import STATE_HOLE, STATE_ZERO, Export, ExportError
from ramster.nbd.handshake import MAX_OPTION_DATA, Handshake
from ramster.nbd.ramdisk import MemoryExport
from ramster.nbd.protocol import Close, NbdConnection, Negotiated, ProtocolError, Request

SIZE = 1 << 20
MAX = Export.max_payload  # the advertised maximum request length (2 MiB)


def run_sync(coro):
    """Run a coroutine that never suspends (MemoryExport's never do)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("coroutine suspended")


# --- client-side encoders -----------------------------------------------------------
def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", P.IHAVEOPT, opt, len(data)) + data


def info_data(name: str, *infos: int) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta_data(name: str, *queries: str) -> bytes:
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q.encode())) + q.encode()
    return out


def request(cmd: int, offset: int = 0, length: int = 0, flags: int = 0, cookie: int = 0x1234,
            data: bytes = b"", magic: int = P.REQUEST_MAGIC) -> bytes:
    return struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + data


class Session:
    """A client talking to one NbdConnection, through the bytes only."""

    def __init__(self, exports, bytewise: bool, default: str | None = None, **kw):
        self.conn = NbdConnection(exports, default, **kw)
        self.bytewise = bytewise
        self.events: list = []
        self.out = bytearray(self.conn.data_to_send())

    def send(self, data: bytes) -> None:
        if self.bytewise:
            for i in range(len(data)):
                self.events += self.conn.feed(data[i:i + 1])
        else:
            self.events += self.conn.feed(data)
        self.out += self.conn.data_to_send()

    def take(self, n: int) -> bytes:
        assert len(self.out) >= n, f"wanted {n} bytes, server sent {len(self.out)}"
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def greeting(self) -> None:
        assert self.take(18) == struct.pack(">QQH", P.NBDMAGIC, P.IHAVEOPT, 3)

    def opt_reply(self) -> tuple[int, int, bytes]:
        magic, opt, rep, length = struct.unpack(">QIII", self.take(20))
        assert magic == P.OPT_REPLY_MAGIC
        return opt, rep, self.take(length)

    def opt_replies(self) -> list[tuple[int, int, bytes]]:
        """Replies up to and including the final one (ACK or an error)."""
        replies = []
        while True:
            replies.append(self.opt_reply())
            if replies[-1][1] not in (P.REP_SERVER, P.REP_INFO, P.REP_META_CONTEXT):
                return replies

    def closed(self) -> Close | None:
        closes = [e for e in self.events if isinstance(e, Close)]
        return closes[-1] if closes else None

    def requests(self) -> list[Request]:
        reqs = [e for e in self.events if isinstance(e, Request)]
        self.events = [e for e in self.events if not isinstance(e, Request)]
        return reqs

    def execute(self) -> None:
        """What the asyncio shell does, minus the asyncio."""
        conn = self.conn
        export = conn.export
        for req in self.requests():
            try:
                if req.command == P.CMD_READ:
                    conn.reply_read(req, run_sync(export.read(req.offset, req.length)))
                    continue
                if req.command == P.CMD_BLOCK_STATUS:
                    conn.reply_block_status(req, export.block_status(req.offset, req.length))
                    continue
                fua = bool(req.flags & P.CMD_FLAG_FUA)
                if req.command == P.CMD_WRITE:
                    run_sync(export.write(req.offset, req.data, fua))
                elif req.command == P.CMD_TRIM:
                    run_sync(export.trim(req.offset, req.length, fua))
                elif req.command == P.CMD_WRITE_ZEROES:
                    run_sync(export.zero(req.offset, req.length, fua,
                                         bool(req.flags & P.CMD_FLAG_FAST_ZERO)))
                elif req.command == P.CMD_FLUSH:
                    run_sync(export.flush())
                elif req.command == P.CMD_CACHE:
                    run_sync(export.cache(req.offset, req.length))
                conn.reply_ok(req)
            except ExportError as exc:
                conn.reply_error(req, exc.errno, str(exc))
        self.out += conn.data_to_send()

    def simple_reply(self, data_len: int = 0) -> tuple[int, int, bytes]:
        magic, err, cookie = struct.unpack(">IIQ", self.take(16))
        assert magic == P.SIMPLE_REPLY_MAGIC
        return err, cookie, self.take(data_len if err == 0 else 0)

    def chunk(self) -> tuple[int, int, int, bytes]:
        magic, flags, typ, cookie, length = struct.unpack(">IHHQI", self.take(20))
        assert magic == P.STRUCTURED_REPLY_MAGIC
        return flags, typ, cookie, self.take(length)

    def chunk_error(self) -> int:
        flags, typ, _, payload = self.chunk()
        assert flags & P.REPLY_FLAG_DONE and typ == P.REPLY_TYPE_ERROR
        err, msglen = struct.unpack_from(">IH", payload)
        assert len(payload) == 6 + msglen
        return err

    def reply_error(self, structured: bool) -> int:
        """Error value of the next reply, whatever its form."""
        return self.chunk_error() if structured else self.simple_reply()[0]

    def go(self, name: str = "disk", structured: bool = False, meta: bool = False,
           client_flags: int = 3) -> None:
        self.greeting()
        self.send(struct.pack(">I", client_flags))
        if structured:
            self.send(option(P.OPT_STRUCTURED_REPLY))
            assert self.opt_reply()[1] == P.REP_ACK
        if meta:
            self.send(option(P.OPT_SET_META_CONTEXT, meta_data(name, "base:allocation")))
            assert [r[1] for r in self.opt_replies()] == [P.REP_META_CONTEXT, P.REP_ACK]
        self.send(option(P.OPT_GO, info_data(name)))
        assert self.opt_replies()[-1][1] == P.REP_ACK
        assert any(isinstance(e, Negotiated) for e in self.events)
        assert self.conn.in_transmission


@pytest.fixture(params=[True, False], ids=["bytewise", "whole"])
def bytewise(request):
    return request.param


@pytest.fixture
def disk():
    return MemoryExport("disk", SIZE, description="a test disk")


@pytest.fixture
def session(disk, bytewise):
    return Session({"disk": disk}, bytewise)


# --- handshake ----------------------------------------------------------------------
def test_greeting_is_fixed_newstyle_with_no_zeroes(session):
    session.greeting()
    assert not session.out


@pytest.mark.parametrize("flags", [4, 1 << 31, 0xFFFFFFFF, 3 | 8])
def test_unknown_client_flags_close(session, flags):
    session.greeting()
    session.send(struct.pack(">I", flags) + option(P.OPT_LIST))
    assert session.closed() is not None and not session.closed().graceful
    assert not session.out
    assert session.conn.feed(b"more") == []


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_fallback(session, disk, no_zeroes):
    session.greeting()
    session.send(struct.pack(">I", 1 | (2 if no_zeroes else 0)) + option(P.OPT_EXPORT_NAME, b"disk"))
    size, tflags = struct.unpack(">QH", session.take(10))
    assert size == SIZE and tflags & P.TF_HAS_FLAGS
    assert not tflags & P.TF_SEND_DF  # structured replies were not negotiated
    if not no_zeroes:
        assert session.take(124) == bytes(124)
    assert not session.out
    assert [type(e) for e in session.events] == [Negotiated]
    assert session.conn.export is disk


def test_export_name_empty_selects_default(disk, bytewise):
    s = Session({"disk": disk}, bytewise, default="disk")
    s.greeting()
    s.send(struct.pack(">I", 3) + option(P.OPT_EXPORT_NAME))
    assert struct.unpack(">QH", s.take(10))[0] == SIZE
    assert s.conn.export is disk


def test_export_name_unknown_closes(session):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_EXPORT_NAME, b"nope"))
    assert session.closed() is not None
    assert not session.out


def test_export_name_over_long_closes_without_buffering(session):
    session.greeting()
    session.conn.feed(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_EXPORT_NAME, 1 << 30))
    assert session.conn.closed
    assert session.conn.buffered == 0


def test_non_fixed_newstyle_client_is_honoured(session):
    session.greeting()
    session.send(struct.pack(">I", 0) + option(P.OPT_EXPORT_NAME, b"disk"))
    assert struct.unpack(">QH", session.take(10))[0] == SIZE
    assert session.take(124) == bytes(124)


def test_abort_acks_and_closes_gracefully(session):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_ABORT, b"ignored"))
    assert session.opt_reply() == (P.OPT_ABORT, P.REP_ACK, b"")
    assert session.closed().graceful


def test_list(bytewise):
    a, b = MemoryExport("a", 4096), MemoryExport("bee", 8192, description="second")
    s = Session({"a": a, "bee": b}, bytewise)
    s.greeting()
    s.send(struct.pack(">I", 3) + option(P.OPT_LIST))
    replies = s.opt_replies()
    assert [r[1] for r in replies] == [P.REP_SERVER, P.REP_SERVER, P.REP_ACK]
    names = []
    for _, _, data in replies[:2]:
        (n,) = struct.unpack_from(">I", data)
        names.append((data[4:4 + n].decode(), data[4 + n:].decode()))
    assert names == [("a", ""), ("bee", "second")]
    s.send(option(P.OPT_LIST, b"x"))
    assert s.opt_reply()[1] == P.REP_ERR_INVALID


def test_list_with_callable_lookup_is_empty(disk, bytewise):
    s = Session(lambda name: disk if name == "disk" else None, bytewise)
    s.greeting()
    s.send(struct.pack(">I", 3) + option(P.OPT_LIST))
    assert s.opt_replies() == [(P.OPT_LIST, P.REP_ACK, b"")]
    s.send(option(P.OPT_GO, info_data("disk")))
    assert s.opt_replies()[-1][1] == P.REP_ACK


@pytest.mark.parametrize("opt", [P.OPT_STARTTLS, P.OPT_EXTENDED_HEADERS, 4, 12, 0, 0xFFFFFFFF])
def test_unknown_options_get_unsup_and_session_goes_on(session, opt):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(opt, b"whatever data"))
    assert session.opt_reply()[:2] == (opt, P.REP_ERR_UNSUP)
    session.send(option(P.OPT_GO, info_data("disk")))
    assert session.opt_replies()[-1][1] == P.REP_ACK
    assert session.conn.in_transmission


def _infos(replies):
    out = {}
    for _, rep, data in replies:
        if rep == P.REP_INFO:
            (typ,) = struct.unpack_from(">H", data)
            out[typ] = data[2:]
    return out


@pytest.mark.parametrize("opt", [P.OPT_INFO, P.OPT_GO])
def test_info_and_go(session, opt):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(opt, info_data("disk", P.INFO_NAME, P.INFO_DESCRIPTION, 77)))
    replies = session.opt_replies()
    assert replies[-1] == (opt, P.REP_ACK, b"")
    infos = _infos(replies)
    size, tflags = struct.unpack(">QH", infos[P.INFO_EXPORT])
    assert size == SIZE
    expected = (P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_SEND_FUA | P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES
                | P.TF_SEND_FAST_ZERO | P.TF_SEND_CACHE | P.TF_CAN_MULTI_CONN)
    assert tflags == expected
    assert infos[P.INFO_NAME] == b"disk"
    assert infos[P.INFO_DESCRIPTION] == b"a test disk"
    assert struct.unpack(">III", infos[P.INFO_BLOCK_SIZE]) == (1, 4096, MAX)
    assert session.conn.in_transmission == (opt == P.OPT_GO)
    assert any(isinstance(e, Negotiated) for e in session.events) == (opt == P.OPT_GO)


def test_info_without_requests_still_sends_block_size(session):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_INFO, info_data("disk")))
    infos = _infos(session.opt_replies())
    assert set(infos) == {P.INFO_EXPORT, P.INFO_BLOCK_SIZE}


def test_info_empty_name_without_default(session):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_INFO, info_data("")))
    # A single-export dict still has no implicit default inside the core.
    assert session.opt_reply()[1] == P.REP_ERR_UNKNOWN


@pytest.mark.parametrize("opt", [P.OPT_INFO, P.OPT_GO])
def test_info_unknown_export(session, opt):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(opt, info_data("nope")))
    assert session.opt_replies() == [(opt, P.REP_ERR_UNKNOWN, b"unknown export 'nope'")]
    assert not session.conn.in_transmission


@pytest.mark.parametrize("data", [
    b"",                                                    # nothing at all
    struct.pack(">I", 10) + b"disk" + b"\0\0",              # name longer than data
    struct.pack(">I", 4) + b"disk" + b"\0\1",               # one request promised, none sent
    struct.pack(">I", 4) + b"disk" + b"\0\0" + b"\0",       # trailing byte
    struct.pack(">I", 4) + b"di\0k" + b"\0\0",              # NUL in name
    struct.pack(">I", 4) + b"d\xffsk" + b"\0\0",            # not UTF-8
    struct.pack(">I", 5000) + b"x" * 5000 + b"\0\0",        # name over 4096 bytes
])
def test_info_malformed(session, data):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_GO, data))
    assert session.opt_reply()[1] == P.REP_ERR_INVALID
    assert not session.conn.in_transmission
    session.send(option(P.OPT_GO, info_data("disk")))
    assert session.opt_replies()[-1][1] == P.REP_ACK


def test_over_long_option_is_skipped_not_buffered(session):
    session.greeting()
    session.send(struct.pack(">I", 3))
    conn = session.conn
    length = 10 * 1024 * 1024
    session.events += conn.feed(struct.pack(">QII", P.IHAVEOPT, P.OPT_INFO, length))
    junk = bytes(256 * 1024)
    for _ in range(length // len(junk)):
        conn.feed(junk)
        assert conn.buffered == 0
    session.out += conn.data_to_send()
    assert session.opt_reply()[:2] == (P.OPT_INFO, P.REP_ERR_TOO_BIG)
    session.send(option(P.OPT_GO, info_data("disk")))
    assert session.opt_replies()[-1][1] == P.REP_ACK


def test_bad_option_magic_closes(session):
    session.greeting()
    session.send(struct.pack(">I", 3) + struct.pack(">QII", 0xDEADBEEF, P.OPT_GO, 0))
    assert session.closed() is not None
    assert not session.out


def test_structured_reply_option(session):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_STRUCTURED_REPLY, b"x"))
    assert session.opt_reply()[1] == P.REP_ERR_INVALID
    assert not session.conn.structured_replies
    session.send(option(P.OPT_STRUCTURED_REPLY))
    assert session.opt_reply() == (P.OPT_STRUCTURED_REPLY, P.REP_ACK, b"")
    assert session.conn.structured_replies


def test_meta_context_needs_structured_replies(session):
    session.greeting()
    session.send(struct.pack(">I", 3))
    for opt in (P.OPT_LIST_META_CONTEXT, P.OPT_SET_META_CONTEXT):
        session.send(option(opt, meta_data("disk", "base:allocation")))
        assert session.opt_reply()[1] == P.REP_ERR_INVALID


def _contexts(replies):
    return [(struct.unpack_from(">I", d)[0], d[4:].decode()) for _, r, d in replies if r == P.REP_META_CONTEXT]


@pytest.mark.parametrize("queries, listed", [
    ((), True), (("base:",), True), (("base:allocation",), True),
    (("base:nothing",), False), (("qemu:dirty-bitmap:x",), False), (("x-foo:", "base:"), True),
])
def test_list_meta_context(session, queries, listed):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_STRUCTURED_REPLY))
    session.opt_reply()
    session.send(option(P.OPT_LIST_META_CONTEXT, meta_data("disk", *queries)))
    replies = session.opt_replies()
    assert replies[-1][1] == P.REP_ACK
    assert _contexts(replies) == ([(0, "base:allocation")] if listed else [])


@pytest.mark.parametrize("queries, selected", [
    ((), False), (("base:",), False), (("base:allocation",), True), (("x-a:b", "base:allocation"), True),
])
def test_set_meta_context(session, queries, selected):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_STRUCTURED_REPLY))
    session.opt_reply()
    session.send(option(P.OPT_SET_META_CONTEXT, meta_data("disk", *queries)))
    replies = session.opt_replies()
    assert replies[-1][1] == P.REP_ACK
    ctx = _contexts(replies)
    assert (ctx == [(P.BASE_ALLOCATION_ID, "base:allocation")]) == selected
    assert (len(ctx) == 0) == (not selected)


@pytest.mark.parametrize("data", [
    b"\0\0",                                                            # short
    struct.pack(">I", 4) + b"disk" + struct.pack(">I", 1),              # query missing
    struct.pack(">I", 4) + b"disk" + struct.pack(">II", 1, 100) + b"b",  # query truncated
    meta_data("disk", "base:allocation") + b"!",                        # trailing data
])
def test_meta_context_malformed(session, data):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_STRUCTURED_REPLY))
    session.opt_reply()
    session.send(option(P.OPT_SET_META_CONTEXT, data))
    assert session.opt_reply()[1] == P.REP_ERR_INVALID


def test_meta_context_unknown_export(session):
    session.greeting()
    session.send(struct.pack(">I", 3) + option(P.OPT_STRUCTURED_REPLY))
    session.opt_reply()
    session.send(option(P.OPT_SET_META_CONTEXT, meta_data("nope", "base:allocation")))
    assert session.opt_reply()[1] == P.REP_ERR_UNKNOWN


def test_shutdown_during_handshake(session):
    session.greeting()
    session.send(struct.pack(">I", 3))
    session.conn.begin_shutdown()
    session.send(option(P.OPT_GO, info_data("disk")))
    assert session.opt_reply()[1] == P.REP_ERR_SHUTDOWN
    session.send(option(P.OPT_ABORT))
    assert session.opt_reply()[1] == P.REP_ACK


def test_read_only_flags(bytewise):
    ro = MemoryExport("ro", 8192, read_only=True)
    s = Session({"ro": ro}, bytewise)
    s.greeting()
    s.send(struct.pack(">I", 3) + option(P.OPT_INFO, info_data("ro")))
    _, tflags = struct.unpack(">QH", _infos(s.opt_replies())[P.INFO_EXPORT])
    assert tflags & P.TF_READ_ONLY
    assert not tflags & (P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES | P.TF_SEND_FUA | P.TF_SEND_FAST_ZERO)


def test_capability_flags_follow_export(bytewise):
    class Plain(Export):
        name, size = "plain", 4096
        can_flush = can_trim = can_cache = can_multi_conn = False
    s = Session({"plain": Plain()}, bytewise)
    s.go("plain", structured=True)
    assert s.conn._tflags == P.TF_HAS_FLAGS | P.TF_SEND_FUA | P.TF_SEND_WRITE_ZEROES | P.TF_SEND_DF


# --- the handshake machine on its own --------------------------------------------------
def replies_of(out: bytes) -> list[tuple[int, int, bytes]]:
    """Option replies (option, type, data) parsed from the server's bytes."""
    replies, pos = [], 0
    while pos < len(out):
        magic, opt, rep, length = struct.unpack_from(">QIII", out, pos)
        assert magic == P.OPT_REPLY_MAGIC
        replies.append((opt, rep, out[pos + 20:pos + 20 + length]))
        pos += 20 + length
    return replies


@pytest.mark.parametrize("split", [1, 7, None])
def test_handshake_hands_on_what_follows_go(disk, split):
    hs = Handshake({"disk": disk}, max_payload=65536)
    assert hs.data_to_send() == struct.pack(">QQH", P.NBDMAGIC, P.IHAVEOPT, 3)
    first_request = request(P.CMD_READ, 0, 4096)
    stream = (struct.pack(">I", 3) + option(P.OPT_STRUCTURED_REPLY)
              + option(P.OPT_SET_META_CONTEXT, meta_data("disk", "base:allocation"))
              + option(P.OPT_GO, info_data("disk")) + first_request)
    events = []
    for i in range(0, len(stream), split or len(stream)):
        events += hs.feed(stream[i:i + (split or len(stream))])
        if hs.done:
            rest = hs.rest + stream[i + (split or len(stream)):]
            break
    assert rest == first_request  # the first request is not the handshake's to parse
    [ev] = events
    assert isinstance(ev, Negotiated) and ev.export is disk and ev.structured_replies and ev.meta_context
    replies = replies_of(hs.data_to_send())
    assert [r[1] for r in replies] == [P.REP_ACK, P.REP_META_CONTEXT, P.REP_ACK, P.REP_INFO, P.REP_INFO, P.REP_ACK]
    info = {struct.unpack_from(">H", d)[0]: d for _, t, d in replies if t == P.REP_INFO}
    assert struct.unpack(">HIII", info[P.INFO_BLOCK_SIZE]) == (P.INFO_BLOCK_SIZE, 1, 4096, 65536)
    assert hs.feed(b"more") == []  # done: nothing more is parsed here


def test_handshake_bad_magic_and_unknown_option():
    hs = Handshake({"disk": MemoryExport("disk", 4096)})
    hs.take_output()
    assert hs.feed(struct.pack(">I", 3) + option(99, b"what") + option(P.OPT_STARTTLS)) == []
    assert [r[:2] for r in replies_of(hs.data_to_send())] == [(99, P.REP_ERR_UNSUP), (P.OPT_STARTTLS, P.REP_ERR_UNSUP)]
    [ev] = hs.feed(struct.pack(">QII", 0x1234, P.OPT_GO, 0) + b"trailing")
    assert isinstance(ev, Close) and not ev.graceful and "magic" in ev.reason
    assert hs.closed and hs.buffered == 0 and hs.data_to_send() == b""


def test_handshake_over_long_option_and_output_backpressure():
    exports = {f"e{i}": MemoryExport(f"e{i}", 4096, description="d" * 1000) for i in range(100)}
    hs = Handshake(exports)
    hs.take_output()
    hs.feed(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_INFO, MAX_OPTION_DATA + 1))
    hs.feed(bytes(MAX_OPTION_DATA + 1))
    assert hs.buffered == 0
    assert replies_of(hs.data_to_send()) == [(P.OPT_INFO, P.REP_ERR_TOO_BIG, b"option data too long")]
    # a LIST answers with ~100 KiB: the next option waits until that is taken
    hs.feed(option(P.OPT_LIST) + option(P.OPT_LIST))
    assert hs.blocked and hs.buffered == 16
    assert len(replies_of(hs.data_to_send())) == 101
    hs.feed(b"")
    assert not hs.blocked and hs.buffered == 0
    assert len(replies_of(hs.data_to_send())) == 101


# --- transmission: commands ------------------------------------------------------------
@pytest.mark.parametrize("structured", [False, True])
def test_write_read_roundtrip(session, disk, structured):
    session.go(structured=structured)
    payload = bytes(range(256)) * 20
    session.send(request(P.CMD_WRITE, 1000, len(payload), cookie=7, data=payload))
    session.send(request(P.CMD_READ, 1000, len(payload), cookie=8))
    session.execute()
    assert session.simple_reply() == (0, 7, b"")
    if structured:
        flags, typ, cookie, body = session.chunk()
        assert (flags, typ, cookie) == (P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, 8)
        assert struct.unpack_from(">Q", body)[0] == 1000 and body[8:] == payload
    else:
        assert session.simple_reply(len(payload)) == (0, 8, payload)
    assert disk.getvalue()[1000:1000 + len(payload)] == payload


def test_split_payload_is_reassembled(disk):
    s = Session({"disk": disk}, bytewise=False)
    s.go()
    payload = bytes(range(256)) * 64
    msg = request(P.CMD_WRITE, 0, len(payload), data=payload) + request(P.CMD_FLUSH, cookie=9)
    for cut in (5, 28, 29, 1000, len(msg) - 3):
        s.send(msg[:cut])
        s.send(msg[cut:])
        reqs = s.requests()
        assert [r.command for r in reqs] == [P.CMD_WRITE, P.CMD_FLUSH]
        assert bytes(reqs[0].data) == payload


def test_write_fua_and_flush(session):
    session.go()
    session.send(request(P.CMD_WRITE, 0, 4, flags=P.CMD_FLAG_FUA, data=b"abcd")
                 + request(P.CMD_FLUSH, cookie=2))
    reqs = session.requests()
    assert reqs[0].flags == P.CMD_FLAG_FUA and reqs[1].command == P.CMD_FLUSH


def test_trim_zero_cache_block_status(session, disk):
    session.go(structured=True, meta=True)
    data = b"\x55" * 3 * 4096
    session.send(request(P.CMD_WRITE, 0, len(data), cookie=1, data=data))
    session.send(request(P.CMD_TRIM, 4096, 4096, cookie=2))
    session.send(request(P.CMD_WRITE_ZEROES, 8192, 4096, cookie=3, flags=P.CMD_FLAG_NO_HOLE))
    session.send(request(P.CMD_CACHE, 0, 4096, cookie=4))
    session.send(request(P.CMD_BLOCK_STATUS, 0, 5 * 4096, cookie=5))
    session.send(request(P.CMD_BLOCK_STATUS, 0, 5 * 4096, cookie=6, flags=P.CMD_FLAG_REQ_ONE))
    session.execute()
    for cookie in (1, 2, 3, 4):
        assert session.simple_reply() == (0, cookie, b"")
    flags, typ, cookie, body = session.chunk()
    assert (flags, typ, cookie) == (P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, 5)
    ctx, *ext = struct.unpack(f">I{(len(body) - 4) // 4}I", body)
    assert ctx == P.BASE_ALLOCATION_ID
    assert list(zip(ext[::2], ext[1::2])) == [
        (4096, 0), (4096, STATE_HOLE | STATE_ZERO), (4096, STATE_ZERO), (8192, STATE_HOLE | STATE_ZERO)]
    _, _, cookie, body = session.chunk()
    assert cookie == 6 and struct.unpack(">III", body) == (P.BASE_ALLOCATION_ID, 4096, 0)
    assert disk.getvalue()[:3 * 4096] == b"\x55" * 4096 + bytes(8192)


def test_fast_zero(session, disk):
    session.go()
    session.send(request(P.CMD_WRITE_ZEROES, 0, 100, flags=P.CMD_FLAG_FAST_ZERO | P.CMD_FLAG_FUA))
    session.execute()
    assert session.simple_reply()[0] == 0


def test_disc_closes_gracefully(session):
    session.go()
    session.send(request(P.CMD_READ, 0, 10, cookie=1) + request(P.CMD_DISC) + request(P.CMD_READ, 0, 10))
    assert [type(e) for e in session.events][-2:] == [Request, Close]
    assert session.closed().graceful
    assert len(session.requests()) == 1


def test_read_df_flag_with_structured_replies(session):
    session.go(structured=True)
    session.send(request(P.CMD_READ, 0, 512, flags=P.CMD_FLAG_DF))
    session.execute()
    assert session.chunk()[1] == P.REPLY_TYPE_OFFSET_DATA


# --- transmission: errors -----------------------------------------------------------------
BAD_REQUESTS = [
    # (name, request, errno)
    ("unknown command", request(9, 0, 512), P.EINVAL),
    ("unknown command 0xffff", request(0xFFFF, 0, 0), P.EINVAL),
    ("resize", request(8, 0, 0), P.EINVAL),
    ("unknown flag", request(P.CMD_READ, 0, 512, flags=1 << 7), P.EINVAL),
    ("no_hole on read", request(P.CMD_READ, 0, 512, flags=P.CMD_FLAG_NO_HOLE), P.EINVAL),
    ("req_one on trim", request(P.CMD_TRIM, 0, 512, flags=P.CMD_FLAG_REQ_ONE), P.EINVAL),
    ("df on write", request(P.CMD_WRITE, 0, 1, flags=P.CMD_FLAG_DF, data=b"x"), P.EINVAL),
    ("read past end", request(P.CMD_READ, SIZE - 511, 512), P.EINVAL),
    ("read offset huge", request(P.CMD_READ, 2**64 - 1, 512), P.EINVAL),
    ("trim past end", request(P.CMD_TRIM, SIZE, 1), P.EINVAL),
    ("cache past end", request(P.CMD_CACHE, SIZE - 1, 2), P.EINVAL),
    ("write past end", request(P.CMD_WRITE, SIZE - 2, 4, data=b"abcd"), P.ENOSPC),
    ("zero past end", request(P.CMD_WRITE_ZEROES, SIZE, 4096), P.ENOSPC),
    ("read length 0", request(P.CMD_READ, 0, 0), P.EINVAL),
    ("write length 0", request(P.CMD_WRITE, 0, 0), P.EINVAL),
    ("trim length 0", request(P.CMD_TRIM, 0, 0), P.EINVAL),
    ("zero length 0", request(P.CMD_WRITE_ZEROES, 0, 0), P.EINVAL),
    ("cache length 0", request(P.CMD_CACHE, 0, 0), P.EINVAL),
    ("flush with offset", request(P.CMD_FLUSH, 8, 0), P.EINVAL),
    ("flush with length", request(P.CMD_FLUSH, 0, 8), P.EINVAL),
    ("block status without context", request(P.CMD_BLOCK_STATUS, 0, 512), P.EINVAL),
]


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("name, req, err", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests(bytewise, name, req, err, structured):
    disk = MemoryExport("disk", SIZE)
    s = Session({"disk": disk}, bytewise)
    s.go(structured=structured)
    # The session must stay in sync: a good request right behind the bad one.
    s.send(req + request(P.CMD_WRITE, 0, 2, cookie=99, data=b"ok"))
    s.execute()
    assert s.reply_error(structured) == err
    assert s.simple_reply() == (0, 99, b"")
    assert disk.counters.errors == 1
    assert s.closed() is None
    assert disk.getvalue()[:2] == b"ok"


@pytest.mark.parametrize("structured", [False, True])
def test_read_over_max_payload(structured):
    # Within the export, one byte over the maximum: refused, and the session goes on.
    s = Session({"big": MemoryExport("big", 4 * MAX)}, False)
    s.go("big", structured=structured)
    s.send(request(P.CMD_READ, 0, MAX + 1, cookie=1) + request(P.CMD_READ, 0, 512, cookie=2))
    s.execute()
    assert s.reply_error(structured) == P.EINVAL
    if structured:
        assert s.chunk()[2] == 2
    else:
        assert s.simple_reply(512)[:2] == (0, 2)
    assert s.closed() is None


def test_big_read_within_max_payload_is_allowed(disk, bytewise):
    big = MemoryExport("big", 4 * MAX)
    s = Session({"big": big}, False)
    s.go("big")
    s.send(request(P.CMD_READ, 0, MAX))
    assert len(s.requests()) == 1


def test_server_caps_the_advertised_maximum(disk):
    s = Session({"disk": disk}, False, max_payload=64 * 1024)
    s.greeting()
    s.send(struct.pack(">I", 3) + option(P.OPT_GO, info_data("disk", P.INFO_BLOCK_SIZE)))
    assert struct.unpack(">III", _infos(s.opt_replies())[P.INFO_BLOCK_SIZE]) == (1, 4096, 64 * 1024)
    s.send(request(P.CMD_WRITE, 0, 64 * 1024 + 1, cookie=5) + b"\1" * (64 * 1024 + 1))
    assert s.simple_reply()[:2] == (P.EINVAL, 5)
    assert b"\1" not in disk.getvalue()


@pytest.mark.parametrize("structured", [False, True])
def test_write_over_max_is_skipped_and_refused(structured):
    """Over the maximum but under 2^25 (not a DoS by proto.md): the payload is read
    and dropped as it arrives, never stored, and the session goes on."""
    big = MemoryExport("big", 4 * MAX)
    s = Session({"big": big}, False)
    s.go("big", structured=structured)
    conn = s.conn
    length = 2 * MAX
    s.events += conn.feed(request(P.CMD_WRITE, 0, length, cookie=7))
    for i in range(0, length, 65536):
        s.events += conn.feed(b"\xee" * 65536)
        assert conn.partial_size == 0 and conn.buffered == 0
    s.out += conn.data_to_send()
    assert s.reply_error(structured) == P.EINVAL
    s.send(request(P.CMD_WRITE, 0, 2, cookie=8, data=b"ok"))
    s.execute()
    assert s.simple_reply()[:2] == (0, 8)
    assert s.closed() is None
    assert big.getvalue()[:3] == b"ok\0"


def test_write_payload_memory_follows_bytes_received(session):
    """An announced length costs nothing: the core holds what was sent, no more."""
    session.go()
    conn = session.conn
    session.events += conn.feed(request(P.CMD_WRITE, 0, SIZE, cookie=3) + b"x")
    assert conn.partial_size == 1
    assert conn.mid_request
    for n in (4096, 100_000):
        before = conn.partial_size
        session.events += conn.feed(b"y" * n)
        assert conn.partial_size == before + n
    session.events += conn.feed(b"y" * (SIZE - conn.partial_size))
    assert conn.partial_size == 0
    (req,) = session.requests()
    assert len(req.data) == SIZE and bytes(req.data[:2]) == b"xy"
    assert not conn.mid_request


@pytest.mark.parametrize("structured", [False, True])
def test_write_over_2_to_the_25_closes_without_buffering(session, structured):
    session.go(structured=structured)
    conn = session.conn
    session.events += conn.feed(request(P.CMD_WRITE, 0, 0xFFFFFFFF) + bytes(4096))
    session.out += conn.data_to_send()
    assert session.reply_error(structured) == P.EINVAL
    assert session.closed() is not None and not session.closed().graceful
    assert conn._payload is None and conn.buffered == 0


def test_invalid_write_payload_is_skipped_not_buffered(session):
    session.go()
    conn = session.conn
    length = 16 * 1024 * 1024
    session.events += conn.feed(request(P.CMD_WRITE, SIZE - 10, length))
    for _ in range(length // 65536):
        conn.feed(bytes(65536))
        assert conn._payload is None and conn.buffered == 0
    session.out += conn.data_to_send()
    assert session.simple_reply()[0] == P.ENOSPC


@pytest.mark.parametrize("cmd, err", [
    (P.CMD_WRITE, P.EPERM), (P.CMD_TRIM, P.EPERM), (P.CMD_WRITE_ZEROES, P.EPERM), (P.CMD_READ, 0)])
def test_read_only_export(bytewise, cmd, err):
    ro = MemoryExport("ro", 8192, read_only=True)
    s = Session({"ro": ro}, bytewise)
    s.go("ro")
    s.send(request(cmd, 0, 4, data=b"abcd" if cmd == P.CMD_WRITE else b""))
    s.execute()
    assert s.simple_reply(4)[0] == err
    assert ro.getvalue() == bytes(8192)


def test_fast_zero_not_advertised(bytewise):
    slow = MemoryExport("slow", 8192)
    slow.can_fast_zero = False
    s = Session({"slow": slow}, bytewise)
    s.go("slow")
    s.send(request(P.CMD_WRITE_ZEROES, 0, 4096, flags=P.CMD_FLAG_FAST_ZERO))
    assert s.simple_reply()[0] == P.EINVAL


def test_df_without_structured_replies(session):
    session.go()
    session.send(request(P.CMD_READ, 0, 512, flags=P.CMD_FLAG_DF))
    assert session.simple_reply()[0] == P.EINVAL


def test_block_status_for_other_export_than_meta_context(bytewise):
    a, b = MemoryExport("a", 8192), MemoryExport("b", 8192)
    s = Session({"a": a, "b": b}, bytewise)
    s.greeting()
    s.send(struct.pack(">I", 3) + option(P.OPT_STRUCTURED_REPLY))
    s.opt_reply()
    s.send(option(P.OPT_SET_META_CONTEXT, meta_data("a", "base:allocation")))
    s.opt_replies()
    s.send(option(P.OPT_GO, info_data("b")))
    s.opt_replies()
    s.send(request(P.CMD_BLOCK_STATUS, 0, 512))
    assert s.chunk_error() == P.EINVAL


def test_min_block_alignment(bytewise):
    aligned = MemoryExport("al", 1 << 16)
    aligned.min_block = 512
    s = Session({"al": aligned}, bytewise)
    s.go("al")
    s.send(request(P.CMD_READ, 100, 512) + request(P.CMD_READ, 0, 100) + request(P.CMD_READ, 512, 512, cookie=3))
    assert s.simple_reply()[0] == P.EINVAL
    assert s.simple_reply()[0] == P.EINVAL
    assert len(s.requests()) == 1


@pytest.mark.parametrize("magic", [0, 0x12560953, 0x25609514, P.SIMPLE_REPLY_MAGIC])
def test_bad_request_magic_closes(session, magic):
    session.go()
    session.send(request(P.CMD_READ, 0, 512, magic=magic) + request(P.CMD_READ, 0, 512))
    assert session.closed() is not None and not session.closed().graceful
    assert not session.requests() and not session.out


@pytest.mark.parametrize("structured", [False, True])
def test_shutdown_refuses_new_requests(session, structured):
    session.go(structured=structured)
    session.conn.begin_shutdown()
    session.send(request(P.CMD_READ, 0, 512, cookie=1) + request(P.CMD_WRITE, 0, 3, cookie=2, data=b"abc"))
    assert session.reply_error(structured) == P.ESHUTDOWN
    assert session.reply_error(structured) == P.ESHUTDOWN
    assert not session.requests()


# --- reply helpers --------------------------------------------------------------------
def _bs_session(disk):
    s = Session({"disk": disk}, bytewise=False)
    s.go(structured=True, meta=True)
    return s


@pytest.mark.parametrize("extents, flags, expected", [
    ([], 0, [(4096, 0)]),                                      # export said nothing
    ([(0, 1), (-5, 1)], 0, [(4096, 0)]),                       # nonsense lengths dropped
    ([(100000, 3)], 0, [(4096, 3)]),                           # clipped to the request
    ([(1000, 3), (1000, 3), (5000, 0)], 0, [(2000, 3), (2096, 0)]),  # merged
    ([(1000, 3), (5000, 0)], P.CMD_FLAG_REQ_ONE, [(1000, 3)]),
    ([(5000, 2)], P.CMD_FLAG_REQ_ONE, [(4096, 2)]),
])
def test_reply_block_status_sanitises(disk, extents, flags, expected):
    s = _bs_session(disk)
    s.conn.reply_block_status(Request(5, P.CMD_BLOCK_STATUS, flags, 0, 4096), extents)
    s.out += s.conn.data_to_send()
    _, typ, _, body = s.chunk()
    vals = struct.unpack(f">I{(len(body) - 4) // 4}I", body)[1:]
    assert list(zip(vals[::2], vals[1::2])) == expected


def test_reply_block_status_caps_extent_count(disk):
    s = _bs_session(disk)
    many = [(1, i & 1) for i in range(P.MAX_EXTENTS * 2)]
    s.conn.reply_block_status(Request(5, P.CMD_BLOCK_STATUS, 0, 0, len(many)), many)
    s.out += s.conn.data_to_send()
    assert len(s.chunk()[3]) == 4 + 8 * P.MAX_EXTENTS


@pytest.mark.parametrize("structured", [False, True])
def test_short_read_from_export_becomes_eio(session, structured):
    session.go(structured=structured)
    session.conn.reply_read(Request(3, P.CMD_READ, 0, 0, 10), b"short")
    session.out += session.conn.data_to_send()
    assert session.reply_error(structured) == P.EIO


@pytest.mark.parametrize("err, wire", [
    (errno.EIO, P.EIO), (errno.ENOSPC, P.ENOSPC), (errno.EDQUOT, P.ENOSPC), (errno.EFBIG, P.ENOSPC),
    (errno.EROFS, P.EPERM), (errno.ENOTSUP, P.ENOTSUP), (errno.ENOENT, P.EIO), (0, P.EIO),
    (errno.ESHUTDOWN, P.ESHUTDOWN),
])
def test_errno_mapping(session, err, wire):
    session.go(structured=True)
    session.conn.reply_error(Request(3, P.CMD_WRITE, 0, 0, 10), err, "boom")
    session.out += session.conn.data_to_send()
    _, _, _, payload = session.chunk()
    assert struct.unpack_from(">IH", payload) == (wire, 4) and payload[6:] == b"boom"


# --- MemoryExport ------------------------------------------------------------------------
def test_memory_export_block_status_and_unaligned_tail():
    m = MemoryExport("m", 3 * 4096 + 100)
    assert m.block_status(0, m.size) == [(m.size, STATE_HOLE | STATE_ZERO)]
    run_sync(m.write(4096 * 3 + 10, b"z"))
    assert m.block_status(0, m.size) == [(3 * 4096, 3), (100, 0)]
    run_sync(m.zero(0, m.size))
    assert m.block_status(0, m.size) == [(m.size, STATE_ZERO)]
    run_sync(m.trim(0, m.size))
    assert m.block_status(5, 10) == [(10, 3)]
    assert m.getvalue() == bytes(m.size)


def test_memory_export_partial_trim_keeps_data():
    m = MemoryExport("m", 4 * 4096)
    run_sync(m.write(0, b"\x01" * m.size))
    run_sync(m.trim(100, 2 * 4096))
    assert m.block_status(0, m.size) == [(4096, 0), (4096, 3), (2 * 4096, 0)]
    assert m.getvalue()[:4096] == b"\x01" * 4096
    assert m.getvalue()[4096:8192] == bytes(4096)


def test_memory_export_block_status_is_bounded():
    m = MemoryExport("m", 4096 * 5000)
    for i in range(0, 5000, 2):
        run_sync(m.write(i * 4096, b"x"))
    assert len(m.block_status(0, m.size)) == 1024


def test_replies_before_transmission_are_caller_errors(session):
    req = Request(1, P.CMD_READ, 0, 0, 1)
    with pytest.raises(ProtocolError):
        session.conn.reply_read(req, b"x")
    with pytest.raises(ProtocolError):
        session.conn.reply_ok(req)
    with pytest.raises(ProtocolError):
        session.conn.reply_error(req, errno.EIO)
    session.go()
    with pytest.raises(ProtocolError):
        session.conn.reply_block_status(req, [(1, 0)])
