"""Server side of the NBD protocol as a sans-I/O state machine.

`NbdConnection` knows nothing about sockets or event loops: bytes from the
client go in through `feed()`, which returns events (`Negotiated`,
`Request`, `Close`); bytes for the client come out of `data_to_send()`.
Everything that can be decided without looking at the export's data
(handshake, option replies, request validation, error replies) is done here,
so the I/O shell only has to run the `Request`s it is handed and report the
outcome through the `reply_*` methods.

Memory a client can make the core hold grows with what it actually sent,
never with what it announced: a WRITE payload is collected as it arrives, an
over-long one is skipped without being stored, and option data is capped. How
much the shell is willing to take on is its `credit`: before `feed()` it sets
`credit` (bytes) and `overdraw` (one request may exceed the credit, which is
how a connection holding nothing is always served); each request the core
parses costs `REQUEST_COST` plus its READ/WRITE length, and the first one that
does not fit stops parsing at its header (`blocked`), leaving the rest of the
input buffered until the shell grants more credit and calls `feed(b"")`. In
the handshake, parsing stops the same way while more than
MAX_HANDSHAKE_OUTPUT bytes of option replies wait to be taken.
`admitted` sums the costs of the `Request`s handed out, for the shell to
account and release as they finish.

Constants and rules follow NetworkBlockDevice/nbd doc/proto.md.
"""
from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Union

from .base import Export

# --- magics -----------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# --- handshake flags ----------------------------------------------------------
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1
_KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# --- options --------------------------------------------------------------------
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_PLATFORM = 2**31 + 4
REP_ERR_TLS_REQD = 2**31 + 5
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_SHUTDOWN = 2**31 + 7
REP_ERR_BLOCK_SIZE_REQD = 2**31 + 8
REP_ERR_TOO_BIG = 2**31 + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- transmission flags ----------------------------------------------------------
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# --- commands ---------------------------------------------------------------------
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2**15 + 1
REPLY_TYPE_ERROR_OFFSET = 2**15 + 2

# --- error values (the only ones a client is guaranteed to understand) -------------
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108
_NBD_ERRNOS = {EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN}
_ERRNO_MAP = {
    _errno.EROFS: EPERM,
    _errno.EACCES: EPERM,
    _errno.EDQUOT: ENOSPC,
    _errno.EFBIG: ENOSPC,
    _errno.EOPNOTSUPP: ENOTSUP,
}

META_BASE_ALLOCATION = "base:allocation"
# Any nonzero id will do; proto.md makes ids opaque to the client.
BASE_ALLOCATION_ID = 1

# Option payloads are tiny in practice; anything bigger is skipped, not stored.
MAX_OPTION_DATA = 64 * 1024
# proto.md: a payload shorter than 2^25 bytes SHOULD NOT be treated as a denial of
# service even above the advertised maximum, so such an over-long WRITE is
# skipped (read and dropped) and refused; a longer one may be, and is, answered
# EINVAL and followed by a hang-up rather than read for up to 4 GiB.
DOS_LENGTH = 1 << 25
# What a request costs besides its payload (the Request object queued in the
# shell, its reply header, a task's share): a flood of zero-length requests is
# then bounded by the same credit as data.
REQUEST_COST = 512
# No credit limit: a core driven without a shell that accounts (tests, tools).
UNLIMITED = 1 << 62
# Option replies can be much longer than the options asking for them (a LIST
# names every export): past this much unsent, the next option waits (`blocked`)
# until the shell has taken the output.
MAX_HANDSHAKE_OUTPUT = 64 * 1024
MAX_STRING = 4096
# Cap on descriptors in one BLOCK_STATUS chunk (proto.md lets us return fewer).
MAX_EXTENTS = 8192

