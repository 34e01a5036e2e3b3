"""RAMster's engine side (SPEC §5) between in-process nodes.

The nodes talk through a loopback network that encodes and decodes every
message with the real wire codec; the socket transport itself is tested in
tests/interop/test_peers.py.
"""
import asyncio
from dataclasses import dataclass

import pytest
from pages import page, sized_page

from ramster import Frontswap, Zcache
from ramster.remote import wire
from ramster.remote.ramster import Ramster, RemoteError, RemotifyPolicy
from ramster.zcache import ON_PEER


@dataclass
class PeerState:
    number: int
    connected: bool = True
    free_frames: int | None = None
    down: bool = False  # marked down by the operator (PeerNetwork.mark_down)


class Unavailable(Exception):
    pass


class LoopbackNet:
    """Nodes in one process; `down` nodes do not answer."""

    def __init__(self):
        self.nodes: dict[int, Ramster] = {}
        self.down: set[int] = set()
        self.requests: list[tuple[int, int, str]] = []
        # node -> event: a request to it waits for the event, then fails as a timeout would
        self.stalled: dict[int, asyncio.Event] = {}
        # set by a test: lost connections are coming back (wait_reconnect waits for this event)
        self.reconnect: asyncio.Event | None = None
        self.waiting = asyncio.Event()  # set when a get starts that wait

    def view(self, me: int) -> "NodeNet":
        return NodeNet(self, me)


class NodeNet:
    def __init__(self, loop_net: LoopbackNet, me: int):
        self.ln = loop_net
        self.me = me

    def peers(self):
        return [PeerState(n, n not in self.ln.down, self.ln.nodes[n].free_frames())
                for n in self.ln.nodes if n != self.me]

    def connected(self, node: int) -> bool:
        return node not in self.ln.down

    async def wait_reconnect(self, nodes, since=None) -> bool:
        """As the real network's: here lost connections come back when a test's `reconnect` says."""
        back = self.ln.reconnect
        if back is not None and not any(self.connected(n) for n in nodes):
            self.ln.waiting.set()
            await back.wait()
        return any(self.connected(n) for n in nodes)

    async def request(self, node: int, msg):
        if node in self.ln.down:
            raise Unavailable(f"node {node} is down")
        self.ln.requests.append((self.me, node, type(msg).__name__))
        stall = self.ln.stalled.get(node)
        if stall is not None:
            await stall.wait()
            raise Unavailable(f"node {node} did not answer in time")
        (req,) = wire.Decoder().feed(wire.encode(msg))
        await asyncio.sleep(0)  # a real network yields
        reply = await self.ln.nodes[node].handle(self.me, req)
        (rep,) = wire.Decoder().feed(wire.encode(reply))
        return rep


def cluster(n: int, frames: int = 64, replicas: int = 1, ephemeral: bool = True):
    ln = LoopbackNet()
    for i in range(n):
        others = tuple(j for j in range(n) if j != i)
        zc = Zcache(frames, reserve_pageframes=256)
        ln.nodes[i] = Ramster(zc, ln.view(i), RemotifyPolicy(targets=others, replicas=replicas, ephemeral=ephemeral))
    return ln


def local(zc: Zcache, pool, oid: int, index: int) -> bool:
    """The page is in this node's memory (not on a peer)."""
    return zc.contains(pool.pool_id, oid, index) and not zc.on_peer(pool.pool_id, oid, index)


def run(coro):
    return asyncio.run(coro)


def fill(zc: Zcache, pid: int, count: int, oid_of=lambda i: i & 255, index_of=lambda i: i >> 8):
    for i in range(count):
        assert zc.put_page(pid, oid_of(i), index_of(i), page(i))


async def remotified(ln: LoopbackNet, count: int, frames: int = 20):
    """Node 0 with `count` pages in a new persistent pool, one remotify batch done:
    (node, pool, the pages now remote)."""
    a = ln.nodes[0]
    pid = a.zc.new_pool(persistent=True)
    fill(a.zc, pid, count)
    await a.remotify_batch(frames=frames)
    pool = a.zc.pool(pid)
    return a, pool, [i for i in range(count) if a.zc.on_peer(pool.pool_id, i & 255, i >> 8)]


