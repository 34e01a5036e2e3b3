"""A TCP proxy for one peer link, driven from a (synchronous) test.

Peers connect the higher-numbered node to the lower-numbered one, so a link
has a dialler and a listener. The dialler's copy of the cluster file names the
proxy's port as the listener's address; the proxy forwards to the real port.
Directions are named from the dialler: "c2s" (dialler -> listener) and "s2c".

Faults, each in the terms of what a real network does to a TCP stream:

- cut(after=N, direction, scope): reset both sides once N more bytes went
  through in that direction, on the live connections ("now") or counted from
  the start of the next connection ("next", for cuts inside the handshake);
- delay(seconds): every chunk arrives that much later (bandwidth unchanged);
- blackhole(direction): the direction stops delivering; its bytes wait, as
  TCP's retransmissions would, and arrive on heal() unless a side gave up;
- partition(new="refuse"|"stall"): both directions stop on live connections,
  and new ones are refused (the port stops listening) or accepted and stalled;
- heal(): all of it ends; held bytes and stalled connections go on.

All proxies of a test share one asyncio loop in a daemon thread (ProxyLoop);
the methods called from the test thread wait for the loop to apply them, so
a fault is in force when the call returns.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Coroutine

C2S, S2C = "c2s", "s2c"
DIRECTIONS = (C2S, S2C)
CHUNK = 64 * 1024
QUEUE_CHUNKS = 64  # chunks waiting per direction (delay, blackhole) before the proxy stops reading
COMMAND_TIMEOUT = 10.0


def _dirs(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be {C2S!r}, {S2C!r} or 'both', not {direction!r}")
    return (direction,)


class ProxyLoop:
    """The event loop thread every LinkProxy of a test runs on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        self.proxies: list[LinkProxy] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine, timeout: float = COMMAND_TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def proxy(self, name: str, target_port: int, host: str = "127.0.0.1") -> LinkProxy:
        p = LinkProxy(self, name, host, target_port)
        self.call(p._listen())
        self.proxies.append(p)
        return p

    async def _shutdown(self) -> None:
        for p in self.proxies:
            await p._close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        try:
            self.call(self._shutdown())
        except Exception:  # the loop must still stop
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> ProxyLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Conn:
    """One proxied connection: the dialler's side, the target's side, two pumps."""

    def __init__(self, proxy: LinkProxy, number: int, dreader, dwriter):
        self.proxy = proxy
        self.number = number
        self.dreader, self.dwriter = dreader, dwriter
        self.treader = self.twriter = None
        self.budget: dict[str, int | None] = {d: None for d in DIRECTIONS}  # bytes left before a cut
        self.sent = {d: 0 for d in DIRECTIONS}
        self.closed = False
        self.tasks: list[asyncio.Task] = []

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.dwriter, self.twriter):
            if w is not None:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    try:  # linger 0: close() sends RST, as a middlebox that drops the flow would cause
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                w.transport.abort()
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.proxy.conns.discard(self)


