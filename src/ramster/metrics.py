"""The node's HTTP endpoint: /metrics (Prometheus text) and /stats (JSON).

A few lines of HTTP/1.1 on asyncio streams, in the node's own loop, so a
scrape reads the counters between two NBD requests and needs no locking.
Each response closes its connection; scrapers and `ramster stats` make one
request per connection anyway.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .units import format_address, parse_address

log = logging.getLogger("ramster.metrics")

MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0

# Engine values that are levels, not event counts: exposed as gauges.
_GAUGE = re.compile(
    r"(_max|_count|_pageframes|_zpages|_zbytes|^zcache\.last_.*|^zcache\.outstanding_writeback_pages"
    r"|^zcache\.zero_filled_pages|^zcache\.same_filled_pages|^zcache\.huge_pages|^zcache\.max_pageframes"
    r"|^ramster\.(remote|foreign)_(eph|pers)_pages|^ramster\.remote_pages_short)$"
)
# ...except these totals, which only grow
_TOTAL = re.compile(r"(_cumul_\w+|evicted_\w+|_evicted_pageframes)$")
_HELP = {
    "zcache": "zcache2 debugfs counter",
    "zbud": "zbud debugfs counter",
    "frontswap": "frontswap counter",
    "cleancache": "cleancache counter",
    "ramster": "RAMster counter",
}
_REQUEST_FIELDS = ("reads", "writes", "trims", "zeroes", "flushes", "caches", "block_status")
_BYTE_FIELDS = {"bytes_read": "read", "bytes_written": "write"}


def is_gauge(name: str) -> bool:
    return bool(_GAUGE.search(name)) and not _TOTAL.search(name)


def _metric_name(key: str) -> str:
    return "ramster_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class NodeCollector:
    """A prometheus_client collector over `stats()` (the dict /stats serves)."""

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats

    def collect(self):
        s = self._stats()
        for key, value in s.get("counters", {}).items():
            name = _metric_name(key)
            helptext = f"{_HELP.get(key.partition('.')[0], 'counter')} {key}"
            if is_gauge(key):
                yield GaugeMetricFamily(name, helptext, value=value)
            else:
                yield CounterMetricFamily(name, helptext, value=value)
        exports = s.get("exports", {})
        requests = CounterMetricFamily("ramster_export_requests", "NBD requests served, by command",
                                       labels=("export", "kind", "command"))
        nbytes = CounterMetricFamily("ramster_export_bytes", "Bytes read from and written to an export",
                                     labels=("export", "kind", "direction"))
        errors = CounterMetricFamily("ramster_export_errors", "Requests an export answered with an error",
                                     labels=("export", "kind"))
        size = GaugeMetricFamily("ramster_export_size_bytes", "Size of an export", labels=("export", "kind"))
        extra_c: dict[str, CounterMetricFamily] = {}
        extra_g: dict[str, GaugeMetricFamily] = {}
        for name, e in exports.items():
            kind = e.get("kind", "")
            size.add_metric((name, kind), e.get("size", 0))
            for field, value in e.get("counters", {}).items():
                if field in _REQUEST_FIELDS:
                    requests.add_metric((name, kind, field), value)
                elif field in _BYTE_FIELDS:
                    nbytes.add_metric((name, kind, _BYTE_FIELDS[field]), value)
                elif field == "errors":
                    errors.add_metric((name, kind), value)
                else:
                    fam = extra_c.get(field)
                    if fam is None:
                        fam = extra_c[field] = CounterMetricFamily(
                            f"ramster_export_{field}", f"Export counter {field}", labels=("export", "kind"))
                    fam.add_metric((name, kind), value)
            for field, value in e.get("gauges", {}).items():
                fam = extra_g.get(field)
                if fam is None:
                    fam = extra_g[field] = GaugeMetricFamily(
                        f"ramster_export_{field}", f"Export gauge {field}", labels=("export", "kind"))
                fam.add_metric((name, kind), value)
        yield requests
        yield nbytes
        yield errors
        yield size
        yield from extra_c.values()
        yield from extra_g.values()
        peers = s.get("peers", [])
        if peers:
            up = GaugeMetricFamily("ramster_peer_connected", "1 while the peer connection is up", labels=("peer",))
            rtt = GaugeMetricFamily("ramster_peer_rtt_seconds", "Keepalive round trip to the peer", labels=("peer",))
            held = GaugeMetricFamily("ramster_peer_pages_held", "This node's pages the peer holds", labels=("peer",))
            alone = GaugeMetricFamily("ramster_peer_pages_only_copy",
                                      "This node's pages whose only copy the peer holds", labels=("peer",))
            free = GaugeMetricFamily("ramster_peer_free_frames", "Free frames the peer last reported",
                                     labels=("peer",))
            for p in peers:
                up.add_metric((p["name"],), 1 if p["connected"] else 0)
                if p.get("rtt_seconds") is not None:
                    rtt.add_metric((p["name"],), p["rtt_seconds"])
                held.add_metric((p["name"],), p.get("pages_held", 0))
                alone.add_metric((p["name"],), p.get("pages_only_copy", 0))
                if p.get("free_frames") is not None:
                    free.add_metric((p["name"],), p["free_frames"])
            yield from (up, rtt, held, alone, free)
        node = s.get("node", {})
        if "uptime_seconds" in node:
            yield GaugeMetricFamily("ramster_uptime_seconds", "Seconds since the node started",
                                    value=node["uptime_seconds"])


class MetricsServer:
    """GET /metrics and GET /stats over plain asyncio streams."""

    def __init__(self, stats: Callable[[], dict]):
        self._stats = stats
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(NodeCollector(stats))
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
