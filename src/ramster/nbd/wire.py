"""The NBD wire format (NetworkBlockDevice/nbd doc/proto.md): numbers, layouts, packing.

A connection has two phases, both big-endian:

Handshake (fixed newstyle). The server sends the greeting
    u64 NBDMAGIC, u64 IHAVEOPT, u16 handshake flags
and the client its u32 flags. Then options, each
    u64 IHAVEOPT, u32 option, u32 length, length bytes of data
answered by zero or more option replies
    u64 OPT_REPLY_MAGIC, u32 option, u32 reply type, u32 length, data
the last of them an ACK or an error. NBD_OPT_GO (or the old
NBD_OPT_EXPORT_NAME, answered by u64 size, u16 transmission flags and, unless
NO_ZEROES was agreed, 124 zero bytes) ends the handshake. NBD_INFO_BLOCK_SIZE
(u16 type, u32 minimum, u32 preferred, u32 maximum) is how the server says
how long a request may be.

Transmission. Requests are
    u32 REQUEST_MAGIC, u16 command flags, u16 command, u64 cookie, u64 offset, u32 length
followed, for a WRITE, by `length` bytes. A simple reply is
    u32 SIMPLE_REPLY_MAGIC, u32 error, u64 cookie   (+ the data of a successful READ)
and, once structured replies are negotiated, a reply is one or more chunks
    u32 STRUCTURED_REPLY_MAGIC, u16 flags, u16 type, u64 cookie, u32 length, payload
where this server always sends one chunk (flag DONE): OFFSET_DATA
(u64 offset, data), ERROR (u32 error, u16 message length, message) or
BLOCK_STATUS (u32 context id, then (u32 length, u32 flags) extents).

Errors on the wire are a fixed set of Linux errno values; `nbd_errno` maps
the rest.
"""
from __future__ import annotations

import errno as _errno
import struct

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
KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

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
NBD_ERRNOS = {EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN}
ERRNO_MAP = {
    _errno.EROFS: EPERM,
    _errno.EACCES: EPERM,
    _errno.EDQUOT: ENOSPC,
    _errno.EFBIG: ENOSPC,
    _errno.EOPNOTSUPP: ENOTSUP,
}

META_BASE_ALLOCATION = "base:allocation"
# Any nonzero id will do; proto.md makes ids opaque to the client.
BASE_ALLOCATION_ID = 1

# Cap on descriptors in one BLOCK_STATUS chunk (proto.md lets us return fewer).
MAX_EXTENTS = 8192
MAX_STRING = 4096
# proto.md: a payload shorter than 2^25 bytes SHOULD NOT be treated as a denial of
# service even above the advertised maximum, so such an over-long WRITE is
# skipped (read and dropped) and refused; a longer one may be, and is, answered
# EINVAL and followed by a hang-up rather than read for up to 4 GiB.
DOS_LENGTH = 1 << 25

# --- layouts -----------------------------------------------------------------------------
GREETING = struct.Struct(">QQH")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")
OPTION_REPLY = struct.Struct(">QIII")
EXPORT_NAME_REPLY = struct.Struct(">QH")
INFO_EXPORT_REPLY = struct.Struct(">HQH")
INFO_BLOCK_SIZE_REPLY = struct.Struct(">HIII")
REQUEST_HEADER = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")
CHUNK_HEADER = struct.Struct(">IHHQI")
CHUNK_OFFSET_DATA = struct.Struct(">IHHQIQ")
CHUNK_ERROR = struct.Struct(">IHHQIIH")
EXTENT = struct.Struct(">II")
ZEROES_124 = bytes(124)


def nbd_errno(err: int) -> int:
    """Map an OS errno to one of the values proto.md allows on the wire."""
    if err in NBD_ERRNOS:
        return err
    return ERRNO_MAP.get(err, EIO)


def transmission_flags(export, structured_replies: bool) -> int:
    """The u16 transmission flags of an export (its capability attributes, base.Export)."""
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


def option_reply(opt: int, rep: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPT_REPLY_MAGIC, opt, rep, len(data)) + data


def error_reply(structured: bool, cookie: int, err: int, message: str = "") -> bytes:
    """A request's failure: an ERROR chunk carrying the message, or a simple reply."""
    if not structured:
        return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, err, cookie)
    msg = message.encode()[:MAX_STRING]
    return CHUNK_ERROR.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie,
                            6 + len(msg), err, len(msg)) + msg


def block_status_reply(cookie: int, extents) -> bytes:
    """A BLOCK_STATUS chunk for base:allocation from (length, flags) pairs."""
    body = [U32.pack(BASE_ALLOCATION_ID)]
    body.extend(EXTENT.pack(length, flags) for length, flags in extents)
    payload = b"".join(body)
    return CHUNK_HEADER.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie,
                             len(payload)) + payload


class OptionReader:
    """Bounds-checked reader over option data: None where the data runs short or is invalid."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def u16(self) -> int | None:
        if self.remaining() < 2:
            return None
        (v,) = U16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return v

    def u32(self) -> int | None:
        if self.remaining() < 4:
            return None
        (v,) = U32.unpack_from(self.buf, self.pos)
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