class LinkProxy:
    def __init__(self, owner: ProxyLoop, name: str, host: str, target_port: int):
        self.owner = owner
        self.name = name
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.conns: set[_Conn] = set()
        self.accepted = 0
        self.bytes = {d: 0 for d in DIRECTIONS}
        # fault state, only touched on the loop
        self._delay = 0.0
        self._held = {d: False for d in DIRECTIONS}
        self._new_mode: str | None = None  # None, "refuse", "stall"
        self._next_cut: dict[str, int] = {}
        self._changed: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self.log: list[tuple[float, str]] = []  # what was done to the link, for failure reports

    def __repr__(self) -> str:
        return f"<LinkProxy {self.name} :{self.port} -> :{self.target_port}>"

    # ---- control from the test thread ---------------------------------------------------------

    def cut(self, after: int = 0, direction: str = "both", scope: str = "now") -> None:
        """Reset the link once `after` more bytes went through `direction` (now) or, with
        scope="next", once the next connection carried that many bytes from its start."""
        if scope not in ("now", "next"):
            raise ValueError("scope must be 'now' or 'next'")
        self._note(f"cut after {after} bytes {direction} ({scope})")
        self.owner.call(self._cut(after, _dirs(direction), scope))

    def delay(self, seconds: float) -> None:
        self._note(f"delay {seconds:g} s")
        self.owner.call(self._set(delay=seconds))

    def blackhole(self, direction: str) -> None:
        self._note(f"blackhole {direction}")
        self.owner.call(self._set(held={d: True for d in _dirs(direction)}))

    def partition(self, new: str = "refuse") -> None:
        if new not in ("refuse", "stall"):
            raise ValueError("new must be 'refuse' or 'stall'")
        self._note(f"partition (new connections: {new})")
        self.owner.call(self._partition(new))

    def heal(self) -> None:
        self._note("heal")
        self.owner.call(self._heal())

    def connections(self) -> int:
        return len(self.conns)

    def _note(self, what: str) -> None:
        self.log.append((time.monotonic(), what))

    # ---- on the loop ----------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def _listen(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, self.port or 0,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in list(self.conns):
            c.abort()
        self._wake()

    async def _cut(self, after: int, dirs: tuple[str, ...], scope: str) -> None:
        if scope == "next":
            for d in dirs:
                self._next_cut[d] = after
            return
        for c in list(self.conns):
            for d in dirs:
                c.budget[d] = after
            if after == 0:
                c.abort()

    async def _set(self, delay: float | None = None, held: dict | None = None) -> None:
        if delay is not None:
            self._delay = delay
        if held:
            self._held.update(held)
        self._wake()

    async def _partition(self, new: str) -> None:
        self._held = {d: True for d in DIRECTIONS}
        self._new_mode = new
        if new == "refuse" and self._server is not None:
            # a closed port: connect() fails with ECONNREFUSED, as behind a firewall that rejects
            self._server.close()
            self._server = None
        self._wake()

    async def _heal(self) -> None:
        self._delay = 0.0
        self._held = {d: False for d in DIRECTIONS}
        self._new_mode = None
        self._next_cut.clear()
        if self._server is None:
            await self._listen()
        self._wake()

    async def _accept(self, reader, writer) -> None:
        self.accepted += 1
        conn = _Conn(self, self.accepted, reader, writer)
        self.conns.add(conn)
        for d, n in self._next_cut.items():
            conn.budget[d] = n
        self._next_cut.clear()
        try:
            while self._new_mode == "stall":  # accepted, but nothing reaches the target
                await self._changed.wait()
            if self._new_mode == "refuse" or conn.closed:
                conn.abort()
                return
            try:
                conn.treader, conn.twriter = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                conn.abort()  # the target is down: the dialler sees a reset
                return
            if conn.closed:
                conn.abort()
                return
            if conn.budget[C2S] == 0 or conn.budget[S2C] == 0:
                conn.abort()
                return
            conn.tasks = [asyncio.ensure_future(self._pipe(conn, C2S, conn.dreader, conn.twriter)),
                          asyncio.ensure_future(self._pipe(conn, S2C, conn.treader, conn.dwriter))]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            conn.abort()

    async def _pipe(self, conn: _Conn, d: str, reader, writer) -> None:
        """Read one direction and hand chunks to its deliverer, which applies the faults."""
        q: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        deliver = asyncio.ensure_future(self._deliver(conn, d, q, writer))
        conn.tasks.append(deliver)
        try:
            while not conn.closed:
                data = await reader.read(CHUNK)
                await q.put((time.monotonic() + self._delay, data))
                if not data:
                    break
            await deliver
        except (OSError, asyncio.IncompleteReadError):
            conn.abort()

    async def _deliver(self, conn: _Conn, d: str, q: asyncio.Queue, writer) -> None:
        try:
            while True:
                due, data = await q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                while self._held[d] and not conn.closed:
                    await self._changed.wait()
                if conn.closed:
                    return
                if not data:
                    # the sender finished its side; pass the half close on
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                budget = conn.budget[d]
                if budget is not None and len(data) >= budget:
                    if budget:
                        writer.write(data[:budget])
                        conn.sent[d] += budget
                        self.bytes[d] += budget
                        await writer.drain()
                    conn.abort()
                    return
                if budget is not None:
                    conn.budget[d] = budget - len(data)
                writer.write(data)
                conn.sent[d] += len(data)
                self.bytes[d] += len(data)
                await writer.drain()
        except (OSError, ConnectionError):
            conn.abort()
