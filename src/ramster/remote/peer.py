"""RAMster's peer network: one TCP connection per pair of nodes, kept open.

As in r2net (SPEC §5.8) the higher-numbered node connects and the lower one
accepts, so a pair never races to open two connections. The network keeps,
for every other node of the cluster file, a PeerState (connected or not,
round trip, the free frames it last reported, its boot id, counts of
connects and refusals) and at most one READY connection (`_conns`); every
connection it has opened or accepted, ready or not, is in `_all` so that a
stop can close them all. Unlike r2net:

- peers prove who they are: each signs the handshake with its own Ed25519
  key, checked against the public key the cluster file lists for the node it
  claims (ramster.remote.session says what is signed and why), optionally
  inside TLS (ramster.remote.tls);
- every request has a timeout, so a dead or paused peer costs a caller at
  most `request_timeout`, never a hang (ramster.remote.connection);
- a peer announces a random boot id (signed), so a node that restarted (and
  lost every page it held) is told apart from one that merely reconnected:
  `on_peer_change(number, connected, restarted)` says which;
- a connection that is refused (a bad signature, another compressor, a
  stranger) is counted, logged at a readable rate, and told why; the node it
  claimed to be keeps its connection: only a connection that completed the
  handshake replaces one, and only the real node can complete it;
- the operator may mark a peer down (the seed's manual_node_up, inverted):
  its connection and keepalives go on, but `request` refuses to send to it
  and `connected` says no, so the engine takes the path it takes for a lost
  peer (no new pages there, its copies unavailable, repairs elsewhere) and
  is told of it as of a disconnect, then of a reconnect when it is marked up.

A dialler retries with capped exponential backoff (reconnect_delay doubling
up to reconnect_max, with jitter so that a cluster that lost a node does not
redial in lockstep). A connection that was ready and is lost is expected back
within a grace (the first redial's delay, and a handshake): until then, or
until this node's own redial of it fails, `wait_reconnect` lets a caller
that found no node to ask wait for it rather than fail. A node stopped past
its peers' idle timeout finds every connection closed when it resumes, and
its peers are back within that grace; a node that died refuses the first
redial, so its pages fail at once after that. A node that was stopped also
sees its requests time out when it resumes, before it notices that the
connections are gone: a tick every `keepalive` seconds that finds the loop
was stalled past half a request timeout records it (`stalled_since`), and
`wait_reconnect(nodes, since)` then waits for a holder heard from after the
stall, the requests having failed for this node's pause, not the holders'.

The network is the transport only: what a request means is the handler's
business (ramster.remote.ramster), given to `start()` with the two other
things the network asks of the node it serves: how many frames it has free
(every reply carries it) and what to do when a peer comes or goes.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..lograte import Throttled
from ..zcache import DEFAULT_COMPRESSOR
from . import session, tls, wire
from .clusterconf import ClusterConfig, NodeSpec
from .connection import Handler, PeerConnection, PeerTimeout, PeerUnavailable

__all__ = ["PeerNetwork", "PeerState", "PeerTimeout", "PeerUnavailable", "PROTOCOL_VERSION"]

log = logging.getLogger("ramster.remote")

PROTOCOL_VERSION = wire.VERSION
REFUSAL_LOG_INTERVAL = 30.0  # seconds between log lines about one node's refused connections
HANDSHAKE_GRACE = 0.5  # seconds a redialled peer is given to complete its handshake (wait_reconnect)


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
    # marked down by the operator (`ramster ctl peer NAME down`): the engine treats it
    # as disconnected, whatever its connection does
    down: bool = False



class PeerNetwork:
    """This node's connections to every other node of the cluster."""

    def __init__(self, config: ClusterConfig, compressor: str = DEFAULT_COMPRESSOR):
        """`compressor` names the codec of the pages this node sends; a peer with another is refused."""
        self.config = config
        self.compressor = compressor
        self.handler: Handler | None = None
        self._on_peer_change: Callable[[int, bool, bool], object] | None = None
        self._free_frames: Callable[[], int] = lambda: 0
        self.boot_id = secrets.randbits(64)
        self.auth_failures = 0  # connections whose signature did not verify
        self.compressor_mismatches = 0  # proven nodes refused for using another compressor
        self.handshakes_refused = 0  # every connection this node refused, the two above included
        self._refusal_logs: dict[int | None, Throttled] = {}
        self._states = {n.number: PeerState(n.name, n.number) for n in config.peers}
        self._conns: dict[int, PeerConnection] = {}
        self._lost_at: dict[int, float] = {}  # ready connections lost and not back yet (monotonic)
        self._stalled_at = 0.0  # when the loop last resumed from a stall (monotonic; _tick)
        self._last_tick = 0.0
        self._ticker: asyncio.TimerHandle | None = None
        self._all: set[PeerConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._change = asyncio.Event()
        self._ssl_server, self._ssl_client = tls.contexts(config)

    @property
    def local(self) -> NodeSpec:
        return self.config.local

    # --- life cycle ------------------------------------------------------------------
    async def start(self, handler: Handler, *, free_frames: Callable[[], int] | None = None,
                    on_peer_change: Callable[[int, bool, bool], object] | None = None) -> None:
        """Serve `handler` to the peers: listen on the local node's address and dial the
        lower-numbered nodes.

        `await handler(node_number, request)` returns the reply to send;
        `free_frames()` is what this node reports having free in keepalive replies;
        `on_peer_change(number, connected, restarted)` (it may return an awaitable)
        is told when a peer connects or is lost.
        """
        self.handler = handler
        if free_frames is not None:
            self._free_frames = free_frames
        self._on_peer_change = on_peer_change
        cfg = self.config
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PeerConnection(self, None), cfg.local.host, cfg.local.port, backlog=64,
            reuse_address=True, ssl=self._ssl_server,
            ssl_handshake_timeout=cfg.request_timeout if self._ssl_server else None)
        log.info("node %d (%s) listening on %s", cfg.local.number, cfg.local.name, cfg.local.address)
        self._last_tick = time.monotonic()
        self._ticker = loop.call_later(cfg.keepalive, self._tick)
        for spec in cfg.peers:
            if spec.number < cfg.local.number:
                self._spawn(self._dial(spec))

    async def stop(self) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
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
            conn: PeerConnection | None = None
            try:
                _, conn = await asyncio.wait_for(loop.create_connection(
                    lambda: PeerConnection(self, spec.number), spec.host, spec.port,
                    ssl=self._ssl_client, server_hostname=spec.host if self._ssl_client else None,
                    ssl_handshake_timeout=cfg.request_timeout if self._ssl_client else None),
                    cfg.request_timeout)
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                log.debug("node %d (%s): connect to %s failed: %s", spec.number, spec.name, spec.address,
                          e or type(e).__name__)
                self._redial_failed(spec.number)
            if conn is not None:
                was_ready = await conn.closed
                if was_ready:
                    delay = cfg.reconnect_delay
                else:
                    self._redial_failed(spec.number)
            if self._stopping:
                return
            # jitter keeps a cluster that lost a node from redialling in lockstep
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, cfg.reconnect_max)

    # --- told by the connections ------------------------------------------------------------
    def node_name(self, number: int | None) -> str:
        spec = self.config.node(number) if number is not None else None
        return f"node {number} ({spec.name})" if spec is not None else f"node {number}"

    def connection_opened(self, conn: PeerConnection) -> None:
        self._all.add(conn)

    def connection_ready(self, conn: PeerConnection) -> PeerState:
        """`conn` completed the handshake; returns the record it keeps up to date."""
        n = conn.peer
        old = self._conns.get(n)
        self._conns[n] = conn
        if old is not None:
            # Only a connection that completed the signed handshake gets here, so
            # this is the node itself: it dialled again, having given up on the old one.
            old.close("replaced by a new connection from the same node")
        self._lost_at.pop(n, None)
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
        self._notify(n, not st.down, restarted)
        return st

    def mark_down(self, number: int, down: bool) -> bool:
        """Mark a peer down or up again; False if it already was. The engine hears of
        it as of a lost or regained connection (only if the connection is up)."""
        st = self._states[number]
        if st.down == down:
            return False
        st.down = down
        if number in self._conns:
            self._notify(number, not down, False)
        else:
            self.state_changed()
        return True

    def connection_lost(self, conn: PeerConnection, was_ready: bool) -> None:
        self._all.discard(conn)
        if not was_ready or self._conns.get(conn.peer) is not conn:
            self.state_changed()
            return
        del self._conns[conn.peer]
        self._lost_at[conn.peer] = time.monotonic()
        self._states[conn.peer].connected = False
        log.info("%s: disconnected (%s)", conn.name, conn.reason or "closed")
        if not self._stopping:
            self._notify(conn.peer, False, False)
        else:
            self.state_changed()

    def connection_refused(self, r: session.Refused) -> None:
        if not r.tell:
            return  # the peer refused us: its own counters say so
        self.handshakes_refused += 1
        if r.kind == session.AUTH:
            self.auth_failures += 1
        elif r.kind == session.COMPRESSOR:
            self.compressor_mismatches += 1
        if r.kind != session.OTHER and r.peer in self._states:
            self._states[r.peer].refused += 1
        self.state_changed()

    def refusal_log(self, claimed: int | None) -> Throttled:
        # one per claimed node (at most 16 and "unknown"), so a node retrying
        # does not hide another node's refusals
        key = claimed if claimed in self._states else None
        t = self._refusal_logs.get(key)
        if t is None:
            t = self._refusal_logs[key] = Throttled(log, logging.WARNING, REFUSAL_LOG_INTERVAL)
        return t

    def local_free_frames(self) -> int:
        try:
            return max(0, int(self._free_frames()))
        except Exception:
            log.exception("free_frames() failed")
            return 0

    def state_changed(self) -> None:
        """Wake wait_until(): connects, disconnects, refusals, measured round trips."""
        self._change.set()
        self._change = asyncio.Event()

    def _notify(self, n: int, connected: bool, restarted: bool) -> None:
        self.state_changed()
        cb = self._on_peer_change
        if cb is None:
            return
        try:
            r = cb(n, connected, restarted)
            if inspect.isawaitable(r):
                self._spawn(r)
        except Exception:
            log.exception("on_peer_change(%d, %s, %s) failed", n, connected, restarted)

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
        if self._states[node_number].down:
            raise PeerUnavailable(f"node {node_number} is marked down")
        return await conn.request(msg, self.config.request_timeout if timeout is None else timeout)

    def _tick(self) -> None:
        """A timer callback, not a task: after a stall it runs with the request
        timeouts that were due, before the callers they woke look at the state."""
        cfg = self.config
        now = time.monotonic()
        if now - self._last_tick > cfg.keepalive + cfg.request_timeout / 2:
            self._stalled_at = now
            log.info("this node's loop was stalled for %.1f s", now - self._last_tick - cfg.keepalive)
        self._last_tick = now
        if not self._stopping:
            self._ticker = asyncio.get_running_loop().call_later(cfg.keepalive, self._tick)

    def stalled_since(self, t: float) -> bool:
        """Whether this node's loop resumed from a stall after monotonic time t."""
        return self._stalled_at > t

    def _redial_failed(self, n: int) -> None:
        """This node's redial of n did not end in a ready connection: n is not coming back soon."""
        if self._lost_at.pop(n, None) is not None:
            self.state_changed()

    def reconnect_grace(self, node_number: int) -> float:
        """Seconds left for a lost peer to be back (0: it is connected, marked down, or
        its grace is over): the first redial's longest delay, and a handshake."""
        t = self._lost_at.get(node_number)
        if t is None or self._states[node_number].down:
            return 0.0
        grace = self.config.reconnect_delay * 1.2 + min(self.config.request_timeout, HANDSHAKE_GRACE)
        return max(0.0, t + grace - time.monotonic())

    async def wait_reconnect(self, nodes, since: float | None = None) -> bool:
        """Wait while none of `nodes` is connected and one of them is within its
        reconnect grace; whether one is connected. With `since` (monotonic), when
        this node stalled after it: wait for one heard from after the stall."""
        nodes = list(nodes)
        cfg = self.config
        if since is not None and self.stalled_since(since):
            after = self._stalled_at
            heard = lambda: any(self.connected(n) and (self._states[n].last_seen or 0) > after  # noqa: E731
                                for n in nodes)
            await self.wait_until(heard, cfg.reconnect_delay * 1.2 + HANDSHAKE_GRACE + cfg.keepalive)
            return heard()
        grace = max((self.reconnect_grace(n) for n in nodes), default=0.0)
        if grace > 0:
            await self.wait_until(lambda: any(self.connected(n) for n in nodes)
                                  or not any(self.reconnect_grace(n) for n in nodes), grace)
        return any(self.connected(n) for n in nodes)

    def connected(self, node_number: int) -> bool:
        """Connected and not marked down: worth asking."""
        return node_number in self._conns and not self._states[node_number].down

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
