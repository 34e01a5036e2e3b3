"""The peer handshake, sans-I/O: who is at the other end, proven, and can we work together.

Both sides send at once, then answer what they receive:

    Hello(version, cluster, node number, nonce, boot id, compressor)   each way
    Auth(signature of the transcript)                                   each way, after the other's Hello
    Welcome  (or ErrorReply saying why not)                             each way, after checking the other's Auth

A side is connected only once it has checked the other's Auth *and* received
its Welcome: a node whose key the other side does not accept never looks
connected, not even for a moment, to either side.

Two layers, neither of which touches a socket or a clock. `Handshake` turns
one received message into the message to answer with (or a verdict).
`Session` is the connection's whole byte stream: `receive_data(bytes)`
returns events (Claimed, Proven, then Accepted or Refused) and, once
accepted, the decoded messages that follow, including any that arrived in
the same read as the peer's Welcome; `data_to_send()` returns the bytes owed
to the peer (our Hello, Auth, Welcome, or the ErrorReply saying why we
refuse). The transport (ramster.remote.connection) only moves bytes between
the socket and the Session and acts on the events, so every handshake rule
is tested without sockets (tests/unit/test_session.py).

A side's transcript is everything the other side acts on, bound to this one
connection:

    "ramster-handshake\\0" | version | signer number | verifier number
      | verifier's nonce | signer's nonce | signer's boot id
      | cluster name | signer's compressor        (names length-prefixed)

signed with the signer's Ed25519 private key and checked with the public key
the cluster file lists for the node number it claims. So:

- a node holding only its own key cannot act as another node: its signature
  does not verify under the other node's public key;
- a signature cannot be replayed: it covers the verifier's fresh nonce;
- it cannot be reflected or relayed to a third node: it names both the signer
  and the verifier;
- the boot id is signed, so nobody can fake a "restart" of a node (which
  would make its peers declare every page it holds lost), and nothing in a
  Hello is acted on before the signature over it has been checked;
- the compressor is signed and compared once proven: every node decodes the
  pages peers send with its own codec, so nodes with different codecs are
  refused here, with a message naming both, rather than failing page by page.

Why per-node keys replace the shared secret (an HMAC challenge-response over
one `secret_file` that every node held) rather than join it: the secret
proved only "some member of the cluster", which is exactly the hole (anyone
with it could claim any node number). The signatures prove the member *and*
which one; a second factor held by every node adds nothing against a node
that is compromised (it holds both) nor against an outsider (who holds
neither), and it costs operators a second file to distribute and, to revoke
one node, a new secret on every node. With keys, revoking a node is removing
its public_key from the (public, shareable) cluster file.

As before, without TLS this proves who opened the connection; someone who
can rewrite packets in flight can still tamper with it afterwards. Use
tls_cert/tls_key/tls_ca against that.
"""
from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from . import keys, wire
from .clusterconf import ClusterConfig
from .wire import Auth, ErrorReply, Hello, Welcome

CONTEXT = b"ramster-handshake\0"
_NUMBERS = struct.Struct(">HBB")  # version, signer, verifier
_BOOT = struct.Struct(">Q")

# Why a handshake was refused, for the counters: a signature that does not
# verify, a proven node whose settings differ, or anything else (a stranger,
# another cluster or version, a wrong node number, the peer refusing us).
AUTH = "auth"
COMPRESSOR = "compressor"
OTHER = "other"


def _printable(text: str, limit: int = 400) -> str:
    # a peer's words go into our log: one line, no control characters, bounded
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def transcript(cluster: str, version: int, signer: int, verifier: int, verifier_nonce: bytes,
               signer_nonce: bytes, boot_id: int, compressor: str) -> bytes:
    """The bytes `signer` signs for `verifier` in one handshake."""
    name, comp = cluster.encode(), compressor.encode()
    return b"".join((CONTEXT, _NUMBERS.pack(version, signer, verifier), verifier_nonce, signer_nonce,
                     _BOOT.pack(boot_id), bytes((len(name),)), name, bytes((len(comp),)), comp))


@dataclass(frozen=True)
class Accepted:
    """The handshake is done: `peer` proved it is that node, and it can work with this one."""

    peer: int
    boot_id: int
    compressor: str


@dataclass(frozen=True)
class Refused:
    """The connection must close. `peer` is the node number it claimed (when one of the
    cluster's), `kind` one of AUTH, COMPRESSOR, OTHER; `tell` is False when the peer
    refused us (nothing to answer)."""

    reason: str
    kind: str = OTHER
    peer: int | None = None
    tell: bool = True

    def reply(self) -> ErrorReply:
        """What the peer is told before the connection closes."""
        return ErrorReply(wire.EINVAL, self.reason)


