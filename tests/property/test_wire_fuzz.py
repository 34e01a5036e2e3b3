"""Fuzzing the RAMster peer decoder with random and mutated byte streams.

Whatever a peer sends, the decoder either returns messages or raises
WireError, never anything else; it never buffers more than one capped
message; and every message it returns re-encodes within the caps.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ramster.remote import wire
from ramster.remote.wire import Decoder, WireError, encode

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A decoder may hold at most one header plus one maximal body (plus the chunk being fed).
BUFFER_CAP = wire.HEADER_SIZE + wire.MAX_PAYLOAD

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-2**31, 2**31 - 1)
oids = st.integers(0, 2**192 - 1)
zpages = st.binary(max_size=64) | st.builds(lambda n, b: bytes([b]) * n, st.integers(0, wire.MAX_PAGE_DATA),
                                           st.integers(0, 255))
meta = {"msg_id": u32, "status": i32}

messages = st.one_of(
    st.builds(wire.Hello, u16, st.text(max_size=16), st.integers(0, 255), st.binary(min_size=32, max_size=32),
              u64, st.text(max_size=4), **meta),
    st.builds(wire.Auth, st.binary(min_size=wire.SIGNATURE_SIZE, max_size=wire.SIGNATURE_SIZE), **meta),
    st.builds(wire.PutPages, u16, st.booleans(),
              st.lists(st.builds(wire.PutPage, oids, u32, u64, zpages), max_size=4), **meta),
    st.builds(wire.PutReply, st.lists(i32, max_size=wire.MAX_PAGES), u64, **meta),
    st.builds(wire.Get, u16, st.booleans(), oids, u32, st.booleans(), **meta),
    st.builds(wire.GetReply, st.booleans(), u64, zpages, u64, **meta),
    st.builds(wire.FlushPage, u16, st.booleans(), oids, u32, **meta),
    st.builds(wire.FlushObject, u16, st.booleans(), oids, **meta),
    st.builds(wire.DestroyPool, u16, st.booleans(), **meta),
    st.builds(wire.Ack, u64, **meta),
    st.builds(wire.Keepalive, **meta),
    st.builds(wire.KeepaliveReply, u64, **meta),
    st.builds(wire.ErrorReply, i32, st.text(max_size=40), msg_id=u32),
)


def feed_all(stream: bytes, cuts: list[int]) -> list:
    """Feed `stream` split at `cuts`; return the messages, stopping at a WireError."""
    d = Decoder()
    out = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    try:
        for a, b in zip(points, points[1:]):
            out += d.feed(stream[a:b])
            assert d.buffered <= BUFFER_CAP
    except WireError:
        pass
    for m in out:
        if type(m) is not wire.Unknown:
            # every decoded message is itself valid
            assert len(encode(m)) <= wire.HEADER_SIZE + wire.MAX_BODY[wire.TYPE_OF[type(m)]]
    return out


@SETTINGS
@given(st.lists(messages, max_size=6), st.lists(st.integers(0, 10**6), max_size=8))
def test_valid_streams_decode_exactly(msgs, cuts):
    stream = b"".join(encode(m) for m in msgs)
    assert feed_all(stream, cuts) == msgs


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10**6), max_size=8))
def test_random_bytes(data, cuts):
    feed_all(data, cuts)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(sorted(wire.MAX_BODY) + [0, 99, 255]), i32, u32)
def test_random_bodies_behind_a_valid_header(body, mtype, status, msg_id):
    raw = struct.pack(">HBBiII", wire.MAGIC, wire.VERSION, mtype, status, msg_id, len(body)) + body
    feed_all(raw, [])


@st.composite
def mutated_streams(draw):
    msgs = draw(st.lists(messages, min_size=1, max_size=4))
    data = bytearray(b"".join(encode(m) for m in msgs))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "length"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
            if not data:
                data = bytearray(b"\x00")
        else:  # overwrite a 4- or 2-byte field with a large or boundary length
            v = draw(st.sampled_from([0, 1, wire.MAX_PAGE_DATA, wire.MAX_PAGE_DATA + 1, wire.MAX_PAGES + 1,
                                      wire.MAX_PAYLOAD, wire.MAX_PAYLOAD + 1, 2**16 - 1, 2**32 - 1]))
            width = draw(st.sampled_from([2, 4]))
            data[pos:pos + width] = (v % (1 << (8 * width))).to_bytes(width, "big")
    return bytes(data)


@SETTINGS
@given(mutated_streams(), st.lists(st.integers(0, 10**6), max_size=8))
def test_mutated_streams(stream, cuts):
    feed_all(stream, cuts)


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_split_points_do_not_matter(msgs, data):
    stream = b"".join(encode(m) for m in msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    whole = Decoder().feed(stream)
    assert feed_all(stream, cuts) == whole == msgs
