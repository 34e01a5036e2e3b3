"""Admission: the memory an NBD server's connections hold, bounded per connection and in all.

The trust contract (DESIGN.md, point 4) says no client makes the node use
memory beyond its budget plus a fixed, documented overhead. What a
connection *holds* is the payload received of its WRITEs not yet finished
(the one still arriving counts what has arrived, never what was announced),
the length of its READs admitted and not yet handed to the transport,
REQUEST_COST per request admitted, and, while the transport has paused
writing, the reply bytes it has not sent. The core (protocol.py) admits a
request only if it fits both the connection's cap (`connection_cap`) and
what is left of the server's (`node_cap`), except that a connection holding
nothing may always start one request: a client that waits for its replies
keeps being served, at queue depth one at worst, while clients that
pipeline without reading are held at their cap. A request that does not fit
stops the parsing at its header (the connection joins `blocked`) and its
socket is no longer read until something is released (the client reads
replies, requests finish); then every blocked connection retries, once per
loop iteration however many releases there were. Requests are at most
`max_request` long (advertised with NBD_INFO_BLOCK_SIZE; longer READs and
WRITEs get EINVAL, a WRITE's payload being skipped, not stored). So, with
M = max_connections:

    RSS <= budget + P + node_cap + M * (max_request + REQUEST_COST + C)

where P is the process itself (interpreter, libraries, the export's index:
about 40 MiB for `ramster node`) and C what a connection holds outside the
accounting: the rest of a socket read (up to 256 KiB) kept while parsing is
stopped, or the slack of a growing WRITE payload (1/8 of it); reply bytes
under the transport's 64 KiB high-water mark; option data (64 KiB) in the
handshake; the tasks of up to MAX_INFLIGHT requests: under 1 MiB. With the
defaults (2 MiB, 64 MiB, 32 connections) that is budget + P + 64 MiB +
32 * 3 MiB = budget + P + 160 MiB, about budget + 200 MiB.

The per-connection side (what one connection holds, `_held`) is counted by
the connection itself (connection.py) on its hot path; this object is the
server-wide side they all add to.
"""
from __future__ import annotations

import asyncio

CONNECTION_CAP = 16 * 1024 * 1024  # nbdcopy's 64 requests of 256 KiB fit
NODE_CAP = 64 * 1024 * 1024


class Admission:
    """The bytes all connections of one server hold (`held`), and those waiting for credit.

    A connection in `blocked` has a `retry()` that feeds its core again.
    """

    def __init__(self, connection_cap: int = CONNECTION_CAP, node_cap: int = NODE_CAP):
        self.connection_cap = connection_cap
        self.node_cap = node_cap
        self.held = 0
        self.blocked: set = set()
        self._wake_scheduled = False

    def wake_soon(self) -> None:
        """Bytes were released: the blocked connections retry at the end of this loop iteration."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        for conn in list(self.blocked):
            conn.retry()
