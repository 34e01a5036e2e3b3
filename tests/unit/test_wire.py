"""The RAMster peer codec: round trips, arbitrary splits, and length checks."""
from __future__ import annotations

import struct

import pytest

from ramster.remote import wire
from ramster.remote.wire import (
    Ack, Auth, Decoder, DestroyPool, ErrorReply, FlushObject, FlushPage, Get, GetReply, Hello,
    Keepalive, KeepaliveReply, PutPage, PutPages, PutReply, Unknown, WireError, encode,
)

BIG_OID = (1 << 192) - 1

MESSAGES = [
    Hello(wire.VERSION, "lab", 3, bytes(range(32)), 2**64 - 1, "zstd", msg_id=1),
    Hello(wire.VERSION, "l" * wire.MAX_CLUSTER_NAME, 15, bytes(32), 0, "c" * wire.MAX_COMPRESSOR_NAME),
    Auth(b"\xaa" * wire.SIGNATURE_SIZE, msg_id=2),
    PutPages(7, True, [PutPage(BIG_OID, 2**32 - 1, 2**64 - 1, b"x" * wire.MAX_PAGE_DATA),
                       PutPage(0, 0, 0, b"")], msg_id=3),
    PutPages(0, False, [], msg_id=4),
    PutReply([0, wire.ENOMEM, -2**31, 2**31 - 1], 12345, msg_id=5),
    Get(65535, True, 1 << 100, 9, True, msg_id=2**32 - 1),
    Get(1, False, 5, 0, False),
    GetReply(True, 0xDEADBEEF, b"page", 2**64 - 1, msg_id=6),
    GetReply(False, 0, b"", 0, msg_id=7, status=wire.ENOENT),
    FlushPage(2, True, BIG_OID, 4, msg_id=8),
    FlushObject(2, False, 42, msg_id=9),
    DestroyPool(15, True, msg_id=10),
    Ack(99, msg_id=11),
    Keepalive(msg_id=12),
    KeepaliveReply(7, msg_id=13),
    ErrorReply(wire.EIO, "disk on fire \u2603", msg_id=14),
    ErrorReply(),
]


def decode_all(data: bytes, step: int | None = None) -> list:
    d = Decoder()
    if step is None:
        return d.feed(data)
    out = []
    for i in range(0, len(data), step):
        out += d.feed(data[i:i + step])
    return out


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = encode(msg)
    assert len(data) >= wire.HEADER_SIZE
    assert decode_all(data) == [msg]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_byte_at_a_time(msg):
    assert decode_all(encode(msg), step=1) == [msg]


def test_stream_of_every_message_in_odd_chunks():
    stream = b"".join(encode(m) for m in MESSAGES)
    for step in (1, 3, 7, 16, 17, 1000, len(stream)):
        assert decode_all(stream, step) == MESSAGES


def test_every_message_type_has_a_code_and_every_request_a_reply():
    assert set(wire.TYPE_OF) >= set(wire.REPLY_TO) | set(wire.REPLY_TO.values())
    assert len(set(wire.TYPE_OF.values())) == len(wire.TYPE_OF)
    for req, rep in wire.REPLY_TO.items():
        assert rep in wire.REPLIES
        assert wire.reply_type(req.__new__(req)) is rep


def test_header_layout_is_big_endian():
    data = encode(Ack(0x0102, msg_id=0x0A0B0C0D, status=-2))
    magic, version, mtype, status, msg_id, length = struct.unpack(">HBBiII", data[:16])
    assert (magic, version, mtype, status, msg_id, length) == (wire.MAGIC, wire.VERSION, wire.T_ACK, -2,
                                                               0x0A0B0C0D, 8)
    assert data[16:] == (0x0102).to_bytes(8, "big")


def test_encode_overrides_msg_id_without_touching_the_message():
    m = Get(1, True, 2, 3, False, msg_id=5)
    assert decode_all(encode(m, msg_id=77))[0].msg_id == 77
    assert m.msg_id == 5


def test_unknown_type_is_framed_and_reported_not_fatal():
    body = b"whatever"
    raw = struct.pack(">HBBiII", wire.MAGIC, wire.VERSION, 200, 0, 42, len(body)) + body
    out = decode_all(raw + encode(Keepalive(msg_id=43)), step=5)
    assert out == [Unknown(200, msg_id=42), Keepalive(msg_id=43)]


def header(mtype, length, magic=wire.MAGIC, version=wire.VERSION):
    return struct.pack(">HBBiII", magic, version, mtype, 0, 1, length)


def test_bad_magic():
    with pytest.raises(WireError, match="magic"):
        Decoder().feed(header(wire.T_ACK, 8, magic=0x1234))


def test_bad_version():
    with pytest.raises(WireError, match="version"):
        Decoder().feed(header(wire.T_ACK, 8, version=9))


@pytest.mark.parametrize("mtype", sorted(wire.MAX_BODY))
def test_oversized_length_refused_from_the_header_alone(mtype):
    d = Decoder()
    # Only the header: the refusal must not wait for (or buffer) the body.
    with pytest.raises(WireError, match="at most"):
        d.feed(header(mtype, wire.MAX_BODY[mtype] + 1))
    assert d.buffered == 0


def test_unknown_type_length_capped():
    with pytest.raises(WireError):
        Decoder().feed(header(99, wire.MAX_PAYLOAD + 1))
    with pytest.raises(WireError):
        Decoder().feed(header(99, 2**32 - 1))


def test_decoder_stays_failed():
    d = Decoder()
    with pytest.raises(WireError):
        d.feed(b"\x00" * 16)
    with pytest.raises(WireError):
        d.feed(encode(Keepalive()))


def _with_body(mtype, body):
    return header(mtype, len(body)) + body


