"""RAMster peer protocol: a sans-I/O codec in the spirit of r2net (SPEC §5.8).

Every message is a 16-byte big-endian header followed by its payload:

    magic u16 | version u8 | type u8 | status i32 | msg_id u32 | length u32

The seed sent its xhandle in native struct layout; here every field has an
explicit big-endian encoding so that nodes of any architecture agree.

`Decoder.feed()` accepts any split of the byte stream and returns whole
messages. A header is validated (magic, version, length against the cap of
its type) as soon as its 16 bytes are in, before the payload is waited for,
and every count or length inside a payload is checked against both its cap
and the bytes actually present before anything is sliced, so a hostile peer
cannot make the decoder hold more than one capped message. Anything that
breaks framing raises `WireError`; the connection answers that by closing.
A well-framed message of a type this node does not know decodes to
`Unknown`, which the connection answers with an `ErrorReply`, not a close.

The messages (type number: body, all big-endian, oids as 24 bytes):

    handshake (ramster.remote.session)
      1 Hello       version u16, node u8, nonce[32], boot id u64, cluster name, compressor name
      2 Auth        Ed25519 signature[64] over the handshake transcript
      3 Welcome     (empty)
    requests -> replies; every reply carries the sender's free page frames
     10 PutPages    pool u16, persistent u8, count u16, count x (oid, index u32,
                    checksum u64, length u16, data)                   -> 11 PutReply (status per page)
     12 Get         pool, persistent, oid, index, free u8            -> 13 GetReply (found, checksum, data)
     14 FlushPage   pool, persistent, oid, index                     -> 17 Ack
     15 FlushObject pool, persistent, oid                            -> 17 Ack
     16 DestroyPool pool, persistent                                 -> 17 Ack
     20 Keepalive   (empty)                                          -> 21 KeepaliveReply
      any request may instead be answered by 30 ErrorReply (negative errno in the header's
      status, a bounded UTF-8 message)

A page travels as zcache stores it (a zbud payload of at most 4000 bytes,
or a whole page that did not compress), never recompressed on the way; the
checksum lets the receiver of a Get tell a page that was damaged on a peer
from the one it sent. Encoding, decoding and each type's size cap are kept
in this one file, a little over 500 lines, because they must change
together: a field added to one and not the others is exactly the bug a
hostile peer would find.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

from ..units import PAGE_SIZE

MAGIC = 0x7A52  # "zR"
# 2: Hello carries the compressor, Auth an Ed25519 signature instead of an HMAC, Welcome ends the handshake
VERSION = 2
HEADER = struct.Struct(">HBBiII")
HEADER_SIZE = HEADER.size  # 16

# a zbud payload (at most 4000 bytes) or a huge page (exactly PAGE_SIZE, sent as it is)
MAX_PAGE_DATA = PAGE_SIZE
MAX_PAGES = 64  # pages in one PutPages (and statuses in one PutReply)
MAX_PAYLOAD = 512 * 1024  # no message body may be longer, whatever its type
MAX_CLUSTER_NAME = 64  # bytes of UTF-8, as R2NM_MAX_NAME_LEN
MAX_ERROR_MESSAGE = 1024
MAX_NODE_NUMBER = 15  # node numbers double as tmem client ids (< MAX_CLIENTS)
NONCE_SIZE = 32
SIGNATURE_SIZE = 64  # Ed25519
MAX_COMPRESSOR_NAME = 16  # bytes of ASCII: "lz4", "zstd", ...
OID_BITS = 192
FLUSH_ENTIRE_OBJECT = 0xFFFFFFFF

# Status values carried in the header (negative errno, as the seed's r2net did).
OK = 0
ENOENT = -2
EIO = -5
ENOMEM = -12
EINVAL = -22
ENOPROTOOPT = -92  # r2net's R2NET_ERR_NO_HNDLR: nobody handles this type
EOVERFLOW = -75
ENOTCONN = -107
ETIMEDOUT = -110
EHOSTDOWN = -112


class WireError(ValueError):
    """The byte stream (or a message given to `encode`) breaks the protocol."""


# --- messages --------------------------------------------------------------------
# `msg_id` pairs a reply with its request; `status` is the header's i32.
def _meta():
    return field(default=0, kw_only=True)


@dataclass(slots=True)
class Hello:
    version: int
    cluster: str
    node_number: int
    nonce: bytes
    boot_id: int  # random per process start: a new one means the peer lost its pages
    compressor: str  # the codec of every page this node sends: peers must use the same
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class Auth:
    signature: bytes  # over the handshake transcript (ramster.remote.session)
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class Welcome:
    """The peer's Auth checked out and its settings fit: the connection may carry requests."""

    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class PutPage:
    oid: int
    index: int
    checksum: int
    data: bytes


