"""The signed peer handshake without sockets: who may connect, as whom, and with what settings."""
from __future__ import annotations

import dataclasses

import pytest

from ramster.remote import keys, session, wire
from ramster.remote.clusterconf import load_cluster
from ramster.remote.session import Accepted, Handshake, Refused
from ramster.remote.wire import Auth, ErrorReply, Hello, Welcome


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Configs of nodes a (0), b (1), c (2), each with its own key, as each node loads them."""
    tmp = tmp_path_factory.mktemp("cluster")
    public = keys.node_keys(tmp / "keys", "abc")
    doc = {"cluster": {"name": "lab", "node": [
        {"name": n, "number": i, "address": f"127.0.0.1:{7701 + i}", "public_key": public[n]}
        for i, n in enumerate("abc")]}}
    return {n: load_cluster(doc, n, base_dir=tmp) for n in "abc"}


def pair(cluster, dialler="b", acceptor="a", *, dcomp="lz4", acomp="lz4", dconf=None):
    """(dialling side, accepting side): the dialler claims its config's local node."""
    d = Handshake(dconf or cluster[dialler], compressor=dcomp, boot_id=111, expect=cluster[acceptor].local.number)
    a = Handshake(cluster[acceptor], compressor=acomp, boot_id=222)
    return d, a


def run(x: Handshake, y: Handshake, tamper=lambda who, m: m):
    """Both sides send at once and answer each other's messages until both are done; the
    results. `tamper(who, msg)` may rewrite what `who` ("x" or "y") sends."""
    to_x, to_y = [tamper("y", y.hello())], [tamper("x", x.hello())]
    while to_x or to_y:
        for me, inbox, outbox, who in ((x, to_x, to_y, "x"), (y, to_y, to_x, "y")):
            if inbox:
                m = inbox.pop(0)
                if me.result is not None:
                    continue  # closed: nothing more is read
                out = me.receive(m)
                if type(out) is Refused and out.tell:
                    outbox.append(out.reply())
                elif type(out) in (Auth, Welcome):
                    outbox.append(tamper(who, out))
    return x.result, y.result


def test_two_nodes_prove_who_they_are(cluster):
    d, a = pair(cluster)
    rd, ra = run(d, a)
    assert rd == Accepted(peer=0, boot_id=222, compressor="lz4")
    assert ra == Accepted(peer=1, boot_id=111, compressor="lz4")


def test_a_node_holding_only_its_own_key_cannot_act_as_another(cluster):
    # c's operator copies b's entry: claims number 1 (b), signs with the only key it has, c's
    forged = dataclasses.replace(cluster["b"], private_key=cluster["c"].private_key)
    d, a = pair(cluster, dconf=forged)
    rd, ra = run(d, a)
    assert type(ra) is Refused and ra.kind == session.AUTH and ra.peer == 1 and ra.tell
    assert "authentication failed" in ra.reason and "node b's public_key" in ra.reason
    # the impostor is told so, and never gets to Accepted (Welcome never came)
    assert type(rd) is Refused and not rd.tell and "authentication failed" in rd.reason


def test_welcome_comes_only_after_the_auth_checks_out(cluster):
    d, a = pair(cluster)
    assert type(a.receive(d.hello())) is Auth
    assert type(a.receive(wire.Welcome())) is Refused  # a Welcome is no Auth
    d, a = pair(cluster)
    auth_a = a.receive(d.hello())
    auth_d = d.receive(a.hello())
    assert type(a.receive(auth_d)) is Welcome and a.result is None  # proven, not yet accepted
    r = a.receive(wire.Keepalive())
    assert type(r) is Refused and "expected Welcome" in r.reason
    assert type(d.receive(auth_a)) is Welcome and type(d.receive(Welcome())) is Accepted


def test_a_recorded_signature_cannot_be_replayed(cluster):
    d, a = pair(cluster)
    recorded = {}
    run(d, a, tamper=lambda who, m: recorded.setdefault((who, type(m)), m) and m)
    assert recorded[("x", Hello)] == d.hello()
    d2, a2 = pair(cluster)
    d2.nonce = recorded[("x", Hello)].nonce  # even the same nonce on the impostor's side

    def replay(who, m):
        return recorded[("x", Auth)] if who == "x" and type(m) is Auth else m

    _, ra = run(d2, a2, tamper=replay)
    assert type(ra) is Refused and ra.kind == session.AUTH  # a's fresh nonce is in what b must sign


@pytest.mark.parametrize("field, value", [("boot_id", 999), ("compressor", "zstd"), ("nonce", bytes(32))])
def test_what_a_hello_claims_is_covered_by_the_signature(cluster, field, value):
    # someone in the middle rewrites b's Hello (a faked restart, another codec, another nonce)
    d, a = pair(cluster)

    def rewrite(who, m):
        return dataclasses.replace(m, **{field: value}) if who == "x" and type(m) is Hello else m

    _, ra = run(d, a, tamper=rewrite)
    assert type(ra) is Refused and ra.kind == session.AUTH


