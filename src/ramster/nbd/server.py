"""The asyncio shell around the sans-I/O NBD core.

    server = NbdServer({"disk": MemoryExport("disk", 1 << 30)})
    await server.start(["127.0.0.1:10809", "unix:/run/ramster.sock"])
    ...
    await server.stop()

Each request runs as its own task so a slow export call (a remote page)
does not hold up the others; replies go out in completion order, which NBD
allows. Reads and writes an export can serve at once skip the task, and the
replies of everything served during one read of the socket go out in one
write. Per connection at most MAX_INFLIGHT requests run at once; the socket is
not read while that many are busy or while replies pile up unsent.

Memory (DESIGN.md, the trust contract, point 4). What a connection *holds* is
the payload received of its WRITEs not yet finished (the one still arriving
counts what has arrived, never what was announced), the length of its READs
admitted and not yet handed to the transport, REQUEST_COST per request
admitted, and, while the transport has paused writing, the reply bytes it has
not sent. The core admits a request only if it fits both the connection's cap
(`connection_cap`) and what is left of the server's (`node_cap`), except that
a connection holding nothing may always start one request: a client that
waits for its replies keeps being served, at queue depth one at worst, while
clients that pipeline without reading are held at their cap. A request that
does not fit stops the parsing at its header and the socket is no longer
read until something is released (the client reads replies, requests
finish). Requests are at most `max_request` long (advertised with
NBD_INFO_BLOCK_SIZE; longer READs and WRITEs get EINVAL, a WRITE's payload
being skipped, not stored). So, with M = max_connections:

    RSS <= budget + P + node_cap + M * (max_request + REQUEST_COST + C)

where P is the process itself (interpreter, libraries, the export's index:
about 40 MiB for `ramster node`) and C what a connection holds outside the
accounting: the rest of a socket read (up to 256 KiB) kept while parsing is
stopped, or the slack of a growing WRITE payload (1/8 of it); reply bytes
under the transport's 64 KiB high-water mark; option data (64 KiB) in the
handshake; the tasks of up to MAX_INFLIGHT requests: under 1 MiB. With the
defaults (2 MiB, 64 MiB, 32 connections) that is budget + P + 64 MiB +
32 * 3 MiB = budget + P + 160 MiB, about budget + 200 MiB. Connection number
M+1 is closed as soon as it is accepted (handshakes count), and the log says
so at most once per REFUSED_LOG_INTERVAL seconds. glibc's mmap threshold is
fixed when the server starts (`tune_malloc`): left dynamic, it follows the
largest buffer freed, and after a burst of 2 MiB WRITEs the process kept
about 40 MiB more than with it fixed.

Time: a handshake must finish within `handshake_timeout` seconds (as
qemu-nbd's --handshake-limit), a request within `request_timeout` of its first
byte while the socket is being read, and a connection whose replies have not
moved at all for `drain_timeout` seconds (a client that never reads) is
aborted. Each of these drops the connection with one WARNING line.

`python -m ramster.nbd.server --memory NAME:SIZE --listen ADDR` serves RAM
disks; the tests use it to run the server as a separate process.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import errno
import itertools
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Iterable, Mapping

from ..units import format_address, parse_address, parse_size
from .base import Export, ExportError
from .protocol import (
    CMD_BLOCK_STATUS,
    CMD_CACHE,
    CMD_FLAG_FAST_ZERO,
    CMD_FLAG_FUA,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    UNLIMITED,
    Close,
    Negotiated,
    NbdConnection,
    Request,
)

log = logging.getLogger("ramster.nbd")

MAX_INFLIGHT = 64
# Defaults of NbdServer's limits; the module docstring has the arithmetic.
MAX_REQUEST = 2 * 1024 * 1024
CONNECTION_CAP = 16 * 1024 * 1024  # nbdcopy's 64 requests of 256 KiB fit
NODE_CAP = 64 * 1024 * 1024
MAX_CONNECTIONS = 32
HANDSHAKE_TIMEOUT = 10.0
# 2 MiB at 70 KB/s: only a client that stalls on purpose takes longer.
REQUEST_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0
REFUSED_LOG_INTERVAL = 10.0
# A batch of replies up to this size is joined into one write (one syscall). In
# a bigger one, pieces of _BIG_PIECE or more are written as they are and the
# small ones joined in groups, so a batch of big reads is never held twice.
_JOIN_LIMIT = 512 * 1024
_BIG_PIECE = 64 * 1024
# glibc: when the heap must grow, buffers at least this big are mmap'd, so they
# go back to the kernel when freed; setting it also pins the trim threshold
# (128 KiB), so free memory at the top of the heap goes back too. Left to
# itself glibc raises both after the largest buffer freed so far, and a burst
# of 2 MiB WRITEs stayed resident after it was over. It is above asyncio's
# 256 KiB socket reads: with those mmap'd (mmap, page faults, mremap, munmap
# on every recv), a queue-depth-1 request took twice the CPU time in an
# in-process measurement, as it also did with the dynamic threshold stuck low.
_MMAP_THRESHOLD = 512 * 1024
_M_MMAP_THRESHOLD = -3
_ZERO_CHUNK = bytes(1 << 20)
_WRITE_LIKE = (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES)
_conn_ids = itertools.count(1)
_malloc_tuned = False


def _tune_malloc() -> None:
    """Fix glibc's mmap threshold so memory freed after a burst leaves the process."""
    global _malloc_tuned
    if _malloc_tuned or not sys.platform.startswith("linux"):
        return
    _malloc_tuned = True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent outside glibc (musl)
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