@dataclass(slots=True)
class PutPages:
    pool_id: int
    persistent: bool
    pages: list[PutPage]
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class PutReply:
    statuses: list[int]  # one per page of the request, 0 = stored
    free_frames: int
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class Get:
    pool_id: int
    persistent: bool
    oid: int
    index: int
    free: bool  # get-and-free: the server drops its copy once read
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class GetReply:
    found: bool
    checksum: int
    data: bytes
    free_frames: int
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class FlushPage:
    pool_id: int
    persistent: bool
    oid: int
    index: int
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class FlushObject:
    pool_id: int
    persistent: bool
    oid: int
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class DestroyPool:
    pool_id: int
    persistent: bool
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class Ack:
    free_frames: int
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class Keepalive:
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class KeepaliveReply:
    free_frames: int
    msg_id: int = _meta()
    status: int = _meta()


@dataclass(slots=True)
class ErrorReply:
    """A request failed or was not understood; `status` is a negative errno."""

    status: int = EINVAL
    message: str = ""
    msg_id: int = _meta()


@dataclass(slots=True)
class Unknown:
    """A well-framed message of a type this version does not know (payload skipped)."""

    type: int
    msg_id: int = _meta()
    status: int = _meta()


Message = Union[Hello, Auth, Welcome, PutPages, PutReply, Get, GetReply, FlushPage, FlushObject,
                DestroyPool, Ack, Keepalive, KeepaliveReply, ErrorReply, Unknown]

T_HELLO = 1
T_AUTH = 2
T_WELCOME = 3
T_PUT_PAGES = 10
T_PUT_REPLY = 11
T_GET = 12
T_GET_REPLY = 13
T_FLUSH_PAGE = 14
T_FLUSH_OBJECT = 15
T_DESTROY_POOL = 16
T_ACK = 17
T_KEEPALIVE = 20
T_KEEPALIVE_REPLY = 21
T_ERROR_REPLY = 30

TYPE_OF = {
    Hello: T_HELLO, Auth: T_AUTH, Welcome: T_WELCOME, PutPages: T_PUT_PAGES, PutReply: T_PUT_REPLY, Get: T_GET,
    GetReply: T_GET_REPLY, FlushPage: T_FLUSH_PAGE, FlushObject: T_FLUSH_OBJECT,
    DestroyPool: T_DESTROY_POOL, Ack: T_ACK, Keepalive: T_KEEPALIVE,
    KeepaliveReply: T_KEEPALIVE_REPLY, ErrorReply: T_ERROR_REPLY,
}

# The reply each request expects; ErrorReply may answer any of them.
REPLY_TO = {
    PutPages: PutReply, Get: GetReply, FlushPage: Ack, FlushObject: Ack, DestroyPool: Ack,
    Keepalive: KeepaliveReply,
}
REQUESTS = tuple(REPLY_TO)
REPLIES = (PutReply, GetReply, Ack, KeepaliveReply, ErrorReply)

# Longest valid body of each type; checked against the header before reading it.
_PAGE_HEAD = struct.Struct(">24sIQH")  # oid, index, checksum, data length
_PUT_HEAD = struct.Struct(">HBH")  # pool, persistent, page count
_GET = struct.Struct(">HB24sIB")
_GET_REPLY_HEAD = struct.Struct(">BQQH")  # found, checksum, free_frames, data length
_FLUSH_PAGE = struct.Struct(">HB24sI")
_FLUSH_OBJECT = struct.Struct(">HB24s")
_POOL = struct.Struct(">HB")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_HELLO_HEAD = struct.Struct(">HB32sQHB")  # version, node, nonce, boot id, name length, compressor length

