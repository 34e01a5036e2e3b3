"""The host side (SPEC §5.4): this node as the store of other nodes' pages.

A part of Ramster (one of its bases). Peers' requests arrive here through the
network's handler, one message at a time on the node's loop. Node k's pool p
lives here as a foreign pool: a tmem pool of client k with the same pool id
and persistence, created by the first PutPages into it. Its pages are kept as
they came, compressed with their owner's codec (this node never decodes them),
under this node's budget and put policies, so a peer cannot take more room
than any local put could; they count as foreign pages and never travel on.

    PutPages   each page stored (ENOMEM where the budget refused it; EINVAL for
               all of them if the pool exists here with the other persistence)
    Get        the stored payload and its checksum, dropped with the get if asked
    FlushPage, FlushObject, DestroyPool   as their names say; unknown pools are
               no error (the page may already be gone)

Every reply carries this node's available frames, so peers place pages where
there is room without asking.
"""
from __future__ import annotations

import xxhash

from . import wire

checksum = xxhash.xxh3_64_intdigest


class Host:
    """Ramster's answers to its peers' requests."""

    def free_frames(self) -> int:
        """Frames a peer's put could have here now (free ones plus ephemeral ones)."""
        return self.zc.available_pageframes()

    async def handle(self, from_node: int, msg):
        zc = self.zc
        if isinstance(msg, wire.PutPages):
            pool = zc.foreign_pool(from_node, msg.pool_id, msg.persistent)
            if pool is None:  # the pool exists here with the other persistence
                statuses = [wire.EINVAL] * len(msg.pages)
            else:
                statuses = [0 if zc.put_raw(pool, pg.oid, pg.index, pg.data) else wire.ENOMEM for pg in msg.pages]
            return wire.PutReply(statuses, self.free_frames())
        if isinstance(msg, wire.Get):
            pool = zc.find_foreign_pool(from_node, msg.pool_id)
            data = zc.get_raw(pool, msg.oid, msg.index, msg.free) if pool is not None else None
            if data is None:
                return wire.GetReply(False, 0, b"", self.free_frames())
            return wire.GetReply(True, checksum(data), data, self.free_frames())
        pool = zc.find_foreign_pool(from_node, msg.pool_id) if hasattr(msg, "pool_id") else None
        if isinstance(msg, wire.FlushPage):
            if pool is not None:
                zc.drop_page(pool, msg.oid, msg.index)
        elif isinstance(msg, wire.FlushObject):
            if pool is not None:
                zc.drop_object(pool, msg.oid)
        elif isinstance(msg, wire.DestroyPool):
            if pool is not None:
                zc.destroy_foreign_pool(pool)
        else:
            return wire.ErrorReply(wire.ENOPROTOOPT, f"unexpected {type(msg).__name__}")
        return wire.Ack(self.free_frames())