def test_remotify_moves_frames_and_remote_gets_return_the_pages():
    async def go():
        ln = cluster(2)
        a, b = ln.nodes[0], ln.nodes[1]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 100)
        frames_before = a.zc.zbud.pageframes[1]
        moved = await a.remotify_batch(frames=10)
        await asyncio.sleep(0)
        assert moved == 10
        assert a.zc.zbud.pageframes[1] == frames_before - 10
        s = a.stats()
        assert s["ramster.pers_pages_remoted"] == s["ramster.remote_pers_pages"] >= 19
        assert b.zc.stats()["ramster.foreign_pers_pages"] == s["ramster.remote_pers_pages"]
        a.zc.check()
        b.zc.check()
        pool = a.zc.pool(pid)
        # the sync API says clearly that a page is remote
        remote = [i for i in range(100) if a.zc.on_peer(pool.pool_id, i & 255, i >> 8)]
        assert len(remote) == s["ramster.remote_pers_pages"]
        assert a.zc.get_page(pid, remote[0] & 255, remote[0] >> 8) is ON_PEER
        assert a.zc.get_page(pid, remote[0] & 255, remote[0] >> 8, free=True) is ON_PEER  # left in place
        assert a.zc.peek_page(pid, remote[0] & 255, remote[0] >> 8) is None
        for i in range(100):
            assert await a.get(pool, i & 255, i >> 8) == page(i)
        assert a.stats()["ramster.remote_pers_pages_succ_get"] >= len(remote)
        a.zc.check()
        b.zc.check()

    run(go())


def test_non_freeing_get_repatriates_when_there_is_room():
    async def go():
        ln = cluster(2)
        b = ln.nodes[1]
        a, pool, remote = await remotified(ln, 20, frames=5)
        i = remote[0]
        assert await a.get(pool, i & 255, i >> 8) == page(i)
        assert local(a.zc, pool, i & 255, i >> 8)  # local again
        await asyncio.sleep(0.01)  # let the queued flush reach b
        assert a.stats()["ramster.remote_pages_flushed"] >= 1
        assert b.zc.foreign_pages[1] == len(remote) - 1

    run(go())


def test_exclusive_get_deletes_slot_and_remote_copy():
    async def go():
        ln = cluster(2)
        a, b = ln.nodes[0], ln.nodes[1]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 10)
        await a.remotify_batch(frames=5)
        pool = a.zc.pool(pid)
        for i in range(10):
            assert await a.get(pool, i & 255, i >> 8, free=True) == page(i)
            assert not a.zc.contains(pool.pool_id, i & 255, i >> 8)
        assert b.zc.foreign_pages[1] == 0
        assert a.stats()["ramster.remote_pers_pages"] == 0 and a.table.live == 0

    run(go())


def test_flushes_and_pool_destroy_reach_the_remote_side():
    async def go():
        ln = cluster(2)
        a, b = ln.nodes[0], ln.nodes[1]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 60, oid_of=lambda i: i % 3, index_of=lambda i: i)
        await a.remotify_batch(frames=30)
        held = b.zc.foreign_pages[1]
        assert held == 60
        pool = a.zc.pool(pid)
        assert a.zc.flush_page(pid, 0, 0)
        assert a.zc.flush_object(pid, 1)
        await asyncio.sleep(0.01)
        assert b.zc.foreign_pages[1] == held - 1 - 20
        assert a.stats()["ramster.remote_objects_flushed"] == 1 and a.stats()["ramster.remote_pages_flushed"] == 1
        a.zc.destroy_pool(pid)
        await asyncio.sleep(0.01)
        assert b.zc.foreign_pages[1] == 0
        assert b.zc.find_foreign_pool(0, pool.pool_id) is None  # the foreign pool itself is gone
        assert a.stats()["ramster.remote_pools_destroyed"] == 1
        b.zc.check()

    run(go())


def test_puts_and_flushes_to_a_node_stay_in_order():
    async def go():
        ln = cluster(2)
        a = ln.nodes[0]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 10)
        await a.remotify_batch(frames=5)
        a.zc.flush_object(pid, 0)
        fill(a.zc, pid, 4)  # the same handles again
        await a.remotify_batch(frames=5)
        kinds = [k for src, dst, k in ln.requests if src == 0]
        assert kinds.index("FlushObject") < len(kinds) - 1 - kinds[::-1].index("PutPages")
        pool = a.zc.pool(pid)
        for i in range(4):
            assert await a.get(pool, i & 255, i >> 8) == page(i)

    run(go())