# --- wire structs --------------------------------------------------------------------
_GREETING = struct.Struct(">QQH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_EXPORT_NAME_REPLY = struct.Struct(">QH")
_INFO_EXPORT = struct.Struct(">HQH")
_INFO_BLOCK_SIZE = struct.Struct(">HIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")
_CHUNK_OFFSET_DATA = struct.Struct(">IHHQIQ")
_CHUNK_ERROR = struct.Struct(">IHHQIIH")
_EXTENT = struct.Struct(">II")

_REQUEST_SIZE = _REQUEST.size
_ZEROES_124 = bytes(124)


class ProtocolError(Exception):
    """Misuse of the state machine by its caller (not by the peer).

    A misbehaving peer never raises: it gets error replies or a `Close`.
    """


# --- events ------------------------------------------------------------------------------
class Negotiated:
    """The handshake is over; transmission on `export` starts."""

    __slots__ = ("export", "structured_replies", "meta_context")

    def __init__(self, export: Export, structured_replies: bool, meta_context: bool):
        self.export = export
        self.structured_replies = structured_replies
        self.meta_context = meta_context

    def __repr__(self) -> str:
        return f"Negotiated({self.export.name!r}, sr={self.structured_replies})"


class Request:
    """A validated transmission request; the shell runs it and replies.

    `data` is the payload of a WRITE (bytes, bytearray or memoryview), else None.
    `cost` is what it counted in `NbdConnection.admitted`.
    """

    __slots__ = ("cookie", "command", "flags", "offset", "length", "data", "cost")

    def __init__(self, cookie: int, command: int, flags: int, offset: int, length: int, data=None,
                 cost: int = 0):
        self.cookie = cookie
        self.command = command
        self.flags = flags
        self.offset = offset
        self.length = length
        self.data = data
        self.cost = cost

    def __repr__(self) -> str:
        return (f"Request(cookie={self.cookie:#x}, command={self.command}, flags={self.flags:#x}, "
                f"offset={self.offset}, length={self.length})")


class Close:
    """The connection must end once queued output is sent.

    `graceful` is True when the client asked for it (NBD_CMD_DISC,
    NBD_OPT_ABORT): requests in flight should still be answered first.
    """

    __slots__ = ("reason", "graceful")

    def __init__(self, reason: str, graceful: bool = False):
        self.reason = reason
        self.graceful = graceful

    def __repr__(self) -> str:
        return f"Close({self.reason!r}, graceful={self.graceful})"


Event = Union[Negotiated, Request, Close]
ExportLookup = Union[Mapping[str, Export], Callable[[str], "Export | None"]]

# --- parser states -------------------------------------------------------------------------
_S_CLIENT_FLAGS = 0
_S_OPT_HEADER = 1
_S_OPT_DATA = 2
_S_OPT_SKIP = 3
_S_REQUEST = 4
_S_PAYLOAD = 5
_S_PAYLOAD_SKIP = 6
_S_CLOSED = 7

def nbd_errno(err: int) -> int:
    """Map an OS errno to one of the values proto.md allows on the wire."""
    if err in _NBD_ERRNOS:
        return err
    return _ERRNO_MAP.get(err, EIO)


def transmission_flags(export: Export, structured_replies: bool) -> int:
    flags = TF_HAS_FLAGS
    if export.read_only:
        flags |= TF_READ_ONLY
    else:
        if export.can_fua:
            flags |= TF_SEND_FUA
        if export.can_trim:
            flags |= TF_SEND_TRIM
        if export.can_zero:
            flags |= TF_SEND_WRITE_ZEROES
            if export.can_fast_zero:
                flags |= TF_SEND_FAST_ZERO
    if export.can_flush:
        flags |= TF_SEND_FLUSH
    if export.can_cache:
        flags |= TF_SEND_CACHE
    if export.can_multi_conn:
        flags |= TF_CAN_MULTI_CONN
    if structured_replies:
        # Reads are always answered with a single data chunk, so DF is free.
        flags |= TF_SEND_DF
    return flags


class _Reader:
    """Bounds-checked big-endian reader over option data."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def u16(self) -> int | None:
        if self.remaining() < 2:
            return None
        (v,) = _U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return v

    def u32(self) -> int | None:
        if self.remaining() < 4:
            return None
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def string(self, n: int) -> str | None:
        """A proto.md string: at most 4096 bytes, UTF-8, no NUL."""
        if n > MAX_STRING or self.remaining() < n:
            return None
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        if b"\0" in raw:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None


class NbdConnection:
    """One server-side NBD connection, from greeting to close.

    `exports` maps names to exports: a Mapping (which also enables
    NBD_OPT_LIST) or a callable returning an Export or None. The empty name
    selects `default_export`.
    """

    def __init__(self, exports: ExportLookup, default_export: str | None = None, *,
                 max_payload: int | None = None):
        self._exports = exports
        # Cap on every export's advertised and enforced maximum request length.
        self._payload_cap = max_payload
        self._default = default_export
        self._out: list[bytes] = []
        self._buf = bytearray()
        self._state = _S_CLIENT_FLAGS
        self._need = 4
        self.no_zeroes = False
        self.structured_replies = False
        self.export: Export | None = None
        self.shutting_down = False
        self.closed = False
        self.close_reason = ""
        # Metadata context selected by SET_META_CONTEXT: the export it names.
        self._meta_export: Export | None = None
        self._meta_active = False
        self._opt = 0
        self._opt_len = 0
        self._skip = 0
        self._skip_then: Callable[[], None] | None = None
        self._pending: Request | None = None
        self._payload: bytearray | None = None
        self._reject_errno = 0
        self._reject_message = ""
        self._reject_close = False
        # Transmission-phase limits, fixed at negotiation.
        self._size = 0
        self._max_payload = 0
        self._min_block = 1
        self._tflags = 0
        # Admission (see the module docstring).
        self.credit = UNLIMITED
        self.overdraw = False
        self.admitted = 0
        self.blocked = False
        # Bytes of a WRITE payload received so far whose request is not complete yet.
        self.partial_size = 0
        # A request has started arriving but is not complete (a timeout may apply).
        self.mid_request = False
        self._out_bytes = 0  # option replies queued, counted in the handshake only
        self._out.append(_GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))

    # --- output -------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything queued for the client, as one buffer (may be empty)."""
        out = self._out
        if not out:
            return b""
        if len(out) == 1:
            data = out[0]
        else:
            data = b"".join(out)
        out.clear()
        self._out_bytes = 0
        return data

    def take_output(self) -> list:
        """Everything queued for the client, as the list of its pieces (may be empty).

        For a shell that writes large pieces without joining them first (a join
        would briefly hold every reply twice).
        """
        out = self._out
        self._out = []
        self._out_bytes = 0
        return out

    @property
    def in_transmission(self) -> bool:
        return self._state in (_S_REQUEST, _S_PAYLOAD, _S_PAYLOAD_SKIP)

    def begin_shutdown(self) -> None:
        """From now on, options get ERR_SHUTDOWN and requests ESHUTDOWN."""
        self.shutting_down = True

    # --- input --------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        """Consume client bytes (any split is fine) and return new events."""
        events: list[Event] = []
        if self._state == _S_CLOSED or not (data or self.blocked):
            return events
        self.blocked = False
        if self._buf:
            self._buf += data
            view = self._buf
        else:
            view = data
        end = len(view)
        pos = 0
        while pos < end and self._state != _S_CLOSED:
            state = self._state
            if state == _S_REQUEST:
                if end - pos < _REQUEST_SIZE:
                    break
                pos = self._parse_request(view, pos, end, events)
                if self.blocked:
                    break
            elif state == _S_PAYLOAD:
                payload = self._payload
                n = min(self._need - len(payload), end - pos)
                # Grows with what arrives: an announced length costs nothing until sent.
                payload += memoryview(view)[pos:pos + n]
                pos += n
                self.partial_size = len(payload)
                if len(payload) == self._need:
                    self._finish_payload(events)
            elif state == _S_PAYLOAD_SKIP or state == _S_OPT_SKIP:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                if self._skip == 0:
                    self._finish_skip(events)
            else:
                if self._out_bytes > MAX_HANDSHAKE_OUTPUT:
                    self.blocked = True
                    break
                if end - pos < self._need:
                    break
                chunk = bytes(view[pos:pos + self._need])
                pos += self._need
                self._handshake_step(chunk, events)
        # Keep only the unparsed tail (a partial header or option).
        if pos >= end or self._state == _S_CLOSED:
            if self._buf:
                self._buf = bytearray()
            partial_header = False
        else:
            if view is self._buf:
                del self._buf[:pos]
            else:
                self._buf = bytearray(view[pos:])
            partial_header = not self.blocked
        state = self._state
        self.mid_request = (state == _S_PAYLOAD or state == _S_PAYLOAD_SKIP
                            or (state == _S_REQUEST and partial_header))
        return events

    # --- handshake -------------------------------------------------------------------------
    def _handshake_step(self, chunk: bytes, events: list[Event]) -> None:
        state = self._state
        if state == _S_CLIENT_FLAGS:
            (cflags,) = _U32.unpack(chunk)
            if cflags & ~_KNOWN_CLIENT_FLAGS:
                self._close(events, f"unknown client flags {cflags:#x}")
                return
            self.no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
            self._expect_option_header()
        elif state == _S_OPT_HEADER:
            magic, opt, length = _OPT_HEADER.unpack(chunk)
            if magic != IHAVEOPT:
                self._close(events, f"bad option magic {magic:#x}")
                return
            self._opt, self._opt_len = opt, length
            if length > MAX_OPTION_DATA:
                if opt == OPT_EXPORT_NAME:
                    # No error path exists for EXPORT_NAME, and the name is invalid anyway.
                    self._close(events, "over-long NBD_OPT_EXPORT_NAME")
                    return
                self._state = _S_OPT_SKIP
                self._skip = length
                self._skip_then = self._reject_big_option
            elif length == 0:
                self._option(opt, b"", events)
            else:
                self._state = _S_OPT_DATA
                self._need = length
        elif state == _S_OPT_DATA:
            self._option(self._opt, chunk, events)

    def _expect_option_header(self) -> None:
        if self._state != _S_CLOSED:
            self._state = _S_OPT_HEADER
            self._need = _OPT_HEADER.size

    def _reject_big_option(self) -> None:
        self._opt_reply(self._opt, REP_ERR_TOO_BIG, b"option data too long")
        self._expect_option_header()

    def _opt_reply(self, opt: int, rep: int, data: bytes = b"") -> None:
        self._out_bytes += _OPT_REPLY.size + len(data)
        self._out.append(_OPT_REPLY.pack(OPT_REPLY_MAGIC, opt, rep, len(data)))
        if data:
            self._out.append(data)

    def _lookup(self, name: str) -> Export | None:
        if name == "" and self._default is not None:
            name = self._default
        exports = self._exports
        try:
            if isinstance(exports, Mapping):
                return exports.get(name)
            return exports(name)
        except Exception:
            return None

    def _option(self, opt: int, data: bytes, events: list[Event]) -> None:
        # Default next state; EXPORT_NAME/GO/ABORT override it below.
        self._state = _S_OPT_HEADER
        self._need = _OPT_HEADER.size
        if opt == OPT_EXPORT_NAME:
            self._opt_export_name(data, events)
            return
        if opt == OPT_ABORT:
            # proto.md: ACK (any data is ignored), then the client hangs up.
            self._opt_reply(opt, REP_ACK)
            self._close(events, "client sent NBD_OPT_ABORT", graceful=True)
            return
        if self.shutting_down:
            self._opt_reply(opt, REP_ERR_SHUTDOWN, b"server is shutting down")
            return
        if opt == OPT_LIST:
            self._opt_list(data)
        elif opt in (OPT_INFO, OPT_GO):
            self._opt_info_go(opt, data, events)
        elif opt == OPT_STRUCTURED_REPLY:
            if data:
                self._opt_reply(opt, REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data")
            else:
                self.structured_replies = True
                self._opt_reply(opt, REP_ACK)
        elif opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
            self._opt_meta_context(opt, data)
        else:
            self._opt_reply(opt, REP_ERR_UNSUP, b"option not supported")

    def _opt_export_name(self, data: bytes, events: list[Event]) -> None:
        name = _Reader(data).string(len(data))
        export = self._lookup(name) if name is not None else None
        if export is None or self.shutting_down:
            self._close(events, f"NBD_OPT_EXPORT_NAME for unknown export {name!r}")
            return
        self._enter_transmission(export, events)
        reply = _EXPORT_NAME_REPLY.pack(export.size, self._tflags)
        self._out.append(reply if self.no_zeroes else reply + _ZEROES_124)

    def _opt_list(self, data: bytes) -> None:
        if data:
            self._opt_reply(OPT_LIST, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
            return
        if isinstance(self._exports, Mapping):
            for name, export in self._exports.items():
                raw = name.encode()
                desc = (export.description or "").encode()
                self._opt_reply(OPT_LIST, REP_SERVER, _U32.pack(len(raw)) + raw + desc)
        self._opt_reply(OPT_LIST, REP_ACK)

    def _opt_info_go(self, opt: int, data: bytes, events: list[Event]) -> None:
        r = _Reader(data)
        namelen = r.u32()
        if namelen is None or namelen > len(data) - 6:
            self._opt_reply(opt, REP_ERR_INVALID, b"bad export name length")
            return
        name = r.string(namelen)
        nreq = r.u16()
        if name is None or nreq is None or r.remaining() != 2 * nreq:
            self._opt_reply(opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO")
            return
        requests = {r.u16() for _ in range(nreq)}
        export = self._lookup(name)
        if export is None:
            self._opt_reply(opt, REP_ERR_UNKNOWN, f"unknown export {name!r}".encode()[:MAX_STRING])
            return
        tflags = transmission_flags(export, self.structured_replies)
        self._opt_reply(opt, REP_INFO, _INFO_EXPORT.pack(INFO_EXPORT, export.size, tflags))
        if INFO_NAME in requests:
            self._opt_reply(opt, REP_INFO, _U16.pack(INFO_NAME) + export.name.encode())
        if INFO_DESCRIPTION in requests and export.description:
            self._opt_reply(opt, REP_INFO, _U16.pack(INFO_DESCRIPTION) + export.description.encode())
        self._opt_reply(opt, REP_INFO, _INFO_BLOCK_SIZE.pack(
            INFO_BLOCK_SIZE, export.min_block, export.preferred_block, self._max_payload_of(export)))
        self._opt_reply(opt, REP_ACK)
        if opt == OPT_GO:
            self._enter_transmission(export, events)

    def _opt_meta_context(self, opt: int, data: bytes) -> None:
        if opt == OPT_SET_META_CONTEXT:
            # proto.md: the previous selection is dropped even if this one fails.
            self._meta_export = None
        if not self.structured_replies:
            self._opt_reply(opt, REP_ERR_INVALID, b"negotiate structured replies first")
            return
        r = _Reader(data)
        namelen = r.u32()
        name = r.string(namelen) if namelen is not None else None
        nqueries = r.u32()
        if name is None or nqueries is None:
            self._opt_reply(opt, REP_ERR_INVALID, b"malformed meta context request")
            return
        queries = []
        for _ in range(nqueries):
            qlen = r.u32()
            query = r.string(qlen) if qlen is not None else None
            if query is None:
                self._opt_reply(opt, REP_ERR_INVALID, b"malformed meta context query")
                return
            queries.append(query)
        if r.remaining():
            self._opt_reply(opt, REP_ERR_INVALID, b"trailing data in meta context request")
            return
        export = self._lookup(name)
        if export is None:
            self._opt_reply(opt, REP_ERR_UNKNOWN, f"unknown export {name!r}".encode()[:MAX_STRING])
            return
        if opt == OPT_LIST_META_CONTEXT:
            wanted = not queries or any(q in ("base:", META_BASE_ALLOCATION) for q in queries)
            ctx_id = 0
        else:
            wanted = META_BASE_ALLOCATION in queries
            ctx_id = BASE_ALLOCATION_ID
        if wanted:
            self._opt_reply(opt, REP_META_CONTEXT, _U32.pack(ctx_id) + META_BASE_ALLOCATION.encode())
            if opt == OPT_SET_META_CONTEXT:
                self._meta_export = export
        self._opt_reply(opt, REP_ACK)

    def _enter_transmission(self, export: Export, events: list[Event]) -> None:
        self.export = export
        self._size = export.size
        self._max_payload = self._max_payload_of(export)
        self._min_block = max(1, export.min_block)
        self._tflags = transmission_flags(export, self.structured_replies)
        self._meta_active = self.structured_replies and self._meta_export is export
        self._state = _S_REQUEST
        events.append(Negotiated(export, self.structured_replies, self._meta_active))

    def _max_payload_of(self, export: Export) -> int:
        cap = self._payload_cap
        return export.max_payload if cap is None else min(export.max_payload, cap)

    def _close(self, events: list[Event], reason: str, graceful: bool = False) -> None:
        self._state = _S_CLOSED
        self.closed = True
        self.close_reason = reason
        self._payload = self._pending = None
        self.blocked = False
        self.partial_size = 0
        self.mid_request = False
        events.append(Close(reason, graceful))

    # --- transmission ----------------------------------------------------------------------
    def _parse_request(self, view, pos: int, end: int, events: list[Event]) -> int:
        magic, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(view, pos)
        if magic != REQUEST_MAGIC:
            self._close(events, f"bad request magic {magic:#x}")
            return pos + _REQUEST_SIZE
        # Admission: READ and WRITE cost their payload, everything else a fixed amount.
        cost = REQUEST_COST + length if cmd <= CMD_WRITE and length <= self._max_payload else REQUEST_COST
        if cost > self.credit and not self.overdraw:
            self.blocked = True
            return pos  # the header stays buffered until there is credit for it
        self.overdraw = False
        self.credit -= cost
        pos += _REQUEST_SIZE
        if cmd == CMD_WRITE:
            if length > DOS_LENGTH:
                self._reply_error(cookie, cmd, EINVAL, "write payload exceeds the maximum block size")
                self._close(events, f"write of {length} bytes exceeds the maximum payload")
                return pos
            err = self._check(cmd, flags, offset, length)
            message = ""
            if not err and length > self._max_payload:
                err = EINVAL
                message = f"write of {length} bytes exceeds the maximum block size {self._max_payload}"
            if err:
                if length:
                    self._skip_payload(Request(cookie, cmd, flags, offset, length), err, message)
                    return pos
                self._reply_error(cookie, cmd, err)
                return pos
            if end - pos >= length:
                # Whole payload already here: no extra buffer needed.
                if view is self._buf:
                    data = bytes(memoryview(view)[pos:pos + length])
                else:
                    data = memoryview(view)[pos:pos + length]
                self.admitted += cost
                events.append(Request(cookie, cmd, flags, offset, length, data, cost))
                return pos + length
            self._pending = Request(cookie, cmd, flags, offset, length, None, cost)
            self._payload = bytearray()
            self._need = length
            self._state = _S_PAYLOAD
            return pos
        if cmd == CMD_DISC:
            self._close(events, "client sent NBD_CMD_DISC", graceful=True)
            return pos
        err = self._check(cmd, flags, offset, length)
        if err:
            self._reply_error(cookie, cmd, err)
        else:
            self.admitted += cost
            events.append(Request(cookie, cmd, flags, offset, length, None, cost))
        return pos

    def _skip_payload(self, req: Request, err: int, message: str) -> None:
        """Read and drop the payload of a refused WRITE, then answer it."""
        self._state = _S_PAYLOAD_SKIP
        self._skip = req.length
        self._skip_then = None
        self._pending = req
        self._reject_errno = err
        self._reject_message = message

    def _finish_payload(self, events: list[Event]) -> None:
        req = self._pending
        req.data = self._payload
        self.admitted += req.cost
        self._pending = self._payload = None
        self.partial_size = 0
        self._state = _S_REQUEST
        events.append(req)

    def _finish_skip(self, events: list[Event]) -> None:
        if self._state == _S_OPT_SKIP:
            then, self._skip_then = self._skip_then, None
            then()
            return
        req, self._pending = self._pending, None
        self._state = _S_REQUEST
        self._reply_error(req.cookie, req.command, self._reject_errno, self._reject_message)

    def _check(self, cmd: int, flags: int, offset: int, length: int) -> int:
        """Return the NBD errno a request must be rejected with, or 0."""
        tf = self._tflags
        if cmd == CMD_READ:
            allowed = CMD_FLAG_DF if tf & TF_SEND_DF else 0
        elif cmd == CMD_WRITE or cmd == CMD_FLUSH:
            allowed = 0
        elif cmd == CMD_TRIM:
            if not tf & TF_SEND_TRIM:
                return EPERM if tf & TF_READ_ONLY else EINVAL
            allowed = 0
        elif cmd == CMD_WRITE_ZEROES:
            if not tf & TF_SEND_WRITE_ZEROES:
                return EPERM if tf & TF_READ_ONLY else EINVAL
            allowed = CMD_FLAG_NO_HOLE
            if tf & TF_SEND_FAST_ZERO:
                allowed |= CMD_FLAG_FAST_ZERO
        elif cmd == CMD_CACHE:
            if not tf & TF_SEND_CACHE:
                return EINVAL
            allowed = 0
        elif cmd == CMD_BLOCK_STATUS:
            if not self._meta_active:
                return EINVAL
            allowed = CMD_FLAG_REQ_ONE
        else:
            return EINVAL
        # FUA is valid on every command once advertised (proto.md).
        if tf & TF_SEND_FUA:
            allowed |= CMD_FLAG_FUA
        if flags & ~allowed:
            return EINVAL
        if cmd == CMD_FLUSH:
            if not tf & TF_SEND_FLUSH or offset or length:
                return EINVAL
        else:
            if cmd == CMD_WRITE and tf & TF_READ_ONLY:
                return EPERM
            if length == 0:
                return EINVAL
            if offset + length > self._size:
                return ENOSPC if cmd == CMD_WRITE or cmd == CMD_WRITE_ZEROES else EINVAL
            if cmd == CMD_READ and length > self._max_payload:
                return EINVAL
            mb = self._min_block
            if mb > 1 and (offset % mb or length % mb):
                return EINVAL
        if self.shutting_down:
            return ESHUTDOWN
        return 0

    # --- replies -----------------------------------------------------------------------------
    def _reply_error(self, cookie: int, cmd: int, err: int, message: str = "") -> None:
        export = self.export
        if export is not None:
            export.counters.errors += 1
        if self.structured_replies:
            msg = message.encode()[:MAX_STRING]
            self._out.append(_CHUNK_ERROR.pack(
                STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie,
                6 + len(msg), err, len(msg)))
            if msg:
                self._out.append(msg)
        else:
            self._out.append(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, err, cookie))

    def _require_transmission(self) -> None:
        if self.export is None:
            raise ProtocolError("reply before the handshake chose an export")

    def reply_ok(self, req: Request) -> None:
        """Success for any command without reply data."""
        if self.export is None:
            self._require_transmission()
        self._out.append(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, req.cookie))

    def reply_error(self, req: Request, err: int, message: str = "") -> None:
        """Failure of a request; `err` may be any OS errno, it is mapped for the wire."""
        self._require_transmission()
        self._reply_error(req.cookie, req.command, nbd_errno(err) or EIO, message)

    def reply_read(self, req: Request, data) -> None:
        """Successful READ: `data` must be exactly `req.length` bytes."""
        if self.export is None:
            self._require_transmission()
        if len(data) != req.length:
            self._reply_error(req.cookie, req.command, EIO, "short read from export")
            return
        if self.structured_replies:
            self._out.append(_CHUNK_OFFSET_DATA.pack(
                STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, req.cookie,
                8 + req.length, req.offset))
        else:
            self._out.append(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, req.cookie))
        self._out.append(data)

    def reply_block_status(self, req: Request, extents: Iterable[tuple[int, int]]) -> None:
        """Successful BLOCK_STATUS for base:allocation.

        Extents come from the export starting at `req.offset`; they are
        merged, clipped to the request and capped so the reply is always
        valid, whatever the export returned.
        """
        if not self._meta_active:
            raise ProtocolError("block status reply without a negotiated metadata context")
        remaining = req.length
        one = req.flags & CMD_FLAG_REQ_ONE
        out: list[list[int]] = []
        for length, flags in extents:
            if remaining <= 0:
                break
            if length <= 0:
                continue
            length = min(length, remaining)
            flags &= 0xFFFFFFFF
            if out and out[-1][1] == flags:
                out[-1][0] += length
            else:
                if len(out) == MAX_EXTENTS:
                    break
                out.append([length, flags])
            remaining -= length
            if one:
                break
        if not out:
            out.append([req.length, 0])
        if one:
            del out[1:]
        payload = [_U32.pack(BASE_ALLOCATION_ID)]
        payload.extend(_EXTENT.pack(length, flags) for length, flags in out)
        body = b"".join(payload)
        self._out.append(_CHUNK.pack(
            STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, req.cookie, len(body)))
        self._out.append(body)
