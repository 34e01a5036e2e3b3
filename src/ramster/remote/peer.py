"""RAMster peer connections over asyncio: one TCP connection per pair of nodes.

As in r2net (SPEC §5.8) the higher-numbered node connects and the lower one
accepts, so a pair never races to open two connections. Unlike r2net:

- peers prove who they are: each signs the handshake with its own Ed25519
  key, checked against the public key the cluster file lists for the node it
  claims (ramster.remote.session says what is signed and why), optionally
  inside TLS;
- every request has a timeout, so a dead or paused peer costs a caller at
  most `request_timeout`, never a hang;
- a peer announces a random boot id (signed), so a node that restarted (and
  lost every page it held) is told apart from one that merely reconnected;
- a connection that is refused (a bad signature, another compressor, a
  stranger) is counted, logged at a readable rate, and told why; the node it
  claimed to be keeps its connection: only a connection that completed the
  handshake replaces one, and only the real node can complete it.

Without TLS the signatures only prove who opened the connection; an attacker
able to rewrite packets in flight can still tamper with it afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import inspect
import logging
import random
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import compress
from ..config import ConfigError
from ..lograte import Throttled
from . import session, wire
from .clusterconf import ClusterConfig, NodeSpec, load_cluster
from .wire import Auth, ErrorReply, Keepalive, KeepaliveReply, Unknown

log = logging.getLogger("ramster.remote")

PROTOCOL_VERSION = wire.VERSION
MAX_HANDLERS = 128  # concurrent incoming requests per connection before reading pauses
MAX_WRITE_BUFFER = 4 << 20  # bytes queued to a peer before senders wait for it
RTT_WEIGHT = 0.25  # EWMA weight of a new keepalive round trip
REFUSAL_LOG_INTERVAL = 30.0  # seconds between log lines about one node's refused connections

_HANDSHAKE, _REFUSED, _READY, _CLOSED = range(4)
_FREE_FRAMES_REPLIES = (wire.PutReply, wire.GetReply, wire.Ack, KeepaliveReply)

Handler = Callable[[int, object], Awaitable[object]]


class PeerUnavailable(ConnectionError):
    """The peer is not connected, or the connection was lost before the reply came."""


class PeerTimeout(TimeoutError):
    """The peer is connected but did not answer within the request timeout."""


@dataclass
class PeerState:
    name: str
    number: int
    connected: bool = False
    rtt: float | None = None  # seconds, EWMA of keepalive round trips
    free_frames: int | None = None  # as last reported by the peer
    last_seen: float | None = None  # time.monotonic() of the last message received
    boot_id: int | None = None
    connects: int = 0  # successful handshakes
    # connections claiming this node that were refused: the signature failed, or
    # the (proven) node uses another compressor
    refused: int = 0


class _Connection(asyncio.Protocol):
    """One peer connection: handshake, request/reply matching, keepalives."""

    def __init__(self, net: PeerNetwork, expect: int | None):
        self.net = net
        self.expect = expect  # the node we dialled, None for an accepted connection
        self.peer: int | None = None  # set once the peer proved it is that node
        self.peer_boot: int | None = None
        self.state = _HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.decoder = wire.Decoder()
        self.handshake = session.Handshake(net.config, compressor=net.compressor, boot_id=net.boot_id,
                                           expect=expect)
        self.pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        self.ready = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.last_rx = time.monotonic()
        self.reason = ""
        self.handlers = 0
        self.reading_paused = False
        self.backlog: collections.deque = collections.deque()
        self.tasks: set[asyncio.Task] = set()
        self.keepalive_running = False
        self.timer: asyncio.Task | None = None
        self.addr = ""
        self.name = _node_name(net.config, expect) if expect is not None else "incoming peer"

    # --- asyncio callbacks ------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        # a batch of full PutPages is ~256 KiB; senders only wait when several are stuck
        transport.set_write_buffer_limits(high=MAX_WRITE_BUFFER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        addr = transport.get_extra_info("peername")
        self.addr = f"{addr[0]}:{addr[1]}" if addr else ""
        if self.expect is None:
            self.name = f"peer {self.addr}" if addr else "incoming peer"
        self.net._all.add(self)
        self._send(self.handshake.hello())
        self.timer = self._spawn(self._timer())

    def data_received(self, data: bytes) -> None:
        self.last_rx = now = time.monotonic()
        try:
            msgs = self.decoder.feed(data)
        except wire.WireError as e:
            if self.state == _HANDSHAKE:  # e.g. a node of another protocol version: refused, counted
                self._refuse(session.Refused(f"protocol error: {e}", peer=self.handshake.claimed))
            else:
                self.close(f"protocol error: {e}", warn=True)
            return
        if self.state == _READY and msgs:
            self.net._states[self.peer].last_seen = now
        for m in msgs:
            if self.state in (_CLOSED, _REFUSED):
                return
            try:
                self._dispatch(m)
            except Exception as e:  # a bug must cost one connection, not the node
                log.exception("%s: internal error", self.name)
                self.close(f"internal error: {e!r}", warn=True)
                return

    def eof_received(self) -> bool:
        self.reason = self.reason or "closed by the peer"
        return False

    def connection_lost(self, exc) -> None:
        if exc is not None and not self.reason:
            self.reason = f"connection lost: {exc}"
        was_ready = self.state == _READY
        self.state = _CLOSED
        self.ready.set()  # wake the handshake wait so it sees _CLOSED
        self.writable.set()
        self.backlog.clear()  # nobody is left to answer
        err = PeerUnavailable(f"{self.name}: {self.reason or 'connection closed'}")
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)
        # handlers run to the end (the engine's state must stay consistent); the timer stops
        if self.timer is not None:
            self.timer.cancel()
        self.net._all.discard(self)
        if not self.closed.done():
            self.closed.set_result(was_ready)
        self.net._lost(self, was_ready)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # --- sending ------------------------------------------------------------------
    def _send(self, msg, msg_id: int | None = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.encode(msg, msg_id))

    def close(self, reason: str, warn: bool = False, quiet: bool = False) -> None:
        if self.state == _CLOSED or self.transport is None:
            return
        if not self.reason:
            self.reason = reason
        if not quiet:
            log.log(logging.WARNING if warn else logging.INFO, "%s: closing: %s", self.name, reason)
        # abort, not close: a paused peer would never drain our buffer, and
        # nothing queued is worth waiting for once the connection is given up
        self.transport.abort()

    def _alloc_id(self) -> int:
        while True:
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            if self._next_id not in self.pending:
                return self._next_id

    async def request(self, msg, timeout: float):
        if self.state != _READY or self.transport.is_closing():
            raise PeerUnavailable(f"{self.name} is not connected")
        deadline = self.loop.time() + timeout
        if not self.writable.is_set():
            try:
                await asyncio.wait_for(self.writable.wait(), timeout)
            except asyncio.TimeoutError:
                raise PeerTimeout(f"{self.name} has not taken queued data for {timeout:g} s") from None
            if self.state != _READY or self.transport.is_closing():
                raise PeerUnavailable(f"{self.name}: {self.reason or 'connection closed'}")
        mid = self._alloc_id()
        data = wire.encode(msg, mid)
        fut = self.loop.create_future()
        self.pending[mid] = fut
        timer = self.loop.call_at(deadline, self._expire, mid, timeout)
        try:
            self.transport.write(data)
            return await fut
        finally:
            timer.cancel()
            if self.pending.get(mid) is fut:
                del self.pending[mid]

    def _expire(self, mid: int, timeout: float) -> None:
        fut = self.pending.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_exception(PeerTimeout(f"{self.name} did not answer within {timeout:g} s"))

    # --- receiving -------------------------------------------------------------------
    def _dispatch(self, m) -> None:
        if self.state != _READY:
            self._handshake(m)
            return
        t = type(m)
        if t in wire.REPLIES:
            fut = self.pending.pop(m.msg_id, None)
            if t in _FREE_FRAMES_REPLIES:
                self.net._states[self.peer].free_frames = m.free_frames
            if fut is not None and not fut.done():
                fut.set_result(m)
            else:
                log.debug("%s: late or unmatched reply %s #%d", self.name, t.__name__, m.msg_id)
        elif t is Keepalive:
            self._send(KeepaliveReply(self.net._free_frames()), m.msg_id)
        elif t in wire.REQUESTS:
            if self.handlers >= MAX_HANDLERS:
                # the rest of this read waits here; later reads wait in the socket
                self.backlog.append(m)
                if not self.reading_paused:
                    self.reading_paused = True
                    self.transport.pause_reading()
            else:
                self.handlers += 1
                self._spawn(self._serve(m))
        elif t is Unknown:
            self._send(ErrorReply(wire.ENOPROTOOPT, f"unknown message type {m.type}"), m.msg_id)
        else:
            self.close(f"unexpected {t.__name__} after the handshake", warn=True)

    async def _serve(self, m) -> None:
        try:
            try:
                reply = await self.net.handler(self.peer, m)
                if reply is None or type(reply) not in wire.TYPE_OF:
                    raise TypeError(f"handler returned {reply!r} for {type(m).__name__}")
                data = wire.encode(reply, m.msg_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("%s: %s failed: %r", self.name, type(m).__name__, e)
                status = getattr(e, "status", wire.EIO)
                data = wire.encode(ErrorReply(status if isinstance(status, int) and status < 0 else wire.EIO,
                                              f"{type(e).__name__}: {e}"), m.msg_id)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)
        finally:
            self.handlers -= 1
            if self.state != _CLOSED:
                while self.backlog and self.handlers < MAX_HANDLERS:
                    self.handlers += 1
                    self._spawn(self._serve(self.backlog.popleft()))
                if self.reading_paused and not self.backlog and self.handlers <= MAX_HANDLERS // 2:
                    self.reading_paused = False
                    self.transport.resume_reading()

    def _handshake(self, m) -> None:
        out = self.handshake.receive(m)
        t = type(out)
        if t is Auth:
            if self.expect is None:
                # a claim until the signature is checked: the log must not say it was that node
                n = self.handshake.claimed
                self.name = f"peer {self.addr or '?'} claiming {_node_name(self.net.config, n)}"
            self._send(out)
        elif t is wire.Welcome:
            self.name = _node_name(self.net.config, self.handshake.verified)
            self._send(out)
        elif t is session.Accepted:
            self.peer, self.peer_boot = out.peer, out.boot_id
            self.name = _node_name(self.net.config, out.peer)
            self.state = _READY
            self.ready.set()
            self.net._ready(self)
        else:
            self._refuse(out)

    def _refuse(self, r: session.Refused) -> None:
        """Count the refusal, log it (rate-limited per claimed node), tell the peer why, close."""
        self.state = _REFUSED  # nothing more is read; the timer aborts if the close hangs
        if self.handshake.verified is not None:  # who it is was proven; only its settings differ
            self.name = _node_name(self.net.config, self.handshake.verified)
        self.net._refused(r)
        self.net._refusal_log(r.peer)("%s: %s%s", self.name, "refused: " if r.tell else "", r.reason)
        if not self.reason:
            self.reason = f"refused: {r.reason}"
        if r.tell:
            self._send(r.reply())
        # close, not abort: the reply goes out first, so the peer can log why
        self.transport.close()

    # --- timers --------------------------------------------------------------------------
    def _spawn(self, coro) -> asyncio.Task:
        t = self.loop.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    async def _timer(self) -> None:
        cfg = self.net.config
        try:
            await asyncio.wait_for(self.ready.wait(), cfg.request_timeout)
        except asyncio.TimeoutError:
            if self.state == _REFUSED:  # a peer that does not take our last words
                self.close(self.reason, quiet=True)
            else:
                self.close(f"no handshake within {cfg.request_timeout:g} s", warn=True)
            return
        if self.state != _READY:
            return
        self._spawn(self._keepalive())  # an rtt and free_frames right away
        while self.state == _READY:
            now = time.monotonic()
            silent = now - self.last_rx
            if silent >= cfg.idle_timeout:
                self.close(f"nothing received for {cfg.idle_timeout:g} s", warn=True)
                return
            if silent >= cfg.keepalive and not self.keepalive_running:
                self._spawn(self._keepalive())
            wake = self.last_rx + (cfg.idle_timeout if self.keepalive_running or silent >= cfg.keepalive
                                   else cfg.keepalive)
            # a keepalive in flight may finish (and refresh last_rx) before the idle deadline
            await asyncio.sleep(max(0.005, min(wake - now, cfg.keepalive)))

    async def _keepalive(self) -> None:
        self.keepalive_running = True
        try:
            t0 = time.monotonic()
            reply = await self.request(Keepalive(), self.net.config.request_timeout)
            rtt = time.monotonic() - t0
            if type(reply) is KeepaliveReply:
                st = self.net._states[self.peer]
                st.rtt = rtt if st.rtt is None else (1 - RTT_WEIGHT) * st.rtt + RTT_WEIGHT * rtt
                self.net._changed()
        except (PeerTimeout, PeerUnavailable):
            pass  # the idle timeout decides when the peer is dead
        finally:
            self.keepalive_running = False


class PeerNetwork:
    """This node's connections to every other node of the cluster."""

    def __init__(self, config: ClusterConfig, handler: Handler, compressor: str = compress.DEFAULT):
        """`compressor` names the codec of the pages this node sends; a peer with another is refused."""
        self.config = config
        self.handler = handler
        self.compressor = compressor
        # on_peer_change(number, connected, restarted); may return an awaitable
        self.on_peer_change: Callable[[int, bool, bool], object] | None = None
        self.free_frames: Callable[[], int] = lambda: 0
        self.boot_id = secrets.randbits(64)
        self.auth_failures = 0  # connections whose signature did not verify
        self.compressor_mismatches = 0  # proven nodes refused for using another compressor
        self.handshakes_refused = 0  # every connection this node refused, the two above included
        self._refusal_logs: dict[int | None, Throttled] = {}
        self._states = {n.number: PeerState(n.name, n.number) for n in config.peers}
        self._conns: dict[int, _Connection] = {}
        self._all: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._change = asyncio.Event()
        self._ssl_server, self._ssl_client = _ssl_contexts(config)

    @property
    def local(self) -> NodeSpec:
        return self.config.local

    # --- life cycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on the local node's address and start dialling the lower-numbered nodes."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, None), cfg.local.host, cfg.local.port, backlog=64,
            reuse_address=True, ssl=self._ssl_server,
            ssl_handshake_timeout=cfg.request_timeout if self._ssl_server else None)
        log.info("node %d (%s) listening on %s", cfg.local.number, cfg.local.name, cfg.local.address)
        for spec in cfg.peers:
            if spec.number < cfg.local.number:
                self._spawn(self._dial(spec))

    async def stop(self) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            self._server.close()
        conns = list(self._all)
        for c in conns:
            c.close("shutting down")
        waits = [c.closed for c in conns] + list(self._tasks)
        if waits:
            await asyncio.wait(waits, timeout=self.config.request_timeout)
        handlers = [t for c in conns for t in c.tasks if t is not c.timer]
        if handlers:
            await asyncio.wait(handlers, timeout=self.config.request_timeout)
        self._conns.clear()
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _dial(self, spec: NodeSpec) -> None:
        """Keep one connection to `spec` open, retrying with capped exponential backoff."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        delay = cfg.reconnect_delay
        while not self._stopping:
            conn: _Connection | None = None
            try:
                _, conn = await asyncio.wait_for(loop.create_connection(
                    lambda: _Connection(self, spec.number), spec.host, spec.port,
                    ssl=self._ssl_client, server_hostname=spec.host if self._ssl_client else None,
                    ssl_handshake_timeout=cfg.request_timeout if self._ssl_client else None),
                    cfg.request_timeout)
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                log.debug("node %d (%s): connect to %s failed: %s", spec.number, spec.name, spec.address,
                          e or type(e).__name__)
            if conn is not None:
                was_ready = await conn.closed
                if was_ready:
                    delay = cfg.reconnect_delay
            if self._stopping:
                return
            # jitter keeps a cluster that lost a node from redialling in lockstep
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, cfg.reconnect_max)

    # --- state changes ---------------------------------------------------------------------
    def _ready(self, conn: _Connection) -> None:
        n = conn.peer
        old = self._conns.get(n)
        self._conns[n] = conn
        if old is not None:
            # Only a connection that completed the signed handshake gets here, so
            # this is the node itself: it dialled again, having given up on the old one.
            old.close("replaced by a new connection from the same node")
        st = self._states[n]
        restarted = st.boot_id is not None and st.boot_id != conn.peer_boot
        st.boot_id = conn.peer_boot
        st.connected = True
        st.connects += 1
        st.last_seen = time.monotonic()
        if restarted:
            st.rtt = None
            st.free_frames = None
        log.info("%s: connected%s", conn.name, " (restarted: its pages are gone)" if restarted else "")
        self._notify(n, True, restarted)

    def _lost(self, conn: _Connection, was_ready: bool) -> None:
        if not was_ready or self._conns.get(conn.peer) is not conn:
            self._changed()
            return
        del self._conns[conn.peer]
        self._states[conn.peer].connected = False
        log.info("%s: disconnected (%s)", conn.name, conn.reason or "closed")
        if not self._stopping:
            self._notify(conn.peer, False, False)
        else:
            self._changed()

    def _refused(self, r: session.Refused) -> None:
        if not r.tell:
            return  # the peer refused us: its own counters say so
        self.handshakes_refused += 1
        if r.kind == session.AUTH:
            self.auth_failures += 1
        elif r.kind == session.COMPRESSOR:
            self.compressor_mismatches += 1
        if r.kind != session.OTHER and r.peer in self._states:
            self._states[r.peer].refused += 1
        self._changed()

    def _refusal_log(self, claimed: int | None) -> Throttled:
        # one per claimed node (at most 16 and "unknown"), so a node retrying
        # does not hide another node's refusals
        key = claimed if claimed in self._states else None
        t = self._refusal_logs.get(key)
        if t is None:
            t = self._refusal_logs[key] = Throttled(log, logging.WARNING, REFUSAL_LOG_INTERVAL)
        return t

    def _notify(self, n: int, connected: bool, restarted: bool) -> None:
        self._changed()
        cb = self.on_peer_change
        if cb is None:
            return
        try:
            r = cb(n, connected, restarted)
            if inspect.isawaitable(r):
                self._spawn(r)
        except Exception:
            log.exception("on_peer_change(%d, %s, %s) failed", n, connected, restarted)

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _free_frames(self) -> int:
        try:
            return max(0, int(self.free_frames()))
        except Exception:
            log.exception("free_frames() failed")
            return 0

    # --- public ------------------------------------------------------------------------------
    async def request(self, node_number: int, msg, timeout: float | None = None):
        """Send a request and return the peer's reply (ErrorReply when the peer refused it).

        Raises PeerUnavailable when the node is not connected or the connection
        is lost while waiting, PeerTimeout when no reply comes within `timeout`
        (default: the cluster's request_timeout).
        """
        if type(msg) not in wire.REQUESTS:
            raise TypeError(f"{type(msg).__name__} is not a request")
        conn = self._conns.get(node_number)
        if conn is None:
            raise PeerUnavailable(f"node {node_number} is not connected")
        return await conn.request(msg, self.config.request_timeout if timeout is None else timeout)

    def connected(self, node_number: int) -> bool:
        return node_number in self._conns

    def counters(self) -> dict[str, int]:
        """The network's counters under their /stats names."""
        return {"ramster.auth_failures": self.auth_failures,
                "ramster.compressor_mismatches": self.compressor_mismatches,
                "ramster.handshakes_refused": self.handshakes_refused}

    def peers(self) -> list[PeerState]:
        """A snapshot of every other node's state, by number."""
        return [dataclasses.replace(s) for _, s in sorted(self._states.items())]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate() holds, re-checking whenever a peer's state changes.

        State changes are connects, disconnects, refusals and measured round trips.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._change.wait(), remaining)
            except asyncio.TimeoutError:
                return predicate()
        return True