def test_two_replicas_survive_one_node_down_and_checksum_is_verified():
    async def go():
        ln = cluster(3, replicas=2)
        a, pool, remote = await remotified(ln, 40)
        assert remote and ln.nodes[1].zc.foreign_pages[1] == ln.nodes[2].zc.foreign_pages[1] == len(remote)
        # corrupt node 1's copy of one page: the get must notice and use node 2's
        i = remote[0]
        fpool = ln.nodes[1].zc.find_foreign_pool(0, pool.pool_id)
        p = ln.nodes[1].zc.lookup(fpool, i & 255, i >> 8)
        mv = ln.nodes[1].zc.zbud.payload(p)
        mv[5] ^= 0xFF
        ln.down.add(2)
        with pytest.raises(RemoteError) as info:
            await a.get(pool, i & 255, i >> 8)
        assert not info.value.lost  # node 2 may come back
        assert a.stats()["ramster.remote_checksum_errors"] == 1
        ln.down.clear()
        assert await a.get(pool, i & 255, i >> 8, free=True) == page(i)
        ln.down.add(1)  # kill one replica: every page stays readable
        for j in remote[1:]:
            assert await a.get(pool, j & 255, j >> 8) == page(j)

    run(go())


def test_restarted_node_pages_are_lost_not_zeros():
    async def go():
        ln = cluster(2)
        a, pool, remote = await remotified(ln, 10, frames=5)
        # node 1 restarts empty
        ln.nodes[1] = Ramster(Zcache(64), ln.view(1), RemotifyPolicy(targets=(0,)))
        assert a.node_lost_pages(1) == len(remote)
        for i in remote:
            with pytest.raises(RemoteError) as info:
                await a.get(pool, i & 255, i >> 8)
            assert info.value.lost
        assert a.stats()["ramster.remote_pers_pages_lost"] == len(remote)

    run(go())


def test_ephemeral_remote_miss_is_a_miss():
    async def go():
        ln = cluster(2)
        a, b = ln.nodes[0], ln.nodes[1]
        eid = a.zc.new_pool(persistent=False)
        fill(a.zc, eid, 10)
        await a.remotify_batch(frames=5)
        pool = a.zc.pool(eid)
        remote = [i for i in range(10) if a.zc.on_peer(pool.pool_id, i & 255, i >> 8)]
        assert remote and a.stats()["ramster.eph_pages_remoted"] == len(remote)
        # b evicts its foreign ephemeral pages under its own pressure
        b.zc.set_max_pageframes(0)
        i = remote[0]
        assert await a.get(pool, i & 255, i >> 8) is None
        assert await a.get(pool, i & 255, i >> 8) is None  # a miss stays a miss
        assert a.stats()["ramster.remote_eph_pages_unsucc_get"] == 1

    run(go())


def test_concurrent_gets_share_one_fetch():
    async def go():
        ln = cluster(2)
        a = ln.nodes[0]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 4)
        a.zc.set_max_pageframes(64)
        await a.remotify_batch(frames=2)
        pool = a.zc.pool(pid)
        remote = [i for i in range(4) if a.zc.on_peer(pool.pool_id, i & 255, i >> 8)]
        i = remote[0]
        ln.requests.clear()
        got = await asyncio.gather(*(a.get(pool, i & 255, i >> 8) for _ in range(5)))
        assert got == [page(i)] * 5
        assert [k for _, _, k in ln.requests].count("Get") == 1

    run(go())


def test_put_during_remotify_wins_and_orphan_is_flushed():
    async def go():
        ln = cluster(2)
        a, b = ln.nodes[0], ln.nodes[1]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 2)
        task = asyncio.ensure_future(a.remotify_batch(frames=1))
        await asyncio.sleep(0)  # the frame is a zombie, its pages in flight
        assert a.zc.put_page(pid, 0, 0, page(50))  # overwrite one of them
        await task
        await asyncio.sleep(0.01)
        pool = a.zc.pool(pid)
        assert await a.get(pool, 0, 0) == page(50)
        assert await a.get(pool, 1, 0) == page(1)
        assert b.zc.foreign_pages[1] == 1  # the orphaned copy of (0, 0) was flushed
        a.zc.check()

    run(go())


