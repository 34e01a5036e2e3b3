"""Running one NBD request against its export, and counting and answering it.

The connection (connection.py) hands each `Request` the core let through
here: `run_now` for a READ or WRITE the export may serve without waiting
(`read_now`/`write_now`; no task is made, which at high queue depths is a
large share of a request's cost), otherwise `run` in a task of its own, and
`run_flush` for a FLUSH, after the writes received before it. Every path
ends in exactly one reply through the core and one `conn.request_done`, so
the connection's accounting (admission.py) releases what the request held.

An `ExportError` is the export's answer (its errno goes to the client); any
other exception is a bug, logged, and answered EIO, so it costs one request,
not the connection or the server. WRITE_ZEROES falls back to writing zeroes
when the export cannot zero cheaply and the client did not ask for FAST_ZERO.
"""
from __future__ import annotations

import asyncio
import errno
import logging

from .base import Export, ExportError
from .protocol import Request
from .wire import CMD_BLOCK_STATUS, CMD_CACHE, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES

log = logging.getLogger("ramster.nbd")

_ZERO_CHUNK = bytes(1 << 20)


def run_now(conn, req: Request) -> bool:
    """Serve a read or a write without a task when the export can; False: it cannot."""
    export = conn.export
    counters = export.counters
    try:
        if req.command == CMD_READ:
            data = export.read_now(req.offset, req.length)
            if data is None:
                return False
            counters.reads += 1
            counters.bytes_read += req.length
            conn.core.reply_read(req, data)
        else:
            if not export.write_now(req.offset, req.data):
                return False
            counters.writes += 1
            counters.bytes_written += req.length
            conn.core.reply_ok(req)
    except ExportError as exc:
        conn.core.reply_error(req, exc.errno, str(exc))
    except Exception as exc:
        log.warning("%s: export %r failed on %r: %r", conn.peer, export.name, req, exc)
        conn.core.reply_error(req, errno.EIO, "internal server error")
    conn.request_done(req)
    return True

async def run(conn, req: Request) -> None:
    core = conn.core
    export = conn.export
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
            await _zero(export, req, fua)
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
        log.warning("%s: export %r failed on %r: %r", conn.peer, export.name, req, exc)
        core.reply_error(req, errno.EIO, "internal server error")
    finally:
        conn.request_done(req)

async def _zero(export: Export, req: Request, fua: bool) -> None:
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

async def run_flush(conn, req: Request, writes: tuple[asyncio.Task, ...]) -> None:
    try:
        if writes:
            await asyncio.wait(writes)
        await conn.export.flush()
        conn.export.counters.flushes += 1
        conn.core.reply_ok(req)
    except ExportError as exc:
        conn.core.reply_error(req, exc.errno, str(exc))
    except Exception as exc:
        log.warning("%s: flush of %r failed: %r", conn.peer, conn.export.name, exc)
        conn.core.reply_error(req, errno.EIO, "internal server error")
    finally:
        conn.request_done(req)
