"""One server-side NBD connection as a sans-I/O state machine: bytes in, events out.

`NbdConnection` knows nothing about sockets or event loops: bytes from the
client go in through `feed()`, which returns events (`Negotiated`,
`Request`, `Close`); bytes for the client come out of `data_to_send()` or
`take_output()`. It runs the handshake (handshake.py) until the client picks
an export, then parses the transmission phase itself:

    REQUEST         28-byte request headers (wire.py); a bad magic closes
    PAYLOAD         the payload of a WRITE, collected as it arrives
    PAYLOAD_SKIP    the payload of a refused WRITE, counted off and dropped,
                    then the error reply
    CLOSED          NBD_CMD_DISC, a bad magic, a WRITE longer than 2^25

Everything that can be decided without looking at the export's data (option
replies, request validation, error replies) is done here, so the I/O shell
only has to run the `Request`s it is handed and report the outcome through
the `reply_*` methods.

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
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from .base import Export
from .handshake import Close, ExportLookup, Handshake, Negotiated
from .wire import (
    CHUNK_OFFSET_DATA, CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FAST_ZERO,
    CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE,
    CMD_WRITE_ZEROES, DOS_LENGTH, EINVAL, EIO, ENOSPC, EPERM, ESHUTDOWN, MAX_EXTENTS,
    REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, REQUEST_HEADER, REQUEST_MAGIC, SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, TF_READ_ONLY, TF_SEND_CACHE, TF_SEND_DF,
    TF_SEND_FAST_ZERO, TF_SEND_FLUSH, TF_SEND_FUA, TF_SEND_TRIM, TF_SEND_WRITE_ZEROES,
    block_status_reply, error_reply, nbd_errno, transmission_flags,
)

__all__ = ["NbdConnection", "Request", "Negotiated", "Close", "ProtocolError", "REQUEST_COST", "UNLIMITED"]

# What a request costs besides its payload (the Request object queued in the
# shell, its reply header, a task's share): a flood of zero-length requests is
# then bounded by the same credit as data.
REQUEST_COST = 512
# No credit limit: a core driven without a shell that accounts (tests, tools).
UNLIMITED = 1 << 62

_REQUEST_SIZE = REQUEST_HEADER.size

_S_HANDSHAKE = 0
_S_REQUEST = 4
_S_PAYLOAD = 5
_S_PAYLOAD_SKIP = 6
_S_CLOSED = 7


class ProtocolError(Exception):
    """Misuse of the state machine by its caller (not by the peer).

    A misbehaving peer never raises: it gets error replies or a `Close`.
    """


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


Event = Union[Negotiated, Request, Close]


class NbdConnection:
    """One server-side NBD connection, from greeting to close.

    `exports` maps names to exports: a Mapping (which also enables
    NBD_OPT_LIST) or a callable returning an Export or None. The empty name
    selects `default_export`. `max_payload` caps every export's advertised and
    enforced maximum request length.
    """

    def __init__(self, exports: ExportLookup, default_export: str | None = None, *,
                 max_payload: int | None = None):
        # None once the client has chosen an export
        self._handshake: Handshake | None = Handshake(exports, default_export, max_payload=max_payload)
        self._out: list = []
        self._buf = bytearray()
        self._state = _S_HANDSHAKE
        self._need = 0
        self.no_zeroes = False
        self.structured_replies = False
        self.export: Export | None = None
        self.shutting_down = False
        self.closed = False
        self.close_reason = ""
        self._meta_active = False
        self._skip = 0
        self._pending: Request | None = None
        self._payload: bytearray | None = None
        self._reject_errno = 0
        self._reject_message = ""
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

    # --- output -------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Everything queued for the client, as one buffer (may be empty)."""
        out = self.take_output()
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def take_output(self) -> list:
        """Everything queued for the client, as the list of its pieces (may be empty).

        For a shell that writes large pieces without joining them first (a join
        would briefly hold every reply twice).
        """
        if self._handshake is not None:
            return self._handshake.take_output()
        out = self._out
        self._out = []
        return out

    @property
    def in_transmission(self) -> bool:
        return self._state in (_S_REQUEST, _S_PAYLOAD, _S_PAYLOAD_SKIP)

    @property
    def buffered(self) -> int:
        """Input bytes held, not yet parsed (a partial header, or input waiting for credit)."""
        if self._handshake is not None:
            return self._handshake.buffered
        return len(self._buf)

    def begin_shutdown(self) -> None:
        """From now on, options get ERR_SHUTDOWN and requests ESHUTDOWN."""
        self.shutting_down = True
        if self._handshake is not None:
            self._handshake.shutting_down = True

    # --- input --------------------------------------------------------------------------
    def feed(self, data) -> list[Event]:
        """Consume client bytes (any split is fine) and return new events."""
        if self._state == _S_HANDSHAKE:
            return self._feed_handshake(data)
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
            else:  # _S_PAYLOAD_SKIP
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                if self._skip == 0:
                    self._finish_skip()
        # Keep only the unparsed tail (a partial header).
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

    def _feed_handshake(self, data) -> list[Event]:
        hs = self._handshake
        events = hs.feed(data)
        self.blocked = hs.blocked
        self.structured_replies = hs.structured_replies
        if hs.closed:
            self._state = _S_CLOSED
            self.closed = True
            self.close_reason = hs.close_reason
            self._out = hs.take_output()
            self._handshake = None
        elif hs.done:
            self._enter_transmission(hs, events[-1])
            if hs.rest:
                events += self.feed(hs.rest)
        return events

    def _enter_transmission(self, hs: Handshake, ev: Negotiated) -> None:
        export = ev.export
        self.export = export
        self.no_zeroes = hs.no_zeroes
        self._out = hs.take_output()  # the last option replies go out before any request's
        self._handshake = None
        self._size = export.size
        self._max_payload = hs.max_payload_of(export)
        self._min_block = max(1, export.min_block)
        self._tflags = transmission_flags(export, self.structured_replies)
        self._meta_active = ev.meta_context
        self._state = _S_REQUEST

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
        magic, flags, cmd, cookie, offset, length = REQUEST_HEADER.unpack_from(view, pos)
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

    def _finish_skip(self) -> None:
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
        self._out.append(error_reply(self.structured_replies, cookie, err, message))

    def _require_transmission(self) -> None:
        if self.export is None:
            raise ProtocolError("reply before the handshake chose an export")

    def reply_ok(self, req: Request) -> None:
        """Success for any command without reply data."""
        if self.export is None:
            self._require_transmission()
        self._out.append(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, req.cookie))

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
            self._out.append(CHUNK_OFFSET_DATA.pack(
                STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, req.cookie,
                8 + req.length, req.offset))
        else:
            self._out.append(SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, req.cookie))
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
        self._out.append(block_status_reply(req.cookie, out))