def test_a_signature_for_one_node_proves_nothing_to_another(cluster):
    # b's Auth made for a, shown to c (same nonces, so only the verifier number differs)
    d, a = pair(cluster)
    auths = {}
    run(d, a, tamper=lambda who, m: auths.setdefault(who, m) if type(m) is Auth else m)
    hb = d.hello()
    c = Handshake(cluster["c"], compressor="lz4", boot_id=3, expect=1, nonce=a.nonce)
    assert type(c.receive(hb)) is Auth
    r = c.receive(auths["x"])
    assert type(r) is Refused and r.kind == session.AUTH


def test_different_compressors_are_refused_on_both_sides_with_both_names(cluster):
    d, a = pair(cluster, dcomp="zstd", acomp="lz4")
    rd, ra = run(d, a)
    assert type(ra) is Refused and ra.kind == session.COMPRESSOR and ra.peer == 1
    assert ra.reason == ("node b uses zstd, this node uses lz4: all nodes of a cluster must use the same "
                         "compressor")
    assert type(rd) is Refused and rd.kind == session.COMPRESSOR and rd.peer == 0
    assert rd.reason.startswith("node a uses lz4, this node uses zstd: ")


def test_the_peer_refusing_us_is_not_our_refusal(cluster):
    d, _ = pair(cluster)
    r = d.receive(ErrorReply(wire.EINVAL, "authentication failed: ..."))
    assert type(r) is Refused and not r.tell and "saying: authentication failed" in r.reason
    assert d.receive(Hello(wire.VERSION, "lab", 0, bytes(32), 0, "lz4")) is r  # done is done


@pytest.mark.parametrize("case, words", [
    ("version", "protocol version 1"),
    ("cluster", "cluster 'other'"),
    ("own number", "own number 0"),
    ("unknown number", "node number 9 is not in the cluster"),
    ("lower dials", "higher-numbered node must connect"),
    ("echo", "echoed our nonce"),
    ("not hello", "expected Hello, got Keepalive"),
])
def test_hello_refusals(cluster, case, words):
    a = Handshake(cluster["b"], compressor="lz4", boot_id=1)  # node 1 accepting
    h = Hello(wire.VERSION, "lab", 2, bytes(range(32)), 5, "lz4")
    m = {"version": dataclasses.replace(h, version=1), "cluster": dataclasses.replace(h, cluster="other"),
         "own number": dataclasses.replace(h, node_number=1), "unknown number": dataclasses.replace(h, node_number=9),
         "lower dials": dataclasses.replace(h, node_number=0), "echo": dataclasses.replace(h, nonce=a.nonce),
         "not hello": wire.Keepalive()}[case]
    if case == "own number":
        words = "own number 1"
    r = a.receive(m)
    assert type(r) is Refused and r.kind == session.OTHER and words in r.reason and r.tell
    assert r.reply().message == r.reason


def test_dialled_node_must_be_the_one_answering(cluster):
    d = Handshake(cluster["c"], compressor="lz4", boot_id=1, expect=0)
    r = d.receive(Handshake(cluster["b"], compressor="lz4", boot_id=2).hello())
    assert type(r) is Refused and "dialled node 0 but node 1 answered" in r.reason


def test_something_else_instead_of_auth_is_an_auth_failure(cluster):
    d, a = pair(cluster)
    assert type(a.receive(d.hello())) is Auth
    r = a.receive(wire.Keepalive())
    assert type(r) is Refused and r.kind == session.AUTH and r.peer == 1


def test_transcript_fields_cannot_run_into_each_other():
    base = dict(cluster="lab", version=2, signer=1, verifier=0, verifier_nonce=bytes(32),
                signer_nonce=bytes(range(32)), boot_id=7, compressor="lz4")
    t = session.transcript(**base)
    assert t.startswith(session.CONTEXT)
    variants = [dict(base, cluster="lab" + "l", compressor="z4"), dict(base, cluster="la", compressor="blz4"),
                dict(base, signer=0, verifier=1), dict(base, verifier_nonce=base["signer_nonce"],
                                                       signer_nonce=base["verifier_nonce"]),
                dict(base, boot_id=8), dict(base, version=1)]
    assert len({t, *(session.transcript(**v) for v in variants)}) == 1 + len(variants)


def test_what_the_peer_says_is_one_printable_line_in_our_log(cluster):
    d, _ = pair(cluster)
    r = d.receive(ErrorReply(wire.EINVAL, "no\nFAKE LOG LINE\x1b[31m" + "x" * 2000))
    assert "\n" not in r.reason and "\x1b" not in r.reason and len(r.reason) < 500


# --- Session: the whole byte stream, still without sockets -------------------------------------------
def sessions(cluster, dialler="b", acceptor="a", *, dcomp="lz4", acomp="lz4", dconf=None):
    d = session.Session(dconf or cluster[dialler], compressor=dcomp, boot_id=111,
                        expect=cluster[acceptor].local.number)
    a = session.Session(cluster[acceptor], compressor=acomp, boot_id=222)
    return d, a