def test_foreign_pages_are_not_remotified_again():
    async def go():
        ln = cluster(3)
        a, b = ln.nodes[0], ln.nodes[1]
        ln.down.add(2)
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 20)
        await a.remotify_batch(frames=10)
        held = b.zc.foreign_pages[1]
        assert held
        ln.down.clear()
        assert await b.remotify_batch(frames=10) == 0
        assert ln.nodes[2].zc.foreign_pages[1] == 0 and b.zc.foreign_pages[1] == held
        b.zc.check()

    run(go())


def test_frontswap_pages_round_trip_through_a_peer():
    async def go():
        ln = cluster(2, frames=32)
        a = ln.nodes[0]
        ln.nodes[1].zc.set_max_pageframes(256)  # the memory server has room for everything
        fs = Frontswap(a.zc, exclusive_gets=False)
        fs.init(0)
        stored = 0
        for off in range(400):
            while not fs.store(0, off, page(off)):
                assert await a.remotify_batch(frames=8), "nothing could be remotified"
            stored += 1
        assert stored == 400 and a.stats()["ramster.remote_pers_pages"] > 300
        pool = a.zc.pool(fs.pool_id)
        from ramster.frontends.frontswap import swiz

        for off in range(400):
            assert await a.get(pool, *swiz(0, off)) == page(off)

    run(go())


def test_dead_replica_is_rereplicated_to_a_third_node():
    async def go():
        ln = cluster(4, replicas=2)
        a, pool, remote = await remotified(ln, 40)
        held = {n: ln.nodes[n].zc.foreign_pages[1] for n in (1, 2, 3)}
        dead = max(held, key=held.get)
        ln.down.add(dead)
        copied = await a.repair()
        assert copied == held[dead] and a.stats()["ramster.pages_rereplicated"] == copied
        assert a.stats()["ramster.remote_pages_short"] == 0 and a.pages_on(dead) == 0
        alive = [n for n in (1, 2, 3) if n != dead]
        assert sum(ln.nodes[n].zc.foreign_pages[1] for n in alive) == 2 * len(remote)
        # with the dead node gone for good, losing one more replica still loses nothing
        ln.down.add(alive[0])
        for i in remote:
            assert await a.get(pool, i & 255, i >> 8) == page(i)

    run(go())


def test_a_paused_replica_keeps_its_copies_until_a_replacement_is_acknowledged():
    """replicas = 2 on two peers: b goes away (no spare to copy to), comes back with the
    same boot, then c goes away: every page is still read, from b."""
    async def go():
        ln = cluster(3, replicas=2)
        a, pool, remote = await remotified(ln, 40)
        assert remote and a.pages_on(1) == a.pages_on(2) == len(remote)
        ln.down.add(1)
        a.peer_changed(1, connected=False, restarted=False)
        assert await a.repair() == 0  # nowhere to copy to: the copies on node 1 stay listed
        assert a.pages_on(1) == len(remote)
        ln.down.discard(1)
        a.peer_changed(1, connected=True, restarted=False)
        ln.down.add(2)
        for i in remote:
            assert await a.get(pool, i & 255, i >> 8) == page(i)
        assert a.stats()["ramster.remote_pers_pages_lost"] == 0

    run(go())


def test_flushes_a_peer_missed_reach_it_when_it_is_back():
    async def go():
        ln = cluster(2)
        a, b = ln.nodes[0], ln.nodes[1]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 40)
        await a.remotify_batch(frames=20)
        pool = a.zc.pool(pid)
        remote = [i for i in range(40) if a.zc.on_peer(pool.pool_id, i & 255, i >> 8)]
        assert b.zc.foreign_pages[1] == len(remote) > 2
        ln.down.add(1)
        a.zc.flush_page(pid, remote[0] & 255, remote[0] >> 8)  # missed by b
        assert a.zc.put_page(pid, remote[1] & 255, remote[1] >> 8, page(999))  # its flush too
        for _ in range(4):
            await asyncio.sleep(0)
        ln.down.discard(1)
        a.peer_changed(1, connected=True, restarted=False)
        for _ in range(8):
            await asyncio.sleep(0)
        assert b.zc.foreign_pages[1] == len(remote) - 2 == a.pages_on(1)

    run(go())


