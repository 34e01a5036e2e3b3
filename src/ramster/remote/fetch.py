"""Reading remote pages back (SPEC §5.5): gets, losses, and re-replication.

A part of Ramster (one of its bases). A get of a page that lives on peers
asks its holders in turn, connected ones first (a paused one costs a whole
request timeout), and takes the first copy whose xxh3 matches the checksum the
remote table recorded when the page left. Then, if the handle still holds the
same remote entry:

- a freeing get (an exclusive or ephemeral get) drops the page here; the
  holder that answered dropped its copy with the get, the others are flushed;
- a non-freeing get repatriates the page when a frame is free: it is stored
  again from its compressed payload (put_raw, keeping the remote copy until
  the page is home), which frees the remote entry and flushes the copies in
  order with later puts to those nodes.

When no holder is reachable and their connections were lost a moment ago,
or this node itself was stalled (stopped) while it asked them, the get waits
for one to come back (peer.wait_reconnect: a grace of about a second, ended
early by a redial that fails) and asks again, once
(`remote_gets_after_reconnect`), rather than fail a page every holder still
has.

Concurrent gets of one page share one fetch (`_inflight`), then look again.
The outcomes, as the trust contract wants them: an ephemeral page no holder
has is a miss; a persistent one raises RemoteError, `lost=False` when a holder
did not answer (it may come back), `lost=True` when every holder answered that
it has no copy: then its holders are forgotten and the loss is counted once,
unless the swap disk holds it too. A node that restarted lost every copy it
held (`node_lost_pages`), counted the same way.

Re-replication (`repair`) gives every page with fewer than `replicas` copies
on connected nodes a new copy, read from a connected holder and put to a
node that holds none. A holder that is not connected is dropped from the
entry only after the replacement is acknowledged, and its copy is flushed.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time

import xxhash

from . import wire
from .table import MAX_COPIES, NO_NODE

log = logging.getLogger("ramster.remote")

checksum = xxhash.xxh3_64_intdigest

# _fetch's answer when the page was rewritten or flushed while its holders were asked
_AGAIN = object()


class RemoteError(Exception):
    """A remote page could not be read: `lost` if no copy exists any more."""

    def __init__(self, message: str, lost: bool):
        super().__init__(message)
        self.lost = lost
        self.errno = errno.EIO


class Fetch:
    """Ramster's remote gets, loss accounting and repair."""

    async def get(self, pool, oid: int, index: int, free: bool = False) -> bytes | None:
        """The page, wherever it is. Raises RemoteError when a remote page cannot be read."""
        zc = self.zc
        free = free or not pool.persistent
        while True:
            r = zc.remote_entry(pool, oid, index)
            if r < 0:
                return zc.get_pool_page(pool, oid, index, free)
            key = (pool.client_id, pool.pool_id, oid, index)
            pending = self._inflight.get(key)
            if pending is not None:
                await pending  # concurrent gets of one page share one fetch, then look again
                continue
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                out = await self._fetch(pool, oid, index, r, free)
            finally:
                del self._inflight[key]
                fut.set_result(None)
            if out is not _AGAIN:
                return out

    async def _fetch(self, pool, oid: int, index: int, r: int, free: bool) -> bytes | None:
        zc, table = self.zc, self.table
        c = pool.cls
        want = table.cksum[r]
        nodes = table.nodes(r)
        data = None
        source = NO_NODE
        for attempt in (0, 1):
            unreachable = 0
            asked = time.monotonic()
            # connected holders first: a paused one costs a whole request timeout
            for node in sorted(nodes, key=lambda n: not self.net.connected(n)):
                try:
                    reply = await self.net.request(node, wire.Get(pool.pool_id, pool.persistent, oid, index, free))
                except Exception as e:
                    log.debug("get from node %d failed: %s", node, e)
                    unreachable += 1
                    continue
                if not isinstance(reply, wire.GetReply) or not reply.found:
                    continue
                if checksum(reply.data) != want:
                    self.remote_checksum_errors += 1
                    log.error("page %s/%d from node %d failed its checksum", oid, index, node)
                    continue
                data, source = reply.data, node
                break
            # No holder reachable, and their connections were lost a moment ago (this node
            # was stopped past the peers' idle timeout, a link flapped): they are being
            # made again, and a page every holder still has is worth that wait, not an EIO.
            # A holder that died refuses its redial, which ends the wait (peer.py).
            if (data is not None or attempt or not nodes or unreachable < len(nodes)
                    or zc.remote_entry(pool, oid, index) != r or not await self.net.wait_reconnect(nodes, asked)):
                break
            self.remote_gets_after_reconnect += 1
        still = zc.remote_entry(pool, oid, index) == r
        if data is None and not still:
            # a write (or a flush) replaced the page while its holders were asked, and
            # its flushes took their copies: the handle's new content answers, not EIO
            return _AGAIN
        if data is None:
            if c:
                self.remote_pers_pages_unsucc_get += 1
            else:
                self.remote_eph_pages_unsucc_get += 1
            if not c:
                if still:  # an ephemeral page may vanish: a miss
                    zc.drop_page(pool, oid, index)
                return None
            if unreachable:
                raise RemoteError(f"no node holding page {oid}/{index} answered", lost=False)
            if still and nodes:
                # every holder answered that it has no copy: forget them, count the loss once
                table.set_nodes(r, [])
                if not table.on_disk[r]:
                    self.remote_pers_pages_lost += 1
            raise RemoteError(f"page {oid}/{index} is lost: no node holds it any more", lost=True)
        if still:
            if free:
                # the source dropped its copy with the get; other replicas are flushed
                table.set_nodes(r, [n for n in nodes if n != source])
                zc.drop_page(pool, oid, index)
            elif self._has_room():
                # repatriate: the page comes home; the dup put frees the remote pampd,
                # which flushes the remote copies in order with later puts
                if not zc.put_raw(pool, oid, index, data, keep_old=True):
                    self.pers_pages_remote_nomem += 1
            else:
                self.pers_pages_remote_nomem += 1
        if c:
            self.remote_pers_pages_succ_get += 1
        else:
            self.remote_eph_pages_succ_get += 1
        try:
            return zc.decode(data)
        except Exception as e:  # a codec error: the bytes passed their checksum, so the codec differs
            raise RemoteError(f"page {oid}/{index} could not be decoded: {e}", lost=False) from None

    def _has_room(self) -> bool:
        zc = self.zc
        return zc.pageframes_in_use < zc.max_pageframes

    # ---- failures ------------------------------------------------------------------------------

    def node_lost_pages(self, node: int) -> int:
        """`node` restarted (its pages are gone): forget its copies. Returns pages left
        with no copy on any peer; those not on the swap disk either are counted lost."""
        table = self.table
        orphaned = lost = 0
        for r in table.entries():
            nodes = table.nodes(r)
            if node in nodes:
                left = [n for n in nodes if n != node]
                table.set_nodes(r, left)
                if not left:
                    orphaned += 1
                    if table.cls[r] and not table.on_disk[r]:
                        lost += 1
        self.remote_pers_pages_lost += lost
        if orphaned:
            log.warning("node %d restarted: %d remote page(s) had no other copy (%d not on the swap disk either)",
                        node, orphaned, lost)
        return orphaned

    def pages_on(self, node: int) -> int:
        """Remote pages of this node that `node` holds."""
        return self.table.held[node]

    def pages_only_on(self, node: int) -> int:
        """Remote pages whose only copy `node` holds."""
        return self.table.alone[node]

    async def repair(self) -> int:
        """Give every remote page fewer than `replicas` copies on connected nodes a new
        copy, read from a connected holder. The new copy is added to the page's
        holders once acknowledged; only then may a holder that is not connected be
        dropped from the list (its copy is flushed when it can be). Returns pages copied."""
        if self.policy.replicas < 2 or self._repairing:
            return 0
        self._repairing = True
        try:
            return await self._repair()
        finally:
            self._repairing = False

    async def _repair(self) -> int:
        zc, table, net = self.zc, self.table, self.net
        want = self.policy.replicas
        todo = []
        for pool, oid, index, r in zc.remote_slots():
            nodes = table.nodes(r)
            live = [n for n in nodes if net.connected(n)]
            if live and len(live) < want:
                todo.append((pool, oid, index, r))
        done = 0
        for pool, oid, index, r in todo:
            if zc.remote_entry(pool, oid, index) != r:
                continue  # flushed or rewritten meanwhile
            nodes = table.nodes(r)
            live = [n for n in nodes if net.connected(n)]
            spare = self.choose_targets_excluding(set(nodes))
            if not live or not spare:
                continue
            try:
                reply = await net.request(live[0], wire.Get(pool.pool_id, pool.persistent, oid, index, False))
            except Exception:
                continue
            if not isinstance(reply, wire.GetReply) or not reply.found or checksum(reply.data) != table.cksum[r]:
                continue
            put = wire.PutPages(pool.pool_id, pool.persistent, [wire.PutPage(oid, index, table.cksum[r], reply.data)])
            ack = await self._call(spare[0], put)
            if not (isinstance(ack, wire.PutReply) and ack.statuses == [0]):
                continue
            if zc.remote_entry(pool, oid, index) != r:
                self._send(spare[0], wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")
                continue
            nodes = table.nodes(r) + [spare[0]]
            while len(nodes) > MAX_COPIES:  # the replacement is in: a holder that is down may go
                gone = next(n for n in nodes if not net.connected(n))
                nodes.remove(gone)
                self._send(gone, wire.FlushPage(pool.pool_id, pool.persistent, oid, index), "page")
            table.set_nodes(r, nodes)
            self._pool_nodes.setdefault(self._pool_key(pool), set()).add(spare[0])
            self.pages_rereplicated += 1
            done += 1
        if done:
            log.info("%d remote page(s) copied to other nodes", done)
        return done