def test_too_many_pages_refused():
    body = struct.pack(">HBH", 1, 1, wire.MAX_PAGES + 1)
    with pytest.raises(WireError, match="pages"):
        Decoder().feed(_with_body(wire.T_PUT_PAGES, body))


def test_page_data_longer_than_a_zpage_refused():
    body = struct.pack(">HBH", 1, 1, 1) + struct.pack(">24sIQH", bytes(24), 0, 0, wire.MAX_PAGE_DATA + 1)
    body += bytes(wire.MAX_PAGE_DATA + 1)
    with pytest.raises(WireError, match="at most"):
        Decoder().feed(_with_body(wire.T_PUT_PAGES, body))


def test_inner_length_past_the_body_refused():
    body = struct.pack(">BQQH", 1, 0, 0, 100) + b"short"
    with pytest.raises(WireError, match="truncated"):
        Decoder().feed(_with_body(wire.T_GET_REPLY, body))


def test_stray_bytes_after_a_body_refused():
    body = struct.pack(">BQQH", 1, 0, 0, 2) + b"ab!"
    with pytest.raises(WireError, match="stray"):
        Decoder().feed(_with_body(wire.T_GET_REPLY, body))


def test_flag_bytes_must_be_boolean():
    body = struct.pack(">HB24sIB", 1, 2, bytes(24), 0, 0)
    with pytest.raises(WireError, match="flag"):
        Decoder().feed(_with_body(wire.T_GET, body))


def test_status_count_capped():
    body = struct.pack(">H", wire.MAX_PAGES + 1)
    with pytest.raises(WireError):
        Decoder().feed(_with_body(wire.T_PUT_REPLY, body))


def test_hello_cluster_name_must_be_utf8():
    body = struct.pack(">HB32sQHB", 1, 0, bytes(32), 0, 2, 0) + b"\xff\xfe"
    with pytest.raises(WireError, match="UTF-8"):
        Decoder().feed(_with_body(wire.T_HELLO, body))


@pytest.mark.parametrize("msg", [
    PutPages(1, True, [PutPage(0, 0, 0, b"")] * (wire.MAX_PAGES + 1)),
    PutPages(1, True, [PutPage(0, 0, 0, b"x" * (wire.MAX_PAGE_DATA + 1))]),
    PutPages(1, True, [PutPage(1 << 192, 0, 0, b"")]),
    PutPages(1 << 16, True, []),
    Get(1, True, -1, 0, False),
    Get(1, True, 0, 1 << 32, False),
    GetReply(True, 0, b"x" * (wire.MAX_PAGE_DATA + 1), 0),
    PutReply([0] * (wire.MAX_PAGES + 1), 0),
    Ack(-1),
    Hello(1, "x" * 65, 0, bytes(32), 0, "lz4"),
    Hello(1, "lab", 0, bytes(31), 0, "lz4"),
    Hello(1, "lab", 0, bytes(32), 0, "z" * (wire.MAX_COMPRESSOR_NAME + 1)),
    Auth(b"short"),
    Auth(b"\0" * 32),  # an HMAC of version 1 is not a signature
    Unknown(99),
    Ack(0, msg_id=1 << 32),
], ids=lambda m: type(m).__name__)
def test_encode_refuses_what_does_not_fit(msg):
    with pytest.raises(WireError):
        encode(msg)


def test_error_message_is_truncated_not_refused():
    m = ErrorReply(wire.EIO, "\u2603" * 1000)
    out = decode_all(encode(m))[0]
    assert len(out.message.encode()) <= wire.MAX_ERROR_MESSAGE
    assert out.message == "\u2603" * (wire.MAX_ERROR_MESSAGE // 3)


def test_full_put_fits_the_caps():
    m = PutPages(1, True, [PutPage(BIG_OID, i, i, bytes([i]) * wire.MAX_PAGE_DATA)
                           for i in range(wire.MAX_PAGES)])
    data = encode(m)
    assert len(data) - wire.HEADER_SIZE <= wire.MAX_BODY[wire.T_PUT_PAGES] <= wire.MAX_PAYLOAD
    assert decode_all(data, step=4096) == [m]


def test_page_cap_holds_a_zbud_payload_or_a_huge_page():
    from ramster.zbud import MAX_BUDDY_SIZE, PAGE_SIZE
    assert MAX_BUDDY_SIZE < wire.MAX_PAGE_DATA == PAGE_SIZE


def test_hello_carries_the_compressor_and_the_version_moved():
    # version 1 Hellos had no compressor and Auths an HMAC: a version 1 node is refused at the header
    assert wire.VERSION == 2
    m = Hello(wire.VERSION, "lab", 1, bytes(range(32)), 7, "lzo")
    assert decode_all(encode(m)) == [m]
    old = struct.pack(">HBBiII", wire.MAGIC, 1, wire.T_HELLO, 0, 0, 0)
    with pytest.raises(WireError, match="unsupported protocol version 1"):
        Decoder().feed(old)


def test_hello_compressor_name_must_be_utf8_and_short():
    body = struct.pack(">HB32sQHB", wire.VERSION, 1, bytes(32), 0, 3, 2) + b"lab" + b"\xff\xfe"
    with pytest.raises(WireError, match="UTF-8"):
        Decoder().feed(_with_body(wire.T_HELLO, body))
    n = wire.MAX_COMPRESSOR_NAME + 1
    body = struct.pack(">HB32sQHB", wire.VERSION, 1, bytes(32), 0, 0, n) + b"z" * n
    with pytest.raises(WireError):
        Decoder().feed(_with_body(wire.T_HELLO, body))


def test_auth_of_the_wrong_length_is_refused():
    with pytest.raises(WireError):
        Decoder().feed(_with_body(wire.T_AUTH, bytes(32)))