def test_lost_pages_are_counted_once_and_only_without_any_copy():
    async def go():
        ln = cluster(2)
        a, pool, remote = await remotified(ln, 40)
        ln.down.add(1)
        for i in remote[:3]:  # unreachable is not lost
            with pytest.raises(RemoteError) as e:
                await a.get(pool, i & 255, i >> 8)
            assert not e.value.lost
        assert a.stats()["ramster.remote_pers_pages_lost"] == 0
        ln.down.discard(1)
        a.peer_changed(1, connected=True, restarted=True)  # it came back empty
        assert a.stats()["ramster.remote_pers_pages_lost"] == len(remote)
        for _ in range(2):
            for i in remote:
                with pytest.raises(RemoteError) as e:
                    await a.get(pool, i & 255, i >> 8)
                assert e.value.lost
        assert a.stats()["ramster.remote_pers_pages_lost"] == len(remote)

    run(go())


def test_remotify_writes_persistent_pages_through_to_the_sink():
    async def go():
        ln = cluster(2)
        a = ln.nodes[0]
        disk = {}
        a.zc.writeback_sink = lambda pool, oid, index, data: disk.__setitem__((oid, index), data) or True
        a, pool, remote = await remotified(ln, 20, frames=5)
        assert sorted(disk) == sorted((i & 255, i >> 8) for i in remote)
        assert all(disk[(i & 255, i >> 8)] == page(i) for i in remote)

    run(go())


def test_selfshrink_brings_pages_home_when_idle():
    async def go():
        ln = cluster(2, frames=64)
        a = ln.nodes[0]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 30)
        await a.remotify_batch(frames=10)
        before = a.stats()["ramster.remote_pers_pages"]
        assert before == 20
        results = [await a.selfshrink_pass() for _ in range(4)]
        # idle for three passes (the inertia), then at most 20 pages come home at once
        assert results[:3] == [0, 0, 0] and results[3] == before
        assert a.stats()["ramster.remote_pers_pages"] == 0
        pool = a.zc.pool(pid)
        for i in range(30):
            assert local(a.zc, pool, i & 255, i >> 8)

    run(go())


def test_cleancache_remote_page_is_a_miss_and_its_copy_goes():
    async def go():
        from ramster import Cleancache

        ln = cluster(2)
        a, b = ln.nodes[0], ln.nodes[1]
        cc = Cleancache(a.zc)
        fsid = cc.init_fs()
        for i in range(20):
            cc.put_page(fsid, 7, i, page(i))
        await a.remotify_batch(frames=5)
        held = b.zc.foreign_pages[0]
        assert held
        pool = a.zc.pool(fsid)
        remote = [i for i in range(20) if a.zc.on_peer(pool.pool_id, 7, i)]
        assert cc.get_page(fsid, 7, remote[0]) is None
        assert cc.get_page(fsid, 7, remote[0]) is None  # and stays a miss
        await asyncio.sleep(0.01)
        assert b.zc.foreign_pages[0] == held - 1

    run(go())


def test_refused_repatriation_keeps_the_remote_copy():
    async def go():
        ln = cluster(2, frames=64)
        a = ln.nodes[0]
        pid = a.zc.new_pool(persistent=True)
        big = sized_page(1, 3000)  # compresses to more than 2560 bytes
        assert a.zc.put_page(pid, 1, 0, big)
        await a.remotify_batch(frames=1)
        pool = a.zc.pool(pid)
        assert a.zc.on_peer(pool.pool_id, 1, 0)
        # room in the budget, but the persistent policy refuses the page (mean size rule)
        fill(a.zc, pid, 4, oid_of=lambda i: 2, index_of=lambda i: i)
        a.zc.zbytes[1] = 10**9
        assert await a.get(pool, 1, 0) == big
        assert a.zc.on_peer(pool.pool_id, 1, 0)  # still remote, not lost
        assert a.stats()["ramster.pers_pages_remote_nomem"] == 1
        a.zc.zbytes[1] = 0
        assert await a.get(pool, 1, 0) == big
        assert local(a.zc, pool, 1, 0)  # now it came home

    run(go())


