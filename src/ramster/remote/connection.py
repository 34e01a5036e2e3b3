"""One peer connection over asyncio: bytes to messages, requests to replies, liveness.

A connection is an asyncio.Protocol that moves bytes between its socket and
a ramster.remote.session.Session; every handshake rule lives in the Session,
so this file only acts on what the Session decides. Its states:

    HANDSHAKE --Accepted--> READY --close/loss--> CLOSED
        |
        +--Refused--> REFUSED (our ErrorReply is flushed, then the socket closes)

Framing. Messages are wire.py's (a 16-byte header: magic, version, type,
status, msg_id, length; then the body). Requests carry a msg_id this side
allocates (1..2**32-1, skipping ids still pending); the peer's reply echoes
it. `pending` maps msg_id -> the future a caller awaits, and every request
has a deadline: a timer fails the future with PeerTimeout if no reply has
come, and losing the connection fails every pending future with
PeerUnavailable at once, so no caller waits longer than request_timeout. A
reply that matches nothing (it came after its deadline) is dropped.

Back pressure, both ways. Outgoing: above MAX_WRITE_BUFFER queued bytes the
transport pauses us and `request` waits (within its deadline) until it
drains, so a stalled peer costs bounded memory. Incoming: at most
MAX_HANDLERS requests are served at once; beyond that, requests already
decoded wait in `backlog` and the socket stops being read until the
handlers drop to half, so a flooding peer is throttled by TCP itself.

Liveness (ramster.remote.keepalive decides): `last_rx` is refreshed by any
bytes received; the timer task sends Keepalives after silence and closes the
connection after idle_timeout. A handshake that does not finish within
request_timeout closes the connection too.

The network (ramster.remote.peer.PeerNetwork) owns every connection and is
told of each transition through its connection_* methods; it is given to a
connection when the connection is made.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from . import session, wire
from .keepalive import DEAD, PROBE, Liveness, smoothed_rtt
from .wire import ErrorReply, Keepalive, KeepaliveReply, Unknown

log = logging.getLogger("ramster.remote")

MAX_HANDLERS = 128  # concurrent incoming requests per connection before reading pauses
MAX_WRITE_BUFFER = 4 << 20  # bytes queued to a peer before senders wait for it

HANDSHAKE, REFUSED, READY, CLOSED = range(4)
_FREE_FRAMES_REPLIES = (wire.PutReply, wire.GetReply, wire.Ack, KeepaliveReply)

Handler = Callable[[int, object], Awaitable[object]]


class PeerUnavailable(ConnectionError):
    """The peer is not connected, or the connection was lost before the reply came."""


class PeerTimeout(TimeoutError):
    """The peer is connected but did not answer within the request timeout."""


class PeerConnection(asyncio.Protocol):
    """One peer connection: handshake, request/reply matching, keepalives."""

    def __init__(self, net, expect: int | None):
        self.net = net
        self.expect = expect  # the node we dialled, None for an accepted connection
        cfg = net.config
        self.peer: int | None = None  # set once the peer proved it is that node
        self.peer_boot: int | None = None
        self.peer_state = None  # the network's record of that node, once READY
        self.state = HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.session = session.Session(cfg, compressor=net.compressor, boot_id=net.boot_id, expect=expect)
        self.liveness = Liveness(cfg.keepalive, cfg.idle_timeout)
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
        self.name = net.node_name(expect) if expect is not None else "incoming peer"

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
        self.net.connection_opened(self)
        self._flush_session()
        self.timer = self._spawn(self._timer())

    def data_received(self, data: bytes) -> None:
        self.last_rx = now = time.monotonic()
        try:
            msgs = self.session.receive_data(data)
        except wire.WireError as e:  # only after the handshake: the Session refuses before it
            self.close(f"protocol error: {e}", warn=True)
            return
        if self.state == READY:
            if msgs:
                self.peer_state.last_seen = now
        else:
            self._flush_session()
        for m in msgs:
            if self.state in (CLOSED, REFUSED):
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
        was_ready = self.state == READY
        self.state = CLOSED
        self.ready.set()  # wake the handshake wait so it sees CLOSED
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
        if not self.closed.done():
            self.closed.set_result(was_ready)
        self.net.connection_lost(self, was_ready)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # --- sending ------------------------------------------------------------------
    def _send(self, msg, msg_id: int | None = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.encode(msg, msg_id))

    def _flush_session(self) -> None:
        out = self.session.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def close(self, reason: str, warn: bool = False, quiet: bool = False) -> None:
        if self.state == CLOSED or self.transport is None:
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
        if self.state != READY or self.transport.is_closing():
            raise PeerUnavailable(f"{self.name} is not connected")
        deadline = self.loop.time() + timeout
        if not self.writable.is_set():
            try:
                await asyncio.wait_for(self.writable.wait(), timeout)
            except asyncio.TimeoutError:
                raise PeerTimeout(f"{self.name} has not taken queued data for {timeout:g} s") from None
            if self.state != READY or self.transport.is_closing():
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
        if self.state != READY:
            self._handshake_event(m)
            return
        t = type(m)
        if t in wire.REPLIES:
            fut = self.pending.pop(m.msg_id, None)
            if t in _FREE_FRAMES_REPLIES:
                self.peer_state.free_frames = m.free_frames
            if fut is not None and not fut.done():
                fut.set_result(m)
            else:
                log.debug("%s: late or unmatched reply %s #%d", self.name, t.__name__, m.msg_id)
        elif t is Keepalive:
            self._send(KeepaliveReply(self.net.local_free_frames()), m.msg_id)
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
            if self.state != CLOSED:
                while self.backlog and self.handlers < MAX_HANDLERS:
                    self.handlers += 1
                    self._spawn(self._serve(self.backlog.popleft()))
                if self.reading_paused and not self.backlog and self.handlers <= MAX_HANDLERS // 2:
                    self.reading_paused = False
                    self.transport.resume_reading()

    def _handshake_event(self, ev) -> None:
        t = type(ev)
        if t is session.Claimed:
            if self.expect is None:
                # a claim until the signature is checked: the log must not say it was that node
                self.name = f"peer {self.addr or '?'} claiming {self.net.node_name(ev.peer)}"
        elif t is session.Proven:
            self.name = self.net.node_name(ev.peer)
        elif t is session.Accepted:
            self.peer, self.peer_boot = ev.peer, ev.boot_id
            self.name = self.net.node_name(ev.peer)
            self.state = READY
            self.ready.set()
            self.peer_state = self.net.connection_ready(self)
        else:
            self._refuse(ev)

    def _refuse(self, r: session.Refused) -> None:
        """Count the refusal, log it (rate-limited per claimed node), close once the peer is told why."""
        self.state = REFUSED  # nothing more is read; the timer aborts if the close hangs
        verified = self.session.handshake.verified
        if verified is not None:  # who it is was proven; only its settings differ
            self.name = self.net.node_name(verified)
        self.net.connection_refused(r)
        self.net.refusal_log(r.peer)("%s: %s%s", self.name, "refused: " if r.tell else "", r.reason)
        if not self.reason:
            self.reason = f"refused: {r.reason}"
        # close, not abort: the Session's ErrorReply goes out first, so the peer can log why
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
            if self.state == REFUSED:  # a peer that does not take our last words
                self.close(self.reason, quiet=True)
            else:
                self.close(f"no handshake within {cfg.request_timeout:g} s", warn=True)
            return
        if self.state != READY:
            return
        self._spawn(self._keepalive())  # an rtt and free_frames right away
        while self.state == READY:
            action, wait = self.liveness.check(time.monotonic(), self.last_rx, self.keepalive_running)
            if action == DEAD:
                self.close(f"nothing received for {cfg.idle_timeout:g} s", warn=True)
                return
            if action == PROBE:
                self._spawn(self._keepalive())
            await asyncio.sleep(wait)

    async def _keepalive(self) -> None:
        self.keepalive_running = True
        try:
            t0 = time.monotonic()
            reply = await self.request(Keepalive(), self.net.config.request_timeout)
            rtt = time.monotonic() - t0
            if type(reply) is KeepaliveReply:
                self.peer_state.rtt = smoothed_rtt(self.peer_state.rtt, rtt)
                self.net.state_changed()
        except (PeerTimeout, PeerUnavailable):
            pass  # the idle timeout decides when the peer is dead
        finally:
            self.keepalive_running = False