class _NbdProtocol(asyncio.Protocol):
    """One client connection: feeds the core, runs its requests, writes replies."""

    def __init__(self, server: NbdServer):
        self._server = server
        self._loop = server._loop
        self._transport: asyncio.Transport | None = None
        self.core = NbdConnection(server._exports, server.default_export, max_payload=server.max_request)
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
        if len(server._conns) >= server.max_connections:
            self._refused = True
            server._refuse(self.peer)
            transport.abort()
            return
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server._conns.add(self)
        if server.handshake_timeout:
            self._handshake_timer = self._loop.call_later(server.handshake_timeout, self._handshake_expired)
        if server._stopping:
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
        server = self._server
        while True:
            held = self._held
            if server._stopping:
                core.credit = UNLIMITED  # every request is refused with ESHUTDOWN now
            else:
                core.credit = min(server.connection_cap - held, server.node_cap - server._held)
            core.overdraw = not held
            events = core.feed(data)
            partial = core.partial_size
            delta = core.admitted + partial - self._partial
            if delta:
                core.admitted = 0
                self._partial = partial
                self._held = held + delta
                server._held += delta
                if delta < 0 and server._blocked:
                    server._wake_soon()
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
            server._blocked.add(self)
        if (self._closing or self._writing_paused or core.blocked or self._inflight >= MAX_INFLIGHT
                or bool(self._queue)) != self._reading_paused:
            self._update_reading()
        if core.mid_request and not self._reading_paused:
            if self._request_since is None:
                self._request_began()
        elif self._request_since is not None:
            self._request_since = None

    def _retry(self) -> None:
        """Parsing stopped for want of credit: try again now that some was released."""
        try:
            self._process(b"")
        except Exception as exc:
            self._internal_error(exc)
        if not self.core.blocked:
            self._server._blocked.discard(self)
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
        self._server._blocked.discard(self)
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
        server = self._server
        server._held += delta
        if delta < 0 and server._blocked:
            server._wake_soon()

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
        if (cmd == CMD_READ or (cmd == CMD_WRITE and not req.flags & CMD_FLAG_FUA)) and self._run_now(req):
            return
        if type(req.data) is memoryview:
            # A view pins the whole socket read it came from for as long as the task runs.
            req.data = bytes(req.data)
        if cmd == CMD_FLUSH:
            # Writes received before the flush must be covered by it.
            task = self._loop.create_task(self._run_flush(req, tuple(self._writes)))
        else:
            task = self._loop.create_task(self._run(req))
            if cmd in _WRITE_LIKE:
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request_done(self, req: Request) -> None:
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
            server = self._server
            server._held -= replied
            if server._blocked:
                server._wake_soon()
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

    # --- running requests --------------------------------------------------------------
    def _run_now(self, req: Request) -> bool:
        """Serve a read or a write without a task when the export can; False: it cannot."""
        export = self.export
        counters = export.counters
        try:
            if req.command == CMD_READ:
                data = export.read_now(req.offset, req.length)
                if data is None:
                    return False
                counters.reads += 1
                counters.bytes_read += req.length
                self.core.reply_read(req, data)
            else:
                if not export.write_now(req.offset, req.data):
                    return False
                counters.writes += 1
                counters.bytes_written += req.length
                self.core.reply_ok(req)
        except ExportError as exc:
            self.core.reply_error(req, exc.errno, str(exc))
        except Exception as exc:
            log.warning("%s: export %r failed on %r: %r", self.peer, export.name, req, exc)
            self.core.reply_error(req, errno.EIO, "internal server error")
        self._request_done(req)
        return True

    async def _run(self, req: Request) -> None:
        core = self.core
        export = self.export
        counters = export.counters
        try:
            cmd = req.command
            if cmd == CMD_READ:
                data = await export.read(req.offset, req.length)
                counters.reads += 1
                counters.bytes_read += req.length
                core.reply_read(req, data)
                return
            fua = bool(req.flags & CMD_FLAG_FUA)
            if cmd == CMD_WRITE:
                await export.write(req.offset, req.data, fua)
                counters.writes += 1
                counters.bytes_written += req.length
            elif cmd == CMD_TRIM:
                await export.trim(req.offset, req.length, fua)
                counters.trims += 1
            elif cmd == CMD_WRITE_ZEROES:
                await self._zero(export, req, fua)
                counters.zeroes += 1
            elif cmd == CMD_CACHE:
                await export.cache(req.offset, req.length)
                counters.caches += 1
            elif cmd == CMD_BLOCK_STATUS:
                extents = export.block_status(req.offset, req.length)
                counters.block_status += 1
                core.reply_block_status(req, extents)
                return
            core.reply_ok(req)
        except ExportError as exc:
            core.reply_error(req, exc.errno, str(exc))
        except Exception as exc:
            log.warning("%s: export %r failed on %r: %r", self.peer, export.name, req, exc)
            core.reply_error(req, errno.EIO, "internal server error")
        finally:
            self._request_done(req)

    async def _zero(self, export: Export, req: Request, fua: bool) -> None:
        fast = bool(req.flags & CMD_FLAG_FAST_ZERO)
        try:
            await export.zero(req.offset, req.length, fua, fast)
        except ExportError as exc:
            # Without FAST_ZERO, ENOTSUP is not an answer: write the zeroes.
            if exc.errno != errno.ENOTSUP or fast:
                raise
            offset, end = req.offset, req.offset + req.length
            while offset < end:
                n = min(end - offset, len(_ZERO_CHUNK))
                await export.write(offset, memoryview(_ZERO_CHUNK)[:n], fua)
                offset += n

    async def _run_flush(self, req: Request, writes: tuple[asyncio.Task, ...]) -> None:
        try:
            if writes:
                await asyncio.wait(writes)
            await self.export.flush()
            self.export.counters.flushes += 1
            self.core.reply_ok(req)
        except ExportError as exc:
            self.core.reply_error(req, exc.errno, str(exc))
        except Exception as exc:
            log.warning("%s: flush of %r failed: %r", self.peer, self.export.name, exc)
            self.core.reply_error(req, errno.EIO, "internal server error")
        finally:
            self._request_done(req)

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
            self._server._forget(self)
        elif self._closing or self._server._stopping:
            self._send()
            self._transport.close()
        self._server._changed()

    def shutdown(self) -> None:
        """Server stop: refuse new work, finish what runs, then close."""
        self.core.begin_shutdown()
        if self.core.blocked and not self._lost:
            self._retry()  # what is still buffered now gets ESHUTDOWN
        self._maybe_finish()

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._queue and not self.core.blocked


