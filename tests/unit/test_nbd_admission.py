"""The core's admission: requests are parsed only while the shell's credit lasts.

The core is driven through bytes only, as in test_nbd_protocol, with the credit
the asyncio shell would grant; a Hypothesis property checks that any credit
schedule yields exactly the events and replies of an unlimited one.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ramster.nbd import wire as P
from ramster.nbd.handshake import MAX_HANDSHAKE_OUTPUT
from ramster.nbd.protocol import NbdConnection, REQUEST_COST, Request, UNLIMITED
from ramster.nbd.ramdisk import MemoryExport

SIZE = 1 << 20
MAX = 64 * 1024
COST = REQUEST_COST


def request(cmd: int, offset: int = 0, length: int = 0, cookie: int = 1, data: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", P.REQUEST_MAGIC, 0, cmd, cookie, offset, length) + data


def negotiated(max_payload: int = MAX) -> NbdConnection:
    conn = NbdConnection({"disk": MemoryExport("disk", SIZE)}, "disk", max_payload=max_payload)
    name = b"disk"
    conn.feed(struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_GO, 4 + len(name) + 2)
              + struct.pack(">I", len(name)) + name + b"\0\0")
    assert conn.in_transmission
    conn.data_to_send()
    return conn


def requests_of(events) -> list[Request]:
    return [e for e in events if isinstance(e, Request)]


def test_credit_stops_parsing_at_a_header_and_resumes():
    conn = negotiated()
    conn.credit = 2 * (COST + 4096)
    stream = b"".join(request(P.CMD_READ, i * 4096, 4096, cookie=i) for i in range(5))
    got = requests_of(conn.feed(stream))
    assert [r.cookie for r in got] == [0, 1]
    assert conn.blocked and not conn.mid_request
    assert conn.admitted == 2 * (COST + 4096)
    assert conn.buffered == 3 * 28  # the rest waits, unparsed
    # No credit: still blocked, nothing parsed.
    conn.credit = 0
    assert conn.feed(b"") == [] and conn.blocked
    conn.credit = 10 * (COST + 4096)
    assert [r.cookie for r in requests_of(conn.feed(b""))] == [2, 3, 4]
    assert not conn.blocked and conn.buffered == 0


def test_overdraw_admits_exactly_one_request():
    conn = negotiated()
    conn.credit = 0
    conn.overdraw = True
    got = requests_of(conn.feed(request(P.CMD_READ, 0, MAX, cookie=1) + request(P.CMD_READ, 0, 512, cookie=2)))
    assert [r.cookie for r in got] == [1]
    assert conn.blocked and not conn.overdraw
    assert conn.admitted == COST + MAX


def test_write_is_admitted_at_its_header_for_its_whole_length():
    conn = negotiated()
    conn.credit = COST + MAX
    assert conn.feed(request(P.CMD_WRITE, 0, MAX, cookie=1) + b"a" * 100) == []
    assert conn.partial_size == 100 and conn.mid_request
    assert conn.admitted == 0  # reported once the request is handed out
    (req,) = requests_of(conn.feed(b"a" * (MAX - 100) + request(P.CMD_READ, 0, 512, cookie=2)))
    assert req.cookie == 1 and len(req.data) == MAX
    assert conn.admitted == COST + MAX
    assert conn.blocked  # the READ behind it did not fit what was left


def test_refused_requests_cost_credit_but_are_not_admitted():
    conn = negotiated()
    conn.credit = (COST + 512) + COST + COST  # what the READ asked, the over-long WRITE, one FLUSH
    bad = request(P.CMD_READ, SIZE, 512, cookie=1) + request(P.CMD_WRITE, 0, 2 * MAX, cookie=2) + b"x" * 2 * MAX
    assert requests_of(conn.feed(bad + request(P.CMD_FLUSH, cookie=3) + request(P.CMD_FLUSH, cookie=4))) != []
    assert conn.admitted == COST  # only the first FLUSH: the refused ones are answered by the core itself
    assert conn.blocked
    out = conn.data_to_send()
    assert [struct.unpack_from(">IIQ", out, i)[1:] for i in (0, 16)] == [(P.EINVAL, 1), (P.EINVAL, 2)]


def test_a_flood_of_empty_requests_is_bounded_by_the_credit():
    conn = negotiated()
    conn.credit = 100 * COST
    got = requests_of(conn.feed(request(P.CMD_FLUSH) * 10_000))
    assert len(got) == 100 and conn.blocked


def test_close_releases_the_partial_payload():
    conn = negotiated()
    conn.feed(request(P.CMD_WRITE, 0, MAX) + b"y" * 1000)
    assert conn.partial_size == 1000
    conn.feed(b"y" * (MAX - 1000) + b"\0" * 28)  # complete, then a bad magic
    assert conn.closed and conn.partial_size == 0 and not conn.blocked


def test_mid_request_tracks_partial_headers_and_payloads():
    conn = negotiated()
    assert not conn.mid_request
    conn.feed(request(P.CMD_WRITE, 0, 100)[:10])
    assert conn.mid_request
    conn.feed(request(P.CMD_WRITE, 0, 100)[10:] + b"z" * 99)
    assert conn.mid_request
    conn.feed(b"z")
    assert not conn.mid_request
    conn.feed(request(P.CMD_WRITE, 0, 2 * MAX))  # over the maximum: skipped, still arriving
    assert conn.mid_request and conn.partial_size == 0


# --- any credit schedule gives the same session --------------------------------------------------
SMALL_MAX = 8192  # small requests keep the property fast; the logic does not depend on sizes


def _stream(draw) -> bytes:
    out = []
    for i in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["read", "write", "bigwrite", "flush", "bad", "trim"]))
        length = draw(st.sampled_from([1, 512, 4096, SMALL_MAX]))
        offset = draw(st.integers(0, SIZE - length))
        if kind == "read":
            out.append(request(P.CMD_READ, offset, length, cookie=i))
        elif kind == "write":
            out.append(request(P.CMD_WRITE, offset, length, cookie=i, data=bytes([i % 251]) * length))
        elif kind == "bigwrite":
            out.append(request(P.CMD_WRITE, 0, SMALL_MAX + 1, cookie=i, data=b"b" * (SMALL_MAX + 1)))
        elif kind == "flush":
            out.append(request(P.CMD_FLUSH, cookie=i))
        elif kind == "trim":
            out.append(request(P.CMD_TRIM, offset, length, cookie=i))
        else:
            out.append(request(P.CMD_READ, SIZE, 512, cookie=i))
    return b"".join(out)


def _run(stream: bytes, chunks: list[int], credits: list[int] | None):
    conn = negotiated(SMALL_MAX)
    export = conn.export
    seen, out = [], bytearray()
    pos = i = 0
    admitted = 0
    while True:
        assert i <= 2 * len(stream) + 10, "no progress"
        if credits is not None:
            conn.credit = credits[i % len(credits)]
            conn.overdraw = credits[i % len(credits)] == 0
        if pos < len(stream):
            n = chunks[i % len(chunks)]
            events = conn.feed(stream[pos:pos + n])
            pos += n
        elif conn.blocked:
            events = conn.feed(b"")
        else:
            break
        i += 1
        assert conn.buffered <= max(chunks) + 28 + len(stream) * (credits is not None)
        admitted += conn.admitted
        conn.admitted = 0
        for req in requests_of(events):
            length = req.length if req.command <= P.CMD_WRITE else 0
            admitted -= REQUEST_COST + length
            seen.append((req.cookie, req.command, req.offset, req.length,
                         bytes(req.data) if req.data is not None else None))
            if req.command == P.CMD_WRITE:
                export._view[req.offset:req.offset + req.length] = req.data
            conn.reply_ok(req)
        out += conn.data_to_send()
        assert admitted == 0  # every admitted byte belongs to a request handed out
    return seen, bytes(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_credit_schedule_gives_the_same_session(data):
    stream = _stream(data.draw)
    chunks = data.draw(st.lists(st.sampled_from([3, 28, 29, 1000, 9000]), min_size=1, max_size=8))
    credits = data.draw(st.lists(st.sampled_from([0, 1, COST, COST + 4096, 3 * (COST + SMALL_MAX), UNLIMITED]),
                                 min_size=1, max_size=6).filter(lambda c: 0 in c or UNLIMITED in c))
    seen, out = _run(stream, chunks, credits)
    want_seen, want_out = _run(stream, chunks, None)
    assert seen == want_seen
    # Every reply here is a 16-byte simple reply; the core's own error replies
    # may come earlier or later relative to the others, which NBD allows.
    assert len(out) == len(want_out)
    assert sorted(out[i:i + 16] for i in range(0, len(out), 16)) == sorted(
        want_out[i:i + 16] for i in range(0, len(want_out), 16))


def test_option_replies_do_not_pile_up_in_the_handshake():
    """Options asking for long replies stop being parsed while their replies wait."""
    exports = {f"export-{i:03}": MemoryExport(f"export-{i:03}", 4096, description="d" * 200) for i in range(50)}
    conn = NbdConnection(exports)
    conn.data_to_send()
    n = 100
    stream = struct.pack(">I", 3) + struct.pack(">QII", P.IHAVEOPT, P.OPT_LIST, 0) * n
    conn.feed(stream)
    assert conn.blocked
    out = conn.data_to_send()
    assert MAX_HANDSHAKE_OUTPUT < len(out) < MAX_HANDSHAKE_OUTPUT + 20_000
    while conn.blocked:
        assert conn.feed(b"") == []
        out += conn.data_to_send()
    acks = 0
    pos = 0
    while pos < len(out):
        _, _, rep, length = struct.unpack_from(">QIII", out, pos)
        acks += rep == P.REP_ACK
        pos += 20 + length
    assert acks == n
