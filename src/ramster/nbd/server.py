"""The asyncio shell around the sans-I/O NBD core.

    server = NbdServer({"disk": MemoryExport("disk", 1 << 30)})
    await server.start(["127.0.0.1:10809", "unix:/run/ramster.sock"])
    ...
    await server.stop()

Each request runs as its own task so a slow export call (a remote page)
does not hold up the others; replies go out in completion order, which NBD
allows. Per connection, at most MAX_INFLIGHT requests run at once and the
socket stops being read while that many are busy or replies pile up unsent.

`python -m ramster.nbd.server --memory NAME:SIZE --listen ADDR` serves RAM
disks; the tests use it to run the server as a separate process.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import itertools
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Iterable, Mapping

from .export import Export, ExportError
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
    Close,
    Negotiated,
    NbdConnection,
    Request,
)

log = logging.getLogger("ramster.nbd")

MAX_INFLIGHT = 64
# Write payloads held by queued or running requests before reading pauses.
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
_ZERO_CHUNK = bytes(1 << 20)
_WRITE_LIKE = (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES)
_conn_ids = itertools.count(1)


class _NbdProtocol(asyncio.Protocol):
    """One client connection: feeds the core, runs its requests, writes replies."""

    def __init__(self, server: NbdServer):
        self._server = server
        self._loop = server._loop
        self._transport: asyncio.Transport | None = None
        self.core = NbdConnection(server._exports, server.default_export)
        self.export: Export | None = None
        self.peer = "?"
        self._inflight = 0
        self._inflight_bytes = 0
        self._queue: collections.deque[Request] = collections.deque()
        self._tasks: set[asyncio.Task] = set()
        self._writes: set[asyncio.Task] = set()
        self._reading_paused = False
        self._writing_paused = False
        self._send_scheduled = False
        self._feeding = False  # inside data_received: replies wait for its one write
        self._closing = False
        self._lost = False
        self._reason = ""
        self._violation = False
        self._requests = 0

    # --- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = transport.get_extra_info("peername")
            self.peer = f"{peer[0]}:{peer[1]}" if peer else "tcp"
        else:
            self.peer = f"unix#{next(_conn_ids)}"
        self._server._conns.add(self)
        if self._server._stopping:
            self.core.begin_shutdown()
        log.debug("%s: connected", self.peer)
        self._send()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.core.feed(data)
            # Requests served at once (_run_now) reply into the core's buffer; one
            # write after the whole batch sends them all, not one syscall each.
            self._feeding = True
            try:
                for ev in events:
                    if type(ev) is Request:
                        self._submit(ev)
                    elif type(ev) is Negotiated:
                        self.export = ev.export
                        log.debug("%s: using export %r", self.peer, ev.export.name)
                    else:
                        self._begin_close(ev)
            finally:
                self._feeding = False
            self._send()
            self._update_reading()
        except Exception as exc:  # a bug must cost one connection, not the server
            log.error("%s: internal error, dropping connection: %r", self.peer, exc)
            self._reason = f"internal error: {exc!r}"
            self._transport.abort()

    def eof_received(self) -> bool:
        if not self._reason:
            self._reason = "client closed the connection"
        # Answer what is in flight, then close (returning False would close now).
        self._closing = True
        self._maybe_finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if exc is not None and not self._reason:
            self._reason = f"connection lost: {exc}"
        log.log(logging.WARNING if self._violation else logging.INFO,
                "%s: disconnected (%s) after %d requests",
                self.peer, self._reason or "closed", self._requests)
        self._queue.clear()
        self._maybe_finish()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # --- request scheduling ------------------------------------------------------------
    def _submit(self, req: Request) -> None:
        self._requests += 1
        if req.data is not None:
            self._inflight_bytes += req.length
        if self._inflight >= MAX_INFLIGHT or self._queue:
            self._queue.append(req)
        else:
            self._start(req)

    def _start(self, req: Request) -> None:
        self._inflight += 1
        cmd = req.command
        if (cmd == CMD_READ or (cmd == CMD_WRITE and not req.flags & CMD_FLAG_FUA)) and self._run_now(req):
            return
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
        if req.data is not None:
            self._inflight_bytes -= req.length
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
                 or self._inflight >= MAX_INFLIGHT or self._inflight_bytes > MAX_INFLIGHT_BYTES)
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def _send(self) -> None:
        self._send_scheduled = False
        data = self.core.data_to_send()
        if data and not self._lost and not self._transport.is_closing():
            self._transport.write(data)

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
        if self._inflight or self._queue:
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
        self._maybe_finish()

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._queue


class NbdServer:
    """Serves exports over TCP and Unix sockets.

    `exports` is a dict name -> Export (NBD_OPT_LIST then lists them) or a
    callable name -> Export | None. The empty export name selects
    `default_export`; with a single-entry dict that entry is the default.
    """

    def __init__(self, exports: Mapping[str, Export] | Callable[[str], Export | None],
                 default_export: str | None = None):
        if default_export is None and isinstance(exports, Mapping) and len(exports) == 1:
            default_export = next(iter(exports))
        self._exports = exports
        self.default_export = default_export
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

    async def start(self, listen: Iterable[str]) -> None:
        """Bind every address ("HOST:PORT", "[V6]:PORT" or "unix:PATH")."""
        self._loop = asyncio.get_running_loop()
        self._change = asyncio.Event()
        for address in listen:
            if address.startswith("unix:"):
                path = address[5:]
                if not path:
                    raise ValueError(f"invalid listen address {address!r}: empty socket path")
                _check_unix_path(path)
                srv = await self._loop.create_unix_server(self._protocol, path=path)
                self._unix_paths.append(path)
                self.addresses.append(f"unix:{path}")
            else:
                host, port = parse_tcp_address(address)
                srv = await self._loop.create_server(self._protocol, host, port, reuse_address=True)
                for sock in srv.sockets:
                    h, p = sock.getsockname()[:2]
                    self.addresses.append(f"[{h}]:{p}" if ":" in h else f"{h}:{p}")
            self._servers.append(srv)
            log.info("listening on %s", address)

    def _protocol(self) -> _NbdProtocol:
        return _NbdProtocol(self)

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


def parse_tcp_address(address: str) -> tuple[str | None, int]:
    """'HOST:PORT', '[V6]:PORT', ':PORT' or '*:PORT' -> (host, port)."""
    host, sep, port_s = address.rpartition(":")
    if not sep or not port_s.isdigit() or int(port_s) > 65535:
        raise ValueError(f"invalid listen address {address!r}: expected HOST:PORT, [IPV6]:PORT or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid listen address {address!r}: put IPv6 addresses in brackets")
    return (host if host not in ("", "*") else None), int(port_s)


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
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, suffix = (t[:-1], t[-1]) if t and t[-1] in _SUFFIXES else (t, "")
    if not num.isdigit():
        raise ValueError(f"invalid size {text!r} (examples: 4096, 64M, 1G)")
    return int(num) * _SUFFIXES[suffix]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ramster.nbd.server",
                                description="Serve RAM disks over NBD.")
    p.add_argument("--memory", action="append", default=[], metavar="NAME:SIZE",
                   help="add a RAM disk export (repeatable), e.g. disk:64M")
    p.add_argument("--listen", action="append", default=[], metavar="ADDR",
                   help="HOST:PORT, [IPV6]:PORT or unix:PATH (repeatable)")
    p.add_argument("--default", metavar="NAME", help="export used for the empty name")
    p.add_argument("--read-only", action="store_true", help="refuse writes")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p.parse_args(argv)


async def _amain(args: argparse.Namespace) -> None:
    from .memory import MemoryExport

    exports: dict[str, Export] = {}
    for spec in args.memory:
        name, sep, size = spec.rpartition(":")
        if not sep:
            raise ValueError(f"invalid --memory {spec!r}: expected NAME:SIZE")
        exports[name] = MemoryExport(name, parse_size(size), read_only=args.read_only)
    if not exports:
        raise ValueError("nothing to serve: give at least one --memory NAME:SIZE")
    if not args.listen:
        raise ValueError("nowhere to listen: give at least one --listen ADDR")
    if args.default is not None and args.default not in exports:
        raise ValueError(f"--default {args.default!r} is not an export")
    server = NbdServer(exports, default_export=args.default)
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