class NbdServer:
    """Serves exports over TCP and Unix sockets.

    `exports` is a dict name -> Export (NBD_OPT_LIST then lists them) or a
    callable name -> Export | None. The empty export name selects
    `default_export`; with a single-entry dict that entry is the default.

    The limits (module docstring) are bytes, a count and seconds; a timeout
    of 0 or None disables it. `tune_malloc` fixes glibc's mmap threshold when
    the server starts (process-wide) so that RSS falls back after bursts.
    """

    def __init__(self, exports: Mapping[str, Export] | Callable[[str], Export | None],
                 default_export: str | None = None, *,
                 max_request: int = MAX_REQUEST,
                 connection_cap: int = CONNECTION_CAP,
                 node_cap: int = NODE_CAP,
                 max_connections: int = MAX_CONNECTIONS,
                 handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
                 request_timeout: float | None = REQUEST_TIMEOUT,
                 drain_timeout: float | None = DRAIN_TIMEOUT,
                 tune_malloc: bool = True):
        if default_export is None and isinstance(exports, Mapping) and len(exports) == 1:
            default_export = next(iter(exports))
        if max_request < 4096 or max_request > 1 << 25:
            raise ValueError("max_request must be between 4 KiB and 32 MiB")
        if connection_cap < max_request or node_cap < max_request:
            raise ValueError("connection_cap and node_cap must each hold one request of max_request bytes")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._exports = exports
        self.default_export = default_export
        self.max_request = max_request
        self.connection_cap = connection_cap
        self.node_cap = node_cap
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout or 0.0
        self.request_timeout = request_timeout or 0.0
        self.drain_timeout = drain_timeout or 0.0
        self._tune_malloc = tune_malloc
        # Bytes held by all connections (module docstring).
        self._held = 0
        # Connections whose parsing stopped for want of credit.
        self._blocked: set[_NbdProtocol] = set()
        self._wake_scheduled = False
        self._refused = 0
        self._refused_log_at = 0.0
        self.addresses: list[str] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._unix_paths: list[str] = []
        self._conns: set[_NbdProtocol] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._change: asyncio.Event | None = None

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def held(self) -> int:
        """Bytes the connections hold now, as the limits count them."""
        return self._held

    async def start(self, listen: Iterable[str]) -> None:
        """Bind every address ("HOST:PORT", "[V6]:PORT" or "unix:PATH")."""
        self._loop = asyncio.get_running_loop()
        self._change = asyncio.Event()
        if self._tune_malloc:
            _tune_malloc()
        for address in listen:
            host, port, path = parse_address(address, "listen address", unix=True)
            if path is not None:
                _check_unix_path(path)
                srv = await self._loop.create_unix_server(self._protocol, path=path)
                self._unix_paths.append(path)
                self.addresses.append(f"unix:{path}")
            else:
                srv = await self._loop.create_server(self._protocol, host, port, reuse_address=True)
                for sock in srv.sockets:
                    h, p = sock.getsockname()[:2]
                    self.addresses.append(format_address(h, p))
            self._servers.append(srv)
            log.info("listening on %s", address)

    def _protocol(self) -> _NbdProtocol:
        return _NbdProtocol(self)

    def _wake_soon(self) -> None:
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        """Bytes were released: let the connections waiting for credit try again."""
        self._wake_scheduled = False
        for conn in list(self._blocked):
            conn._retry()

    def _refuse(self, peer: str) -> None:
        self._refused += 1
        now = self._loop.time()
        if now >= self._refused_log_at:
            log.warning("%s: refused: %d connections are open, the maximum (%d refused since the last "
                        "such message, this one included)", peer, len(self._conns), self._refused)
            self._refused = 0
            self._refused_log_at = now + REFUSED_LOG_INTERVAL

    async def stop(self, timeout: float = 10.0, close_exports: bool = True) -> None:
        """Stop accepting, let requests in flight finish, then close everything.

        Requests arriving meanwhile get ESHUTDOWN. After `timeout` seconds
        connections that are still busy are aborted.
        """
        if self._loop is None:
            return
        self._stopping = True
        for srv in self._servers:
            srv.close()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._unix_paths.clear()
        for conn in list(self._conns):
            conn.shutdown()
        deadline = self._loop.time() + timeout
        if not await self._wait(lambda: all(c.idle for c in self._conns), deadline):
            log.warning("stop: %d connections still busy after %.1fs, aborting them",
                        sum(not c.idle for c in self._conns), timeout)
        for conn in list(self._conns):
            if conn.idle:
                conn.shutdown()
            else:
                conn.abort()
        if not await self._wait(lambda: not self._conns, self._loop.time() + 2.0):
            for conn in list(self._conns):
                conn.abort()
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()
        if close_exports and isinstance(self._exports, Mapping):
            for export in {id(e): e for e in self._exports.values()}.values():
                try:
                    await export.close()
                except Exception as exc:
                    log.error("closing export %r failed: %r", export.name, exc)

    async def _wait(self, condition: Callable[[], bool], deadline: float) -> bool:
        while not condition():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            self._change.clear()
            try:
                await asyncio.wait_for(self._change.wait(), remaining)
            except asyncio.TimeoutError:
                return condition()
        return True

    def _forget(self, conn: _NbdProtocol) -> None:
        self._conns.discard(conn)

    def _changed(self) -> None:
        if self._stopping and self._change is not None:
            self._change.set()