MAX_BODY = {
    T_HELLO: _HELLO_HEAD.size + MAX_CLUSTER_NAME + MAX_COMPRESSOR_NAME,
    T_AUTH: SIGNATURE_SIZE,
    T_WELCOME: 0,
    T_PUT_PAGES: _PUT_HEAD.size + MAX_PAGES * (_PAGE_HEAD.size + MAX_PAGE_DATA),
    T_PUT_REPLY: _U16.size + MAX_PAGES * _I32.size + _U64.size,
    T_GET: _GET.size,
    T_GET_REPLY: _GET_REPLY_HEAD.size + MAX_PAGE_DATA,
    T_FLUSH_PAGE: _FLUSH_PAGE.size,
    T_FLUSH_OBJECT: _FLUSH_OBJECT.size,
    T_DESTROY_POOL: _POOL.size,
    T_ACK: _U64.size,
    T_KEEPALIVE: 0,
    T_KEEPALIVE_REPLY: _U64.size,
    T_ERROR_REPLY: _U16.size + MAX_ERROR_MESSAGE,
}
assert max(MAX_BODY.values()) <= MAX_PAYLOAD


# --- encoding ----------------------------------------------------------------------
def _oid(oid: int) -> bytes:
    if not 0 <= oid < 1 << OID_BITS:
        raise WireError(f"oid {oid} does not fit in {OID_BITS} bits")
    return oid.to_bytes(24, "big")


def _data(data, what: str) -> bytes:
    if len(data) > MAX_PAGE_DATA:
        raise WireError(f"{what}: {len(data)} bytes of page data, at most {MAX_PAGE_DATA}")
    return data


def _body(msg) -> list:
    t = type(msg)
    if t is PutPages:
        if len(msg.pages) > MAX_PAGES:
            raise WireError(f"PutPages: {len(msg.pages)} pages, at most {MAX_PAGES}")
        parts = [_PUT_HEAD.pack(msg.pool_id, bool(msg.persistent), len(msg.pages))]
        for p in msg.pages:
            parts.append(_PAGE_HEAD.pack(_oid(p.oid), p.index, p.checksum, len(_data(p.data, "PutPage"))))
            parts.append(p.data)
        return parts
    if t is PutReply:
        n = len(msg.statuses)
        if n > MAX_PAGES:
            raise WireError(f"PutReply: {n} statuses, at most {MAX_PAGES}")
        return [_U16.pack(n), struct.pack(f">{n}i", *msg.statuses), _U64.pack(msg.free_frames)]
    if t is Get:
        return [_GET.pack(msg.pool_id, bool(msg.persistent), _oid(msg.oid), msg.index, bool(msg.free))]
    if t is GetReply:
        data = _data(msg.data, "GetReply")
        return [_GET_REPLY_HEAD.pack(bool(msg.found), msg.checksum, msg.free_frames, len(data)), data]
    if t is Ack or t is KeepaliveReply:
        return [_U64.pack(msg.free_frames)]
    if t is FlushPage:
        return [_FLUSH_PAGE.pack(msg.pool_id, bool(msg.persistent), _oid(msg.oid), msg.index)]
    if t is FlushObject:
        return [_FLUSH_OBJECT.pack(msg.pool_id, bool(msg.persistent), _oid(msg.oid))]
    if t is DestroyPool:
        return [_POOL.pack(msg.pool_id, bool(msg.persistent))]
    if t is Keepalive or t is Welcome:
        return []
    if t is ErrorReply:
        # Truncated on a UTF-8 boundary rather than refused: an error must always be sendable.
        text = msg.message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore").encode()
        return [_U16.pack(len(text)), text]
    if t is Hello:
        name = msg.cluster.encode()
        if len(name) > MAX_CLUSTER_NAME:
            raise WireError(f"Hello: cluster name longer than {MAX_CLUSTER_NAME} bytes")
        if len(msg.nonce) != NONCE_SIZE:
            raise WireError(f"Hello: nonce must be {NONCE_SIZE} bytes")
        comp = msg.compressor.encode()
        if len(comp) > MAX_COMPRESSOR_NAME:
            raise WireError(f"Hello: compressor name longer than {MAX_COMPRESSOR_NAME} bytes")
        return [_HELLO_HEAD.pack(msg.version, msg.node_number, msg.nonce, msg.boot_id, len(name), len(comp)),
                name, comp]
    if t is Auth:
        if len(msg.signature) != SIGNATURE_SIZE:
            raise WireError(f"Auth: signature must be {SIGNATURE_SIZE} bytes")
        return [msg.signature]
    raise WireError(f"cannot encode {t.__name__}")