def pump(x: session.Session, y: session.Session, chunk: int | None = None, extra: dict | None = None):
    """Move bytes both ways (in `chunk`-byte pieces if given) until neither has more to say; the
    events each side saw. `extra[side]` is appended to that side's bytes once it is accepted."""
    seen = {"x": [], "y": []}
    extra = dict(extra or {})
    while True:
        moved = False
        for me, other, who, to in ((x, y, "x", "y"), (y, x, "y", "x")):
            data = me.data_to_send()
            if type(me.result) is Accepted and who in extra:
                data += extra.pop(who)
            if not data:
                continue
            moved = True
            pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
            for p in pieces:
                seen[to] += other.receive_data(p)
        if not moved:
            return seen["x"], seen["y"]


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_sessions_meet_over_bytes_alone(cluster, chunk):
    d, a = sessions(cluster)
    ed, ea = pump(d, a, chunk)
    assert ed == [session.Claimed(0), session.Proven(0), Accepted(peer=0, boot_id=222, compressor="lz4")]
    assert ea == [session.Claimed(1), session.Proven(1), Accepted(peer=1, boot_id=111, compressor="lz4")]
    assert d.result == ed[-1] and a.result == ea[-1]


def test_requests_in_the_same_read_as_the_welcome_are_not_lost(cluster):
    d, a = sessions(cluster)
    # the dialler's first requests follow its Welcome in one write
    first = wire.encode(wire.Keepalive(), 1) + wire.encode(wire.FlushPage(0, True, 1, 2), 2)
    _, ea = pump(d, a, extra={"x": first})
    i = ea.index(Accepted(peer=1, boot_id=111, compressor="lz4"))
    assert [type(m) for m in ea[i + 1:]] == [wire.Keepalive, wire.FlushPage]
    assert [m.msg_id for m in ea[i + 1:]] == [1, 2]


def test_after_the_handshake_only_messages_come_out(cluster):
    d, a = sessions(cluster)
    pump(d, a)
    data = wire.encode(wire.Keepalive(), 9)
    assert a.receive_data(data[:5]) == []
    [m] = a.receive_data(data[5:])
    assert type(m) is wire.Keepalive and m.msg_id == 9
    assert a.data_to_send() == b""  # what to answer is the transport's business now
    with pytest.raises(wire.WireError, match="bad magic"):
        a.receive_data(b"\0" * wire.HEADER_SIZE)


def test_a_refusal_is_sent_as_bytes_and_read_as_the_peers_refusal(cluster):
    d, a = sessions(cluster, dcomp="zstd", acomp="lz4")
    ed, ea = pump(d, a)
    ra, rd = ea[-1], ed[-1]
    assert type(ra) is Refused and ra.kind == session.COMPRESSOR and ra.tell
    # each side told the other why; a side refused by the peer has nothing to add
    assert type(rd) is Refused and rd.kind == session.COMPRESSOR
    assert d.data_to_send() == b"" and a.data_to_send() == b""
    # a refused session reads nothing more
    assert a.receive_data(wire.encode(wire.Keepalive(), 1)) == []


def test_the_peer_told_us_why_it_refused(cluster):
    d, a = sessions(cluster, dconf=dataclasses.replace(cluster["b"], private_key=cluster["c"].private_key))
    ed, ea = pump(d, a)
    assert type(ea[-1]) is Refused and ea[-1].kind == session.AUTH
    assert type(ed[-1]) is Refused and not ed[-1].tell and "saying: authentication failed" in ed[-1].reason
    assert session.Accepted not in map(type, ed + ea)


@pytest.mark.parametrize("garbage, words", [
    (b"GET / HTTP/1.1\r\n\r\n", "protocol error: bad magic"),
    (wire.HEADER.pack(wire.MAGIC, 1, 1, 0, 0, 0), "protocol error: unsupported protocol version 1"),
])
def test_garbage_before_the_handshake_is_refused_and_answered(cluster, garbage, words):
    a = session.Session(cluster["a"], compressor="lz4", boot_id=1)
    hello = a.data_to_send()
    assert [type(m) for m in wire.Decoder().feed(hello)] == [Hello]
    [r] = a.receive_data(garbage)
    assert type(r) is Refused and r.tell and r.reason.startswith(words)
    [reply] = wire.Decoder().feed(a.data_to_send())
    assert type(reply) is ErrorReply and reply.message == r.reason
    assert a.receive_data(b"more") == []


def test_a_hello_split_anywhere_is_the_same_hello(cluster):
    d, _ = sessions(cluster)
    raw = d.data_to_send()
    for cut in range(1, len(raw)):
        a = session.Session(cluster["a"], compressor="lz4", boot_id=2)
        assert a.receive_data(raw[:cut]) == []
        assert a.receive_data(raw[cut:]) == [session.Claimed(1)]