def test_zcache_stats_carry_the_ramster_counters():
    ln = cluster(2)
    s = ln.nodes[0].zc.stats()
    for name in ("eph_pages_remoted", "pers_pages_remoted", "eph_pages_remote_failed", "pers_pages_remote_failed",
                 "remote_eph_pages_succ_get", "remote_pers_pages_succ_get", "remote_eph_pages_unsucc_get",
                 "remote_pers_pages_unsucc_get", "pers_pages_remote_nomem", "remote_objects_flushed",
                 "remote_pages_flushed", "remote_object_flushes_failed", "remote_page_flushes_failed",
                 "foreign_eph_pages", "foreign_eph_pages_max", "foreign_pers_pages", "foreign_pers_pages_max",
                 "remote_pers_pages", "remote_pers_pages_lost"):
        assert f"ramster.{name}" in s, name


def test_recompressed_pages_travel_in_the_clusters_codec_both_ways():
    """Pages recompressed on their owner leave for a peer in the cluster's codec; the peer
    keeps them as they came (it never recompresses a foreign page) and gives back the
    bytes whose checksum the owner holds."""
    async def go():
        ln = cluster(2, frames=256)
        a, b = ln.nodes[0], ln.nodes[1]
        pid = a.zc.new_pool(persistent=True)
        fill(a.zc, pid, 120)
        assert a.zc.recompress(idle_only=False) > 0
        await a.remotify_batch(frames=40)
        pool = a.zc.pool(pid)
        remote = [i for i in range(120) if a.zc.on_peer(pool.pool_id, i & 255, i >> 8)]
        assert remote
        assert b.zc.recompress(idle_only=False) == 0  # foreign pages only: left as they came
        for i in range(120):
            assert await a.get(pool, i & 255, i >> 8, free=i % 2 == 0) == page(i)
        a.zc.check()
        b.zc.check()

    run(go())


def test_a_get_racing_a_rewrite_returns_a_page_not_eio():
    """A get waits on a holder that stops answering while the page is written again;
    the write's flush takes the other holder's copy. The get must then answer from
    what the handle holds now (either version is right for a read racing a write),
    not EIO as if every copy were out of reach."""
    async def go():
        ln = cluster(3, replicas=2)
        a, pool, remote = await remotified(ln, 40)
        i = remote[0]
        oid, index = i & 255, i >> 8
        held = ln.nodes[2].zc.foreign_pages[1]
        ln.stalled[1] = asyncio.Event()
        get = asyncio.ensure_future(a.get(pool, oid, index))
        for _ in range(1000):  # until the get waits on node 1
            if (0, 1, "Get") in ln.requests:
                break
            await asyncio.sleep(0)
        assert (0, 1, "Get") in ln.requests
        new = sized_page(7777, 900)
        assert a.zc.put_page(pool.pool_id, oid, index, new)
        for _ in range(1000):  # until the rewrite's flush has reached node 2
            if ln.nodes[2].zc.foreign_pages[1] == held - 1:
                break
            await asyncio.sleep(0)
        assert ln.nodes[2].zc.foreign_pages[1] == held - 1
        ln.stalled[1].set()  # node 1 times out
        assert await get in (new, page(i))
        assert a.stats()["ramster.remote_pers_pages_unsucc_get"] == 0

    run(go())


@pytest.mark.parametrize("back", [True, False])
def test_a_get_with_no_holder_connected_waits_for_a_lost_connection_to_come_back(back):
    """Every holder's connection went at once (this node was stopped past the peers'
    idle timeout, say): the get waits for one to come back and reads the page; only
    when none comes back within the grace does it fail, with EIO, the page not lost."""
    async def go():
        ln = cluster(3, replicas=2)
        a, pool, remote = await remotified(ln, 40)
        i = remote[0]
        ln.down |= {1, 2}
        ln.reconnect = asyncio.Event()
        get = asyncio.ensure_future(a.get(pool, i & 255, i >> 8))
        await asyncio.wait_for(ln.waiting.wait(), 10)  # until the get waits (a bound, not a pace)
        if back:
            ln.down.clear()
            ln.reconnect.set()
            assert await get == page(i)
            assert a.remote_gets_after_reconnect == 1
        else:
            ln.reconnect.set()  # the grace is over (or the redial failed) and nobody came back
            with pytest.raises(RemoteError) as info:
                await get
            assert not info.value.lost and a.remote_pers_pages_lost == 0
            assert a.remote_gets_after_reconnect == 0
        a.zc.check()

    run(go())