def _node_name(cfg: ClusterConfig, number: int | None) -> str:
    spec = cfg.node(number) if number is not None else None
    return f"node {number} ({spec.name})" if spec is not None else f"node {number}"


def _ssl_contexts(cfg: ClusterConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    if not cfg.tls:
        return None, None
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        ctx.load_verify_locations(cafile=cfg.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    # Nodes are addressed by IP and identified by the signed handshake, not by DNS names.
    client.check_hostname = False
    return server, client


# --- a stand-alone peer: a plain page store, for tests and benchmarks ----------------------------
class MemoryStore:
    """A request handler that keeps foreign pages in a dict, up to `frames` pages."""

    def __init__(self, frames: int = 1 << 20):
        self.frames = frames
        self.pages: dict[tuple, tuple[int, bytes]] = {}

    def free(self) -> int:
        return max(0, self.frames - len(self.pages))

    async def __call__(self, node: int, m):
        t = type(m)
        if t is wire.PutPages:
            statuses = []
            for p in m.pages:
                key = (node, m.pool_id, m.persistent, p.oid, p.index)
                if key in self.pages or self.free() > 0:
                    self.pages[key] = (p.checksum, p.data)
                    statuses.append(0)
                else:
                    statuses.append(wire.ENOMEM)
            return wire.PutReply(statuses, self.free())
        if t is wire.Get:
            key = (node, m.pool_id, m.persistent, m.oid, m.index)
            hit = self.pages.pop(key, None) if m.free else self.pages.get(key)
            if hit is None:
                return wire.GetReply(False, 0, b"", self.free())
            return wire.GetReply(True, hit[0], hit[1], self.free())
        if t is wire.FlushPage:
            self.pages.pop((node, m.pool_id, m.persistent, m.oid, m.index), None)
        elif t is wire.FlushObject:
            for k in [k for k in self.pages if k[:4] == (node, m.pool_id, m.persistent, m.oid)]:
                del self.pages[k]
        elif t is wire.DestroyPool:
            for k in [k for k in self.pages if k[:3] == (node, m.pool_id, m.persistent)]:
                del self.pages[k]
        else:
            return ErrorReply(wire.ENOPROTOOPT, f"{t.__name__} is not handled here")
        return wire.Ack(self.free())


async def _serve(args) -> None:
    cfg = load_cluster(args.config, args.name)
    store = MemoryStore(args.frames)
    net = PeerNetwork(cfg, store, compressor=args.compressor)
    net.free_frames = store.free
    await net.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {cfg.local.address}", flush=True)
    print(f"boot id {net.boot_id}", flush=True)
    print("ready", flush=True)
    await stop.wait()
    await net.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ramster.remote.peer",
                                description="Run one RAMster peer that stores foreign pages in memory.")
    p.add_argument("--config", required=True, help="the cluster's TOML file")
    p.add_argument("--name", required=True, help="this node's name in the file")
    p.add_argument("--frames", type=int, default=1 << 20, help="pages it will hold")
    p.add_argument("--compressor", default=compress.DEFAULT,
                   help=f"the compressor it announces (default: {compress.DEFAULT}); peers must use the same")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        asyncio.run(_serve(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