def _check_unix_path(path: str) -> None:
    """Refuse to steal a live socket; a stale one is removed by asyncio."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")


# --- command line (used by tests and for quick manual runs) ---------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ramster.nbd.server",
                                description="Serve RAM disks over NBD.")
    p.add_argument("--memory", action="append", default=[], metavar="NAME:SIZE",
                   help="add a RAM disk export (repeatable), e.g. disk:64M")
    p.add_argument("--listen", action="append", default=[], metavar="ADDR",
                   help="HOST:PORT, [IPV6]:PORT or unix:PATH (repeatable)")
    p.add_argument("--default", metavar="NAME", help="export used for the empty name")
    p.add_argument("--read-only", action="store_true", help="refuse writes")
    p.add_argument("--max-request", type=parse_size, default=MAX_REQUEST, metavar="SIZE",
                   help="longest READ or WRITE (default %(default)s)")
    p.add_argument("--connection-cap", type=parse_size, default=CONNECTION_CAP, metavar="SIZE",
                   help="bytes one connection may hold (default %(default)s)")
    p.add_argument("--node-cap", type=parse_size, default=NODE_CAP, metavar="SIZE",
                   help="bytes all connections may hold (default %(default)s)")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                   help="connections served at once (default %(default)s)")
    p.add_argument("--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT, metavar="SEC",
                   help="seconds a handshake may take, 0: no limit (default %(default)s)")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT, metavar="SEC",
                   help="seconds a request may take to arrive, 0: no limit (default %(default)s)")
    p.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT, metavar="SEC",
                   help="seconds a client may leave its replies unread, 0: no limit (default %(default)s)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p.parse_args(argv)


async def _amain(args: argparse.Namespace) -> None:
    from .ramdisk import MemoryExport

    exports: dict[str, Export] = {}
    for spec in args.memory:
        name, sep, size = spec.rpartition(":")
        if not sep:
            raise ValueError(f"invalid --memory {spec!r}: expected NAME:SIZE")
        exports[name] = MemoryExport(name, parse_size(size, "--memory size"), read_only=args.read_only)
    if not exports:
        raise ValueError("nothing to serve: give at least one --memory NAME:SIZE")
    if not args.listen:
        raise ValueError("nowhere to listen: give at least one --listen ADDR")
    if args.default is not None and args.default not in exports:
        raise ValueError(f"--default {args.default!r} is not an export")
    server = NbdServer(exports, default_export=args.default, max_request=args.max_request,
                       connection_cap=args.connection_cap, node_cap=args.node_cap,
                       max_connections=args.max_connections, handshake_timeout=args.handshake_timeout,
                       request_timeout=args.request_timeout, drain_timeout=args.drain_timeout)
    await server.start(args.listen)
    for address in server.addresses:
        print(f"listening on {address}", flush=True)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_amain(args))
    except (ValueError, OSError) as exc:
        print(f"ramster-nbd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
