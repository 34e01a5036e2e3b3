"""The remote table: where each page this node moved to peers lives.

One entry per remote page, numbered r; zcache keeps r in the page's tmem slot
(as a remote pampd, see pampd.py), so a handle leads to its entry in O(1) and
the entry needs no handle of its own. An entry is a column of flat arrays, not
an object, for the same reason zbud's frames are: a node may have millions of
pages on peers, and a Python object per page would cost more than the page's
whole metadata budget.

    node_a[r], node_b[r]   the nodes holding a copy (NO_NODE: none); at most
                           MAX_COPIES, whatever `replicas` asks
    size[r]                the payload's length; 0 marks a free entry
    cksum[r]               xxh3 of the payload, checked on every get
    cls[r]                 0 ephemeral, 1 persistent
    on_disk[r]             1: written through to the swap disk as well, so the
                           page is not lost when every peer copy is

Freed entries go on a stack (`_free`) and are reused first. Three tallies are
kept as entries change, never recounted: `held[n]` (pages node n holds a copy
of), `alone[n]` (pages whose only copy node n holds: what a crash of n costs)
and `short` (pages with a copy but fewer than `replicas`: the re-replication
backlog). A page with no copy at all counts in none of them; it is either on
the swap disk or lost, and was counted as lost when its last copy went.
"""
from __future__ import annotations

from array import array

MAX_COPIES = 2  # copies of one remote page the table tracks (replicas = 1 or 2)
NO_NODE = -1
MAX_NODES = 16


class RemoteTable:
    """Where each remote page lives: the nodes holding a copy (at most MAX_COPIES), its
    compressed size and checksum, and whether the swap disk holds it too."""

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas
        self.node_a = array("b")
        self.node_b = array("b")
        self.size = array("H")
        self.cksum = array("Q")
        self.cls = bytearray()
        self.on_disk = bytearray()  # 1: written through to the swap disk as well
        self._free = array("i")
        self.live = 0
        # kept as entries change, for stats and repairs: pages each node holds, pages
        # whose only copy a node holds, pages with a copy but fewer than `replicas`
        self.held = [0] * MAX_NODES
        self.alone = [0] * MAX_NODES
        self.short = 0

    def alloc(self, nodes: list[int], size: int, cksum: int, c: int, on_disk: bool = False) -> int:
        if self._free:
            r = self._free.pop()
        else:
            r = len(self.size)
            self.node_a.append(NO_NODE)
            self.node_b.append(NO_NODE)
            self.size.append(0)
            self.cksum.append(0)
            self.cls.append(0)
            self.on_disk.append(0)
        # a new or released entry holds no node: nothing to uncount
        self._count(nodes, 1)
        self.node_a[r] = nodes[0] if nodes else NO_NODE
        self.node_b[r] = nodes[1] if len(nodes) > 1 else NO_NODE
        self.size[r] = size
        self.cksum[r] = cksum
        self.cls[r] = c
        self.on_disk[r] = on_disk
        self.live += 1
        return r

    def nodes(self, r: int) -> list[int]:
        return [n for n in (self.node_a[r], self.node_b[r]) if n != NO_NODE]

    def set_nodes(self, r: int, nodes: list[int]) -> None:
        if len(nodes) > MAX_COPIES:
            raise ValueError(f"at most {MAX_COPIES} copies of a page are tracked")
        self._count(self.nodes(r), -1)
        self._count(nodes, 1)
        self.node_a[r] = nodes[0] if nodes else NO_NODE
        self.node_b[r] = nodes[1] if len(nodes) > 1 else NO_NODE

    def _count(self, nodes: list[int], d: int) -> None:
        for n in nodes:
            self.held[n] += d
        if len(nodes) == 1:
            self.alone[nodes[0]] += d
        if 0 < len(nodes) < self.replicas:
            self.short += d

    def release(self, r: int) -> None:
        self.set_nodes(r, [])
        self.size[r] = 0
        self._free.append(r)
        self.live -= 1

    def entries(self):
        """Every entry in use (r), in table order."""
        size = self.size
        return (r for r in range(len(size)) if size[r])
