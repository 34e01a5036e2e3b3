"""The server side of the NBD handshake (fixed newstyle) as a sans-I/O state machine.

Bytes from the client go in through `feed()`, which returns events
(`Negotiated` when the client has chosen an export, `Close` when the
connection must end); bytes for the client come out of `data_to_send()`.
wire.py has the layouts. The states, in the order a client walks them:

    CLIENT_FLAGS    4 bytes: the client's flags (unknown bits close the connection)
    OPTION_HEADER   16 bytes: IHAVEOPT, option, data length
    OPTION_DATA     the option's data, then its replies; back to OPTION_HEADER
    OPTION_SKIP     the data of an over-long option, counted off and dropped,
                    then ERR_TOO_BIG; back to OPTION_HEADER
    DONE            NBD_OPT_GO or NBD_OPT_EXPORT_NAME chose `export`; the bytes
                    the client sent after it are in `rest` (its first requests)
    CLOSED          NBD_OPT_ABORT, a bad magic, an unknown export for EXPORT_NAME

What the client chose along the way (structured replies, the metadata
context of SET_META_CONTEXT, NO_ZEROES) is kept here and handed on with
`Negotiated`. Memory stays bounded whatever the client sends: option data is
stored only up to MAX_OPTION_DATA (a longer option is skipped), and while
more than MAX_HANDSHAKE_OUTPUT bytes of replies wait to be taken (a LIST
names every export) parsing stops (`blocked`) and the rest of the input
stays buffered until the caller takes the output and calls `feed(b"")`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

from .base import Export
from .wire import (
    BASE_ALLOCATION_ID, EXPORT_NAME_REPLY, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
    GREETING, IHAVEOPT, INFO_BLOCK_SIZE, INFO_BLOCK_SIZE_REPLY, INFO_DESCRIPTION, INFO_EXPORT,
    INFO_EXPORT_REPLY, INFO_NAME, KNOWN_CLIENT_FLAGS, MAX_STRING, META_BASE_ALLOCATION, NBDMAGIC,
    OPTION_HEADER, OPTION_REPLY, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
    OPT_LIST_META_CONTEXT, OPT_REPLY_MAGIC, OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY,
    OptionReader, REP_ACK, REP_ERR_INVALID, REP_ERR_SHUTDOWN, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN,
    REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER, U16, U32, ZEROES_124, transmission_flags,
)

# Option payloads are tiny in practice; anything bigger is skipped, not stored.
MAX_OPTION_DATA = 64 * 1024
# Past this much unsent reply data, the next option waits (`blocked`).
MAX_HANDSHAKE_OUTPUT = 64 * 1024

_CLIENT_FLAGS = 0
_OPTION_HEADER = 1
_OPTION_DATA = 2
_OPTION_SKIP = 3
_DONE = 4
_CLOSED = 5


class Negotiated:
    """The handshake is over; transmission on `export` starts."""

    __slots__ = ("export", "structured_replies", "meta_context")

    def __init__(self, export: Export, structured_replies: bool, meta_context: bool):
        self.export = export
        self.structured_replies = structured_replies
        self.meta_context = meta_context

    def __repr__(self) -> str:
        return f"Negotiated({self.export.name!r}, sr={self.structured_replies})"


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


ExportLookup = Union[Mapping[str, Export], Callable[[str], "Export | None"]]


class Handshake:
    """One connection's handshake, from the greeting (queued at construction) to GO.

    `exports` maps names to exports: a Mapping (which also enables
    NBD_OPT_LIST) or a callable returning an Export or None. The empty name
    selects `default_export`. `max_payload` caps every export's maximum
    request length (advertised with NBD_INFO_BLOCK_SIZE).
    """

    def __init__(self, exports: ExportLookup, default_export: str | None = None, *,
                 max_payload: int | None = None):
        self._exports = exports
        self._default = default_export
        self._payload_cap = max_payload
        self._out: list[bytes] = [GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)]
        self._out_bytes = 0  # option replies not yet taken
        self._buf = bytearray()
        self._state = _CLIENT_FLAGS
        self._need = 4
        self._opt = 0
        self._skip = 0
        self.no_zeroes = False
        self.structured_replies = False
        # The export SET_META_CONTEXT named; base:allocation is active if it is the one chosen.
        self._meta_export: Export | None = None
        self.shutting_down = False
        self.blocked = False
        self.export: Export | None = None
        self.rest = b""
        self.closed = False
        self.close_reason = ""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def buffered(self) -> int:
        """Input bytes held, not yet parsed."""
        return len(self._buf)

    def max_payload_of(self, export: Export) -> int:
        cap = self._payload_cap
        return export.max_payload if cap is None else min(export.max_payload, cap)

    # --- output -------------------------------------------------------------------------
    def take_output(self) -> list:
        out = self._out
        self._out = []
        self._out_bytes = 0
        return out

    def data_to_send(self) -> bytes:
        return b"".join(self.take_output())

    # --- input --------------------------------------------------------------------------
    def feed(self, data) -> list:
        """Consume client bytes (any split is fine) and return new events."""
        events: list = []
        if self._state >= _DONE or not (data or self.blocked):
            return events
        self.blocked = False
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while pos < end and self._state < _DONE:
            if self._state == _OPTION_SKIP:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                if not self._skip:
                    self._opt_reply(self._opt, REP_ERR_TOO_BIG, b"option data too long")
                    self._expect_option_header()
                continue
            if self._out_bytes > MAX_HANDSHAKE_OUTPUT:
                self.blocked = True
                break
            need = self._need
            if end - pos < need:
                break
            chunk = bytes(buf[pos:pos + need])
            pos += need
            self._step(chunk, events)
        if self._state == _DONE:
            self.rest = bytes(buf[pos:])
            self._buf = bytearray()
        elif self._state == _CLOSED:
            self._buf = bytearray()
        else:
            del buf[:pos]
        return events

    def _step(self, chunk: bytes, events: list) -> None:
        state = self._state
        if state == _CLIENT_FLAGS:
            (cflags,) = U32.unpack(chunk)
            if cflags & ~KNOWN_CLIENT_FLAGS:
                self._close(events, f"unknown client flags {cflags:#x}")
                return
            self.no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
            self._expect_option_header()
        elif state == _OPTION_HEADER:
            magic, opt, length = OPTION_HEADER.unpack(chunk)
            if magic != IHAVEOPT:
                self._close(events, f"bad option magic {magic:#x}")
                return
            self._opt = opt
            if length > MAX_OPTION_DATA:
                if opt == OPT_EXPORT_NAME:
                    # No error path exists for EXPORT_NAME, and the name is invalid anyway.
                    self._close(events, "over-long NBD_OPT_EXPORT_NAME")
                    return
                self._state = _OPTION_SKIP
                self._skip = length
            elif length == 0:
                self._option(opt, b"", events)
            else:
                self._state = _OPTION_DATA
                self._need = length
        else:
            self._option(self._opt, chunk, events)

    def _expect_option_header(self) -> None:
        self._state = _OPTION_HEADER
        self._need = OPTION_HEADER.size

    def _close(self, events: list, reason: str, graceful: bool = False) -> None:
        self._state = _CLOSED
        self.closed = True
        self.close_reason = reason
        events.append(Close(reason, graceful))

    def _opt_reply(self, opt: int, rep: int, data: bytes = b"") -> None:
        self._out_bytes += OPTION_REPLY.size + len(data)
        self._out.append(OPTION_REPLY.pack(OPT_REPLY_MAGIC, opt, rep, len(data)))
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

    # --- options ------------------------------------------------------------------------
    def _option(self, opt: int, data: bytes, events: list) -> None:
        # Default next state; EXPORT_NAME/GO/ABORT override it below.
        self._expect_option_header()
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

    def _opt_export_name(self, data: bytes, events: list) -> None:
        name = OptionReader(data).string(len(data))
        export = self._lookup(name) if name is not None else None
        if export is None or self.shutting_down:
            self._close(events, f"NBD_OPT_EXPORT_NAME for unknown export {name!r}")
            return
        reply = EXPORT_NAME_REPLY.pack(export.size, transmission_flags(export, self.structured_replies))
        self._out.append(reply if self.no_zeroes else reply + ZEROES_124)
        self._negotiated(export, events)

    def _opt_list(self, data: bytes) -> None:
        if data:
            self._opt_reply(OPT_LIST, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
            return
        if isinstance(self._exports, Mapping):
            for name, export in self._exports.items():
                raw = name.encode()
                desc = (export.description or "").encode()
                self._opt_reply(OPT_LIST, REP_SERVER, U32.pack(len(raw)) + raw + desc)
        self._opt_reply(OPT_LIST, REP_ACK)

    def _opt_info_go(self, opt: int, data: bytes, events: list) -> None:
        r = OptionReader(data)
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
        self._opt_reply(opt, REP_INFO, INFO_EXPORT_REPLY.pack(INFO_EXPORT, export.size, tflags))
        if INFO_NAME in requests:
            self._opt_reply(opt, REP_INFO, U16.pack(INFO_NAME) + export.name.encode())
        if INFO_DESCRIPTION in requests and export.description:
            self._opt_reply(opt, REP_INFO, U16.pack(INFO_DESCRIPTION) + export.description.encode())
        # Sent even when not asked for: it is how a client learns the maximum request length.
        self._opt_reply(opt, REP_INFO, INFO_BLOCK_SIZE_REPLY.pack(
            INFO_BLOCK_SIZE, export.min_block, export.preferred_block, self.max_payload_of(export)))
        self._opt_reply(opt, REP_ACK)
        if opt == OPT_GO:
            self._negotiated(export, events)

    def _opt_meta_context(self, opt: int, data: bytes) -> None:
        if opt == OPT_SET_META_CONTEXT:
            # proto.md: the previous selection is dropped even if this one fails.
            self._meta_export = None
        if not self.structured_replies:
            self._opt_reply(opt, REP_ERR_INVALID, b"negotiate structured replies first")
            return
        r = OptionReader(data)
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
            self._opt_reply(opt, REP_META_CONTEXT, U32.pack(ctx_id) + META_BASE_ALLOCATION.encode())
            if opt == OPT_SET_META_CONTEXT:
                self._meta_export = export
        self._opt_reply(opt, REP_ACK)

    def _negotiated(self, export: Export, events: list) -> None:
        self.export = export
        self._state = _DONE
        events.append(Negotiated(export, self.structured_replies,
                                 self.structured_replies and self._meta_export is export))
