"""The NBD server: listening sockets, the connections they accept, and a clean stop.

    server = NbdServer({"disk": MemoryExport("disk", 1 << 30)})
    await server.start(["127.0.0.1:10809", "unix:/run/ramster.sock"])
    ...
    await server.stop()

The layers of the NBD side, bottom up: wire.py (the bytes), handshake.py and
protocol.py (the sans-I/O state machines), base.py (what an export is) and
the exports (swap.py, cache.py, ramdisk.py); then the asyncio shell:
connection.py (one client), dispatch.py (one request against its export),
admission.py (the memory they hold), and this module, which owns them all.

Limits, all set here and each bounding what a client can make the server
hold or wait for (admission.py has the memory arithmetic): `max_request`
(advertised with NBD_INFO_BLOCK_SIZE), `connection_cap` and `node_cap`
(bytes held), `max_connections` (connection number M+1 is closed as soon as
it is accepted, handshakes count, and the log says so at most once per
REFUSED_LOG_INTERVAL seconds), and three timeouts: a handshake must finish
within `handshake_timeout` seconds (as qemu-nbd's --handshake-limit), a
request within `request_timeout` of its first byte while the socket is being
read, and a connection whose replies have not moved at all for
`drain_timeout` seconds (a client that never reads) is aborted. glibc's mmap
threshold is fixed when the server starts (`tune_malloc`): left dynamic, it
follows the largest buffer freed, and after a burst of 2 MiB WRITEs the
process kept about 40 MiB more than with it fixed.

A stop refuses new work (options get ERR_SHUTDOWN, requests ESHUTDOWN),
lets the requests in flight finish, then closes the connections and the
exports, which flush what must be durable.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Iterable, Mapping

from ..units import format_address, parse_address
from .admission import CONNECTION_CAP, NODE_CAP, Admission
from .base import Export
from .connection import MAX_INFLIGHT, NbdClient
from .protocol import NbdConnection

__all__ = ["NbdServer", "MAX_INFLIGHT", "MAX_REQUEST", "CONNECTION_CAP", "NODE_CAP", "MAX_CONNECTIONS",
           "HANDSHAKE_TIMEOUT", "REQUEST_TIMEOUT", "DRAIN_TIMEOUT"]

log = logging.getLogger("ramster.nbd")

# Defaults of NbdServer's limits.
MAX_REQUEST = 2 * 1024 * 1024
MAX_CONNECTIONS = 32
HANDSHAKE_TIMEOUT = 10.0
# 2 MiB at 70 KB/s: only a client that stalls on purpose takes longer.
REQUEST_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0
REFUSED_LOG_INTERVAL = 10.0
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
        self.admission = Admission(connection_cap, node_cap)
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout or 0.0
        self.request_timeout = request_timeout or 0.0
        self.drain_timeout = drain_timeout or 0.0
        self._tune_malloc = tune_malloc
        self._refused = 0
        self._refused_log_at = 0.0
        self.addresses: list[str] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._unix_paths: list[str] = []
        self.conns: set[NbdClient] = set()
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._change: asyncio.Event | None = None

    @property
    def connections(self) -> int:
        return len(self.conns)

    @property
    def held(self) -> int:
        """Bytes the connections hold now, as the limits count them."""
        return self.admission.held

    @property
    def connection_cap(self) -> int:
        return self.admission.connection_cap

    @property
    def node_cap(self) -> int:
        return self.admission.node_cap

    async def start(self, listen: Iterable[str]) -> None:
        """Bind every address ("HOST:PORT", "[V6]:PORT" or "unix:PATH")."""
        self.loop = asyncio.get_running_loop()
        self._change = asyncio.Event()
        if self._tune_malloc:
            _tune_malloc()
        for address in listen:
            host, port, path = parse_address(address, "listen address", unix=True)
            if path is not None:
                _check_unix_path(path)
                srv = await self.loop.create_unix_server(self._protocol, path=path)
                self._unix_paths.append(path)
                self.addresses.append(f"unix:{path}")
            else:
                srv = await self.loop.create_server(self._protocol, host, port, reuse_address=True)
                for sock in srv.sockets:
                    h, p = sock.getsockname()[:2]
                    self.addresses.append(format_address(h, p))
            self._servers.append(srv)
            log.info("listening on %s", address)

    def _protocol(self) -> NbdClient:
        return NbdClient(self, NbdConnection(self._exports, self.default_export, max_payload=self.max_request))

    # --- what connections ask of their server --------------------------------------------
    def admit(self, conn: NbdClient) -> bool:
        """A new connection: False (and it is closed at once) when max_connections are open."""
        if len(self.conns) < self.max_connections:
            self.conns.add(conn)
            return True
        self._refuse(conn.peer)
        return False

    def forget(self, conn: NbdClient) -> None:
        self.conns.discard(conn)

    def changed(self) -> None:
        """A connection finished its work or closed: stop() may be waiting for that."""
        if self.stopping and self._change is not None:
            self._change.set()

    def _refuse(self, peer: str) -> None:
        self._refused += 1
        now = self.loop.time()
        if now >= self._refused_log_at:
            log.warning("%s: refused: %d connections are open, the maximum (%d refused since the last "
                        "such message, this one included)", peer, len(self.conns), self._refused)
            self._refused = 0
            self._refused_log_at = now + REFUSED_LOG_INTERVAL

    async def stop(self, timeout: float = 10.0, close_exports: bool = True) -> None:
        """Stop accepting, let requests in flight finish, then close everything.

        Requests arriving meanwhile get ESHUTDOWN. After `timeout` seconds
        connections that are still busy are aborted.
        """
        if self.loop is None:
            return
        self.stopping = True
        for srv in self._servers:
            srv.close()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._unix_paths.clear()
        for conn in list(self.conns):
            conn.shutdown()
        deadline = self.loop.time() + timeout
        if not await self._wait(lambda: all(c.idle for c in self.conns), deadline):
            log.warning("stop: %d connections still busy after %.1fs, aborting them",
                        sum(not c.idle for c in self.conns), timeout)
        for conn in list(self.conns):
            if conn.idle:
                conn.shutdown()
            else:
                conn.abort()
        if not await self._wait(lambda: not self.conns, self.loop.time() + 2.0):
            for conn in list(self.conns):
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
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                return False
            self._change.clear()
            try:
                await asyncio.wait_for(self._change.wait(), remaining)
            except asyncio.TimeoutError:
                return condition()
        return True



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
