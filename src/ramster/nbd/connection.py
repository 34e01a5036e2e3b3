"""One NBD client connection: the asyncio Protocol between a socket and its protocol core.

Bytes read from the socket go into the sans-I/O core (protocol.py); the
`Request`s it hands out run against the export (dispatch.py), each as its
own task so a slow export call (a remote page) does not hold up the others,
and replies go out in completion order, which NBD allows. Reads and writes an
export can serve at once skip the task, and the replies of everything served
during one read of the socket go out in one write. At most MAX_INFLIGHT
requests run at once; the socket is not read while that many are busy or
while replies pile up unsent.

What the connection holds, in bytes (admission.py has the arithmetic):

    _partial    the WRITE payload still arriving
    admitted    REQUEST_COST + the READ/WRITE length of every request the core
                handed out, until its reply is handed to the transport
    _buffered   reply bytes the transport has not sent while it has paused writing

Their sum is `_held`, mirrored in the server-wide `Admission.held`; before
each `feed()` the core gets as credit what is left of both caps.

Timers, one of each kind at most and armed only while it may fire (a timer
pending in the loop costs every loop iteration a little): the handshake's,
from connection to `Negotiated`; a request's, from its first byte while the
socket is being read; and the drain timer, while the transport has paused
writing and no reply bytes move. Each drops the connection with one WARNING.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket

from .admission import Admission
from .base import Export
from .dispatch import run, run_flush, run_now
from .protocol import UNLIMITED, Close, NbdConnection, Negotiated, Request
from .wire import CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES

log = logging.getLogger("ramster.nbd")

MAX_INFLIGHT = 64
# A batch of replies up to this size is joined into one write (one syscall). In
# a bigger one, pieces of _BIG_PIECE or more are written as they are and the
# small ones joined in groups, so a batch of big reads is never held twice.
_JOIN_LIMIT = 512 * 1024
_BIG_PIECE = 64 * 1024
_WRITE_LIKE = (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES)
_conn_ids = itertools.count(1)


class NbdClient(asyncio.Protocol):
    """One client connection: feeds the core, runs its requests, writes replies."""

    def __init__(self, server, core: NbdConnection):
        """`server` (server.NbdServer) admits and forgets connections and says when it
        is stopping; `core` is this connection's protocol state machine."""
        self._server = server
        self._admission: Admission = server.admission
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self.core = core
        self.export: Export | None = None
        self.peer = "?"
        self._inflight = 0
        self._queue: collections.deque[Request] = collections.deque()
        self._tasks: set[asyncio.Task] = set()
        self._writes: set[asyncio.Task] = set()
        self._reading_paused = False
        self._writing_paused = False
        self._send_scheduled = False
        self._feeding = False  # inside data_received: replies wait for its one write
        self._closing = False
        self._lost = False
        self._refused = False
        self._reason = ""
        self._violation = False
        self._requests = 0
        # Bytes held (module docstring), and the parts of it released by events
        # other than a request finishing.
        self._held = 0
        self._partial = 0    # a WRITE payload still arriving
        self._replied = 0    # requests answered, replies not handed to the transport yet
        self._buffered = 0   # unsent reply bytes while the transport has paused writing
        # Timeouts: one timer at most of each kind, armed only while it may fire
        # (a timer pending in the loop costs every loop iteration a little).
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._request_since: float | None = None
        self._written = 0
        self._drain_sent = 0
        self._drain_since = 0.0

    # --- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        server = self._server
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            peer = transport.get_extra_info("peername")
            self.peer = f"{peer[0]}:{peer[1]}" if peer else "tcp"
        else:
            self.peer = f"unix#{next(_conn_ids)}"
        if not server.admit(self):
            self._refused = True
            transport.abort()
            return
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if server.handshake_timeout:
            self._handshake_timer = self._loop.call_later(server.handshake_timeout, self._handshake_expired)
        if server.stopping:
            self.core.begin_shutdown()
        log.debug("%s: connected", self.peer)
        self._send()

    def data_received(self, data: bytes) -> None:
        try:
            self._process(data)
        except Exception as exc:  # a bug must cost one connection, not the server
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        log.error("%s: internal error, dropping connection: %r", self.peer, exc)
        self._reason = f"internal error: {exc!r}"
        self._transport.abort()

    def _process(self, data: bytes) -> None:
        core = self.core
        adm = self._admission
        while True:
            held = self._held
            if self._server.stopping:
                core.credit = UNLIMITED  # every request is refused with ESHUTDOWN now
            else:
                core.credit = min(adm.connection_cap - held, adm.node_cap - adm.held)
            core.overdraw = not held
            events = core.feed(data)
            partial = core.partial_size
            delta = core.admitted + partial - self._partial
            if delta:
                core.admitted = 0
                self._partial = partial
                self._held = held + delta
                adm.held += delta
                if delta < 0 and adm.blocked:
                    adm.wake_soon()
            # Requests served at once (_run_now) reply into the core's buffer; one
            # write after the whole batch sends them all, not one syscall each.
            self._feeding = True
            try:
                for ev in events:
                    if type(ev) is Request:
                        self._submit(ev)
                    elif type(ev) is Negotiated:
                        self.export = ev.export
                        if self._handshake_timer is not None:
                            self._handshake_timer.cancel()
                            self._handshake_timer = None
                        log.debug("%s: using export %r", self.peer, ev.export.name)
                    else:
                        self._begin_close(ev)
            finally:
                self._feeding = False
            self._send()
            # In the handshake the core stops for its unsent option replies, not
            # for credit: they are with the transport now, so it may go on unless
            # the client is not reading them (then resume_writing wakes it).
            if not (core.blocked and self.export is None and not self._writing_paused
                    and not self._transport.is_closing()):
                break
            data = b""
        if core.blocked:
            adm.blocked.add(self)
        if (self._closing or self._writing_paused or core.blocked or self._inflight >= MAX_INFLIGHT
                or bool(self._queue)) != self._reading_paused:
            self._update_reading()
        if core.mid_request and not self._reading_paused:
            if self._request_since is None:
                self._request_began()
        elif self._request_since is not None:
            self._request_since = None

    def retry(self) -> None:
        """Parsing stopped for want of credit: try again now that some was released."""
        try:
            self._process(b"")
        except Exception as exc:
            self._internal_error(exc)
        if not self.core.blocked:
            self._admission.blocked.discard(self)
            if self._closing:
                self._maybe_finish()

    def eof_received(self) -> bool:
        if not self._reason:
            self._reason = "client closed the connection"
        # Answer what is in flight, then close (returning False would close now).
        self._closing = True
        self._maybe_finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._lost = True
        if exc is not None and not self._reason:
            self._reason = f"connection lost: {exc}"
        log.log(logging.WARNING if self._violation else logging.INFO,
                "%s: disconnected (%s) after %d requests",
                self.peer, self._reason or "closed", self._requests)
        # What nothing else will release now; requests still running release their own.
        release = self._partial + self._buffered
        for req in self._queue:
            release += req.cost
        self._queue.clear()
        self._partial = self._buffered = 0
        self._admission.blocked.discard(self)
        if release:
            self._adjust(-release)
        for timer in (self._handshake_timer, self._request_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._handshake_timer = self._request_timer = self._drain_timer = None
        self._maybe_finish()

    def pause_writing(self) -> None:
        self._writing_paused = True
        # The transport calls this from inside write(): its buffer already has the data.
        self._drain_sent = self._written - self._transport.get_write_buffer_size()
        self._drain_since = now = self._loop.time()
        timeout = self._server.drain_timeout
        if timeout and self._drain_timer is None:
            self._drain_timer = self._loop.call_at(now + timeout, self._drain_check)
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        buffered = self._buffered
        if buffered:
            self._buffered = 0
            self._adjust(-buffered)
        self._update_reading()

    # --- memory accounting --------------------------------------------------------------
    def _adjust(self, delta: int) -> None:
        self._held += delta
        adm = self._admission
        adm.held += delta
        if delta < 0 and adm.blocked:
            adm.wake_soon()

    # --- request scheduling ------------------------------------------------------------
    def _submit(self, req: Request) -> None:
        self._requests += 1
        if self._inflight >= MAX_INFLIGHT or self._queue:
            self._queue.append(req)
        else:
            self._start(req)

    def _start(self, req: Request) -> None:
        self._inflight += 1
        cmd = req.command
        if (cmd == CMD_READ or (cmd == CMD_WRITE and not req.flags & CMD_FLAG_FUA)) and run_now(self, req):
            return
        if type(req.data) is memoryview:
            # A view pins the whole socket read it came from for as long as the task runs.
            req.data = bytes(req.data)
        if cmd == CMD_FLUSH:
            # Writes received before the flush must be covered by it.
            task = self._loop.create_task(run_flush(self, req, tuple(self._writes)))
        else:
            task = self._loop.create_task(run(self, req))
            if cmd in _WRITE_LIKE:
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_done(self, req: Request) -> None:
        self._inflight -= 1
        # Released once the reply is handed to the transport (_send).
        self._replied += req.cost
        req.data = None
        if self._feeding:
            pass  # data_received sends once its batch is done
        elif self._inflight == 0:
            self._send()
        elif not self._send_scheduled:
            # Other requests are running: batch their replies into one write
            # (one syscall) at the end of this loop iteration.
            self._send_scheduled = True
            self._loop.call_soon(self._send)
        queue = self._queue
        while queue and self._inflight < MAX_INFLIGHT:
            self._start(queue.popleft())
        if self._reading_paused:
            self._update_reading()
        if self._inflight == 0:
            self._maybe_finish()

    def _update_reading(self) -> None:
        if self._lost or self._transport is None:
            return
        pause = (self._closing or self._writing_paused or bool(self._queue)
                 or self._inflight >= MAX_INFLIGHT or self.core.blocked)
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
                # The time we do not read is not the client's.
                self._request_since = None
            else:
                self._transport.resume_reading()
                if self.core.mid_request:
                    self._request_began()

    def _send(self) -> None:
        self._send_scheduled = False
        chunks = self.core.take_output()
        if chunks and not self._lost and not self._transport.is_closing():
            if len(chunks) == 1:
                data = chunks[0]
                self._written += len(data)
                self._transport.write(data)
            else:
                self._write(chunks)
        replied = self._replied
        if replied:
            self._replied = 0
            self._held -= replied
            adm = self._admission
            adm.held -= replied
            if adm.blocked:
                adm.wake_soon()
        if self._writing_paused and not self._lost:
            buffered = self._transport.get_write_buffer_size()
            if buffered != self._buffered:
                self._adjust(buffered - self._buffered)
                self._buffered = buffered

    def _write(self, chunks: list) -> None:
        transport = self._transport
        total = sum(map(len, chunks))
        self._written += total
        if total <= _JOIN_LIMIT:
            transport.write(b"".join(chunks))
            return
        # Big replies: the transport copies what it cannot send at once, so each
        # piece is let go as soon as it is written instead of joined first.
        small: list = []
        size = 0
        for i, c in enumerate(chunks):
            chunks[i] = None
            n = len(c)
            if n >= _BIG_PIECE:
                if small:
                    transport.write(b"".join(small))
                    small = []
                    size = 0
                transport.write(c)
            else:
                small.append(c)
                size += n
                if size >= _JOIN_LIMIT:
                    transport.write(b"".join(small))
                    small = []
                    size = 0
        if small:
            transport.write(b"".join(small))

    # --- timeouts ------------------------------------------------------------------------
    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self._lost and self.export is None:
            self._drop(f"handshake not completed within {self._server.handshake_timeout:g} s")

    def _request_began(self) -> None:
        """A request started arriving (or we read again in the middle of one): its clock starts."""
        self._request_since = now = self._loop.time()
        timeout = self._server.request_timeout
        if timeout and self._request_timer is None:
            self._request_timer = self._loop.call_at(now + timeout, self._request_check)

    def _request_check(self) -> None:
        self._request_timer = None
        since = self._request_since
        if since is None or self._lost:
            return  # complete, or we are the ones not reading: re-armed when that changes
        timeout = self._server.request_timeout
        if self._loop.time() >= since + timeout:
            self._drop(f"request not completed within {timeout:g} s of its first byte")
        else:  # an earlier request completed and a later one began
            self._request_timer = self._loop.call_at(since + timeout, self._request_check)

    def _drain_check(self) -> None:
        self._drain_timer = None
        if self._lost or not self._writing_paused:
            return
        now = self._loop.time()
        sent = self._written - self._transport.get_write_buffer_size()
        if sent != self._drain_sent:
            self._drain_sent = sent
            self._drain_since = now
        timeout = self._server.drain_timeout
        if now >= self._drain_since + timeout:
            self._drop(f"the client read no reply for {timeout:g} s")
        else:
            self._drain_timer = self._loop.call_at(self._drain_since + timeout, self._drain_check)

    def _drop(self, reason: str) -> None:
        self._reason = reason
        self._violation = True
        self._transport.abort()

    # --- closing --------------------------------------------------------------------------
    def _begin_close(self, ev: Close) -> None:
        if not self._reason:
            self._reason = ev.reason
        self._violation = not ev.graceful
        self._closing = True
        # Requests parsed before the close still run; the socket closes after them.
        self._loop.call_soon(self._maybe_finish)

    def _maybe_finish(self) -> None:
        if self._inflight or self._queue or (self.core.blocked and not self._lost):
            return
        if self._lost:
            self._server.forget(self)
        elif self._closing or self._server.stopping:
            self._send()
            self._transport.close()
        self._server.changed()

    def shutdown(self) -> None:
        """Server stop: refuse new work, finish what runs, then close."""
        self.core.begin_shutdown()
        if self.core.blocked and not self._lost:
            self.retry()  # what is still buffered now gets ESHUTDOWN
        self._maybe_finish()

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._queue and not self.core.blocked
