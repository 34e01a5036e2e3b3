"""The node's HTTP endpoint: /metrics (Prometheus text) and /stats (JSON).

/stats is the node's own document (Node.stats()): the seed's debugfs names,
unchanged, as `ramster stats` and anyone who knows zcache2 read them.
/metrics is rendered from that same document through the declarations in
counters.py, which say for each /stats key its Prometheus name, kind, unit,
help and labels; see that module's header for the naming scheme (seed name
-> ramster_<layer>_<what>[_<unit>][_total], the pool kind, export and peer
as labels, page frames as bytes). Nothing here infers a kind or a unit from
a name: a key counters.py does not declare is not rendered, and a test
fails on it. Beside the node's numbers /metrics carries ramster_build_info
and prometheus_client's process_* and python_info collectors.

A few lines of HTTP/1.1 on asyncio streams, in the node's own loop, so a
scrape reads the counters between two NBD requests and needs no locking.
Each response closes its connection; scrapers and `ramster stats` make one
request per connection anyway.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric as Family

from . import __version__
from .counters import BUILD_INFO, CLASS_STATS, COUNTER, COUNTERS, EXPORT_STATS, METRICS, PEER_STATS, Metric, Stat
from .units import format_address, parse_address

log = logging.getLogger("ramster.metrics")

MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0


class NodeCollector:
    """A prometheus_client collector over `stats()` (the dict /stats serves)."""

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats

    def collect(self) -> Iterator[Family]:
        families: dict[Metric, Family] = {}

        def add(st: Stat, head: tuple[str, ...], value) -> None:
            if value is None:  # not known yet (a peer's round trip before the first keepalive)
                return
            m = st.metric
            fam = families.get(m)
            if fam is None:
                cls = CounterMetricFamily if m.kind == COUNTER else GaugeMetricFamily
                fam = families[m] = cls(m.name, m.help, labels=m.labels, unit=m.base_unit)
            fam.add_metric((*head, *st.labels), value * m.scale)

        s = self._stats()
        for key, value in s.get("counters", {}).items():
            st = COUNTERS.get(key)
            if st is not None:  # an undeclared key: tests/unit/test_counters.py fails on it
                add(st, (), value)
        for name, e in s.get("exports", {}).items():
            head = (name, e.get("kind", ""))
            for part in ("counters", "gauges"):
                for field, value in e.get(part, {}).items():
                    st = EXPORT_STATS.get(f"{part}.{field}")
                    if st is not None:
                        add(st, head, value)
            if "size" in e:
                add(EXPORT_STATS["size"], head, e["size"])
        for p in s.get("peers", []):
            for field, value in p.items():
                st = PEER_STATS.get(field)
                if st is not None:
                    add(st, (p["name"],), int(value) if isinstance(value, bool) else value)
        for row in s.get("classes", []):
            head = (row["pool"], str(row["size"]))
            for field, st in CLASS_STATS.items():
                add(st, head, row[field])
        build = GaugeMetricFamily(BUILD_INFO.name, BUILD_INFO.help, labels=BUILD_INFO.labels)
        build.add_metric((__version__,), 1)
        families[BUILD_INFO] = build
        for m in METRICS:  # declaration order: a layer's families stay together
            if m in families:
                yield families[m]


class MetricsServer:
    """GET /metrics and GET /stats over plain asyncio streams."""

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(NodeCollector(stats))
        self._registry.register(ProcessCollector(registry=None))
        self._registry.register(PlatformCollector(registry=None))
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()
        self.address: str | None = None  # "HOST:PORT" actually bound

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        h, p = self._server.sockets[0].getsockname()[:2]
        self.address = format_address(h, p)

    @property
    def port(self) -> int:
        return parse_address(self.address).port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for t in list(self._clients):
            t.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                return
            if len(head) > MAX_REQUEST_BYTES:
                await self._respond(writer, 431, "text/plain", b"request header too large\n")
                return
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                await self._respond(writer, 400, "text/plain", b"bad request\n")
                return
            method, target = parts[0], parts[1]
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._respond(writer, 405, "text/plain", b"only GET\n", extra="Allow: GET, HEAD\r\n")
                return
            if path == "/metrics":
                body = generate_latest(self._registry)
                ctype = CONTENT_TYPE_LATEST
            elif path == "/stats":
                body = json.dumps(self._stats(), indent=1).encode() + b"\n"
                ctype = "application/json"
            else:
                await self._respond(writer, 404, "text/plain", b"not found: try /metrics or /stats\n")
                return
            await self._respond(writer, 200, ctype, b"" if method == "HEAD" else body,
                                length=len(body))
        except asyncio.CancelledError:
            pass
        except Exception as e:  # one bad scrape must not take the node down
            log.warning("metrics request failed: %r", e)
        finally:
            self._clients.discard(task)
            writer.close()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes,
                       *, length: int | None = None, extra: str = "") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large"}[status]
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n{extra}Connection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