class Handshake:
    """One side of one connection's handshake.

    `hello()` is the first message to send; `receive(msg)` answers each message
    until it returns Accepted or Refused: an Auth to send after the peer's
    Hello, a Welcome to send after the peer's Auth, then Accepted after the
    peer's Welcome. Any other turn is Refused. `expect` is the node
    this side dialled (None for an accepted connection: then only a
    higher-numbered node may connect, as in r2net).
    """

    def __init__(self, config: ClusterConfig, *, compressor: str, boot_id: int, expect: int | None = None,
                 nonce: bytes | None = None):
        self.config = config
        self.compressor = compressor
        self.boot_id = boot_id
        self.expect = expect
        self.nonce = nonce if nonce is not None else secrets.token_bytes(wire.NONCE_SIZE)
        self.peer_hello: Hello | None = None  # claims only, until its signature is checked
        self.verified: int | None = None  # the node number the peer proved (its signature checked out)
        self.proven: Accepted | None = None  # ... and its settings fit: its Welcome is awaited
        self.result: Accepted | Refused | None = None

    @property
    def claimed(self) -> int | None:
        """The node number the peer claims (not proven until Accepted)."""
        return self.peer_hello.node_number if self.peer_hello is not None else self.expect

    def hello(self) -> Hello:
        cfg = self.config
        return Hello(wire.VERSION, cfg.name, cfg.local.number, self.nonce, self.boot_id, self.compressor)

    def receive(self, m) -> Auth | Welcome | Accepted | Refused:
        if self.result is not None:
            return self.result
        out = self._receive(m)
        if type(out) in (Accepted, Refused):
            self.result = out
        return out

    def _receive(self, m) -> Auth | Welcome | Accepted | Refused:
        if type(m) is ErrorReply:
            return Refused(f"the peer refused this connection, saying: {_printable(m.message)}", peer=self.claimed,
                           tell=False)
        cfg = self.config
        if self.peer_hello is None:
            if type(m) is not Hello:
                return Refused(f"expected Hello, got {type(m).__name__}")
            why = self._check_hello(m)
            if why:
                return Refused(why)
            self.peer_hello = m
            signed = transcript(cfg.name, wire.VERSION, cfg.local.number, m.node_number, m.nonce, self.nonce,
                                self.boot_id, self.compressor)
            return Auth(keys.sign(cfg.private_key, signed))
        h = self.peer_hello
        spec = cfg.node(h.node_number)
        if self.proven is not None:
            if type(m) is not Welcome:
                return Refused(f"expected Welcome, got {type(m).__name__}", peer=h.node_number)
            return self.proven
        if type(m) is not Auth:
            return Refused(f"expected Auth, got {type(m).__name__}", AUTH, h.node_number)
        signed = transcript(cfg.name, wire.VERSION, h.node_number, cfg.local.number, self.nonce, h.nonce,
                            h.boot_id, h.compressor)
        if not keys.verify(spec.public_key, m.signature, signed):
            return Refused(f"authentication failed: the signature does not verify with node {spec.name}'s "
                           f"public_key (it is not node {spec.name}, or its key is not the one in the "
                           f"cluster file)", AUTH, h.node_number)
        self.verified = h.node_number
        if h.compressor != self.compressor:
            return Refused(f"node {spec.name} uses {_printable(h.compressor) or '(none)'}, this node uses "
                           f"{self.compressor}: "
                           f"all nodes of a cluster must use the same compressor", COMPRESSOR, h.node_number)
        self.proven = Accepted(h.node_number, h.boot_id, h.compressor)
        return Welcome()

    def _check_hello(self, m: Hello) -> str:
        cfg = self.config
        if m.version != wire.VERSION:
            return f"protocol version {m.version}, this node speaks {wire.VERSION}"
        if m.cluster != cfg.name:
            return f"cluster {m.cluster!r}, this node is in {cfg.name!r}"
        if m.node_number == cfg.local.number:
            return f"the peer claims this node's own number {m.node_number}"
        if cfg.node(m.node_number) is None:
            return f"node number {m.node_number} is not in the cluster"
        if self.expect is not None and m.node_number != self.expect:
            return f"dialled node {self.expect} but node {m.node_number} answered"
        if self.expect is None and m.node_number < cfg.local.number:
            return f"node {m.node_number} connected, but the higher-numbered node must connect"
        if m.nonce == self.nonce:
            return "the peer echoed our nonce"
        return ""


@dataclass(frozen=True)
class Claimed:
    """The peer's Hello is acceptable and says it is node `peer`: a claim, not proven yet."""

    peer: int


@dataclass(frozen=True)
class Proven:
    """The peer's signature checked out: it is node `peer`. Our Welcome is on its way; its is awaited."""

    peer: int


class Session:
    """One peer connection's byte stream, sans-I/O: the handshake, then framed messages.

    Before the handshake ends, `receive_data` returns handshake events; the
    one that ends it is Accepted (the messages after it in the same list are
    the peer's first requests) or Refused (the connection must close once
    `data_to_send()` is written; nothing more is read). Afterwards it returns
    only messages, and a framing error raises wire.WireError.
    """

    def __init__(self, config: ClusterConfig, *, compressor: str, boot_id: int, expect: int | None = None,
                 nonce: bytes | None = None):
        self.handshake = Handshake(config, compressor=compressor, boot_id=boot_id, expect=expect, nonce=nonce)
        self._decoder = wire.Decoder()
        self._out = bytearray(wire.encode(self.handshake.hello()))
        self.result: Accepted | Refused | None = None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data) -> list:
        if type(self.result) is Accepted:
            return self._decoder.feed(data)
        if self.result is not None:
            return []
        try:
            msgs = self._decoder.feed(data)
        except wire.WireError as e:  # e.g. a node of another protocol version: refused, counted
            return [self._refuse(Refused(f"protocol error: {e}", peer=self.handshake.claimed))]
        events: list = []
        for i, m in enumerate(msgs):
            out = self.handshake.receive(m)
            t = type(out)
            if t is Auth:
                self._out += wire.encode(out)
                events.append(Claimed(self.handshake.claimed))
            elif t is Welcome:
                self._out += wire.encode(out)
                events.append(Proven(self.handshake.verified))
            elif t is Accepted:
                self.result = out
                events.append(out)
                events.extend(msgs[i + 1:])
                return events
            else:
                events.append(self._refuse(out))
                return events
        return events

    def _refuse(self, r: Refused) -> Refused:
        self.result = r
        if r.tell:
            self._out += wire.encode(r.reply())
        return r