def encode(msg: Message, msg_id: int | None = None) -> bytes:
    """The bytes of one message; WireError if a field does not fit its encoding.

    `msg_id` overrides the message's own id, so that one message object can
    be sent to several peers without being mutated.
    """
    try:
        parts = _body(msg)
        length = sum(map(len, parts))
        head = HEADER.pack(MAGIC, VERSION, TYPE_OF[type(msg)], msg.status,
                           msg.msg_id if msg_id is None else msg_id, length)
    except struct.error as e:
        raise WireError(f"{type(msg).__name__}: {e}") from None
    return b"".join((head, *parts))


# --- decoding ----------------------------------------------------------------------
class _Reader:
    """Bounds-checked cursor over one message body."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf, pos: int, end: int, what: str):
        self.buf, self.pos, self.end, self.what = buf, pos, end, what

    def unpack(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > self.end:
            raise WireError(f"{self.what}: truncated body")
        v = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def take(self, n: int, cap: int) -> bytes:
        if n > cap:
            raise WireError(f"{self.what}: field of {n} bytes, at most {cap}")
        if self.pos + n > self.end:
            raise WireError(f"{self.what}: truncated body")
        v = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return v

    def done(self) -> None:
        if self.pos != self.end:
            raise WireError(f"{self.what}: {self.end - self.pos} stray bytes after the body")


def _flag(v: int, what: str) -> bool:
    if v > 1:
        raise WireError(f"{what}: flag byte {v} is neither 0 nor 1")
    return bool(v)


def _decode_body(mtype: int, r: _Reader, msg_id: int, status: int):
    if mtype == T_PUT_PAGES:
        pool, pers, n = r.unpack(_PUT_HEAD)
        if n > MAX_PAGES:
            raise WireError(f"PutPages: {n} pages, at most {MAX_PAGES}")
        pages = []
        for _ in range(n):
            oid, index, cksum, dlen = r.unpack(_PAGE_HEAD)
            pages.append(PutPage(int.from_bytes(oid, "big"), index, cksum, r.take(dlen, MAX_PAGE_DATA)))
        msg = PutPages(pool, _flag(pers, "PutPages"), pages, msg_id=msg_id, status=status)
    elif mtype == T_PUT_REPLY:
        (n,) = r.unpack(_U16)
        if n > MAX_PAGES:
            raise WireError(f"PutReply: {n} statuses, at most {MAX_PAGES}")
        statuses = list(r.unpack(struct.Struct(f">{n}i")))
        (free,) = r.unpack(_U64)
        msg = PutReply(statuses, free, msg_id=msg_id, status=status)
    elif mtype == T_GET:
        pool, pers, oid, index, free = r.unpack(_GET)
        msg = Get(pool, _flag(pers, "Get"), int.from_bytes(oid, "big"), index, _flag(free, "Get"),
                  msg_id=msg_id, status=status)
    elif mtype == T_GET_REPLY:
        found, cksum, free, dlen = r.unpack(_GET_REPLY_HEAD)
        msg = GetReply(_flag(found, "GetReply"), cksum, r.take(dlen, MAX_PAGE_DATA), free,
                       msg_id=msg_id, status=status)
    elif mtype == T_ACK:
        msg = Ack(r.unpack(_U64)[0], msg_id=msg_id, status=status)
    elif mtype == T_KEEPALIVE_REPLY:
        msg = KeepaliveReply(r.unpack(_U64)[0], msg_id=msg_id, status=status)
    elif mtype == T_FLUSH_PAGE:
        pool, pers, oid, index = r.unpack(_FLUSH_PAGE)
        msg = FlushPage(pool, _flag(pers, "FlushPage"), int.from_bytes(oid, "big"), index,
                        msg_id=msg_id, status=status)
    elif mtype == T_FLUSH_OBJECT:
        pool, pers, oid = r.unpack(_FLUSH_OBJECT)
        msg = FlushObject(pool, _flag(pers, "FlushObject"), int.from_bytes(oid, "big"),
                          msg_id=msg_id, status=status)
    elif mtype == T_DESTROY_POOL:
        pool, pers = r.unpack(_POOL)
        msg = DestroyPool(pool, _flag(pers, "DestroyPool"), msg_id=msg_id, status=status)
    elif mtype == T_KEEPALIVE:
        msg = Keepalive(msg_id=msg_id, status=status)
    elif mtype == T_WELCOME:
        msg = Welcome(msg_id=msg_id, status=status)
    elif mtype == T_ERROR_REPLY:
        (n,) = r.unpack(_U16)
        text = r.take(n, MAX_ERROR_MESSAGE).decode("utf-8", "replace")
        msg = ErrorReply(status, text, msg_id=msg_id)
    elif mtype == T_HELLO:
        version, node, nonce, boot_id, n, nc = r.unpack(_HELLO_HEAD)
        try:
            name = r.take(n, MAX_CLUSTER_NAME).decode()
            comp = r.take(nc, MAX_COMPRESSOR_NAME).decode()
        except UnicodeDecodeError:
            raise WireError("Hello: cluster or compressor name is not UTF-8") from None
        msg = Hello(version, name, node, nonce, boot_id, comp, msg_id=msg_id, status=status)
    elif mtype == T_AUTH:
        msg = Auth(r.take(SIGNATURE_SIZE, SIGNATURE_SIZE), msg_id=msg_id, status=status)
    else:  # pragma: no cover - _known() filters these out
        raise AssertionError(mtype)
    r.done()
    return msg


class Decoder:
    """Turns a byte stream into messages; keeps at most one capped message buffered."""

    def __init__(self):
        self._buf = bytearray()
        self._need = 0  # body length of the header already validated, or 0 between messages
        self._head: tuple | None = None
        self._failed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data) -> list[Message]:
        """All messages completed by `data`; WireError (sticky) once the stream is broken."""
        if self._failed:
            raise WireError("decoder already failed")
        buf = self._buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        try:
            while True:
                if self._head is None:
                    if end - pos < HEADER_SIZE:
                        break
                    magic, version, mtype, status, msg_id, length = HEADER.unpack_from(buf, pos)
                    if magic != MAGIC:
                        raise WireError(f"bad magic {magic:#06x}")
                    if version != VERSION:
                        raise WireError(f"unsupported protocol version {version} (this node speaks {VERSION})")
                    cap = MAX_BODY.get(mtype, MAX_PAYLOAD)
                    if length > cap:
                        raise WireError(f"message type {mtype}: body of {length} bytes, at most {cap}")
                    pos += HEADER_SIZE
                    self._head = (mtype, status, msg_id, length)
                mtype, status, msg_id, length = self._head
                if end - pos < length:
                    break
                if mtype in MAX_BODY:
                    out.append(_decode_body(mtype, _Reader(buf, pos, pos + length, _NAMES[mtype]),
                                            msg_id, status))
                else:
                    out.append(Unknown(mtype, msg_id=msg_id, status=status))
                pos += length
                self._head = None
        except WireError:
            self._failed = True
            buf.clear()
            raise
        del buf[:pos]
        return out


_NAMES = {v: k.__name__ for k, v in TYPE_OF.items()}


def reply_type(request) -> type:
    """The reply class a request expects (ErrorReply can always come instead)."""
    return REPLY_TO[type(request)]
