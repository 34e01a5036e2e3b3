"""RAMster peers over real sockets on 127.0.0.1.

In-process PeerNetworks share one event loop; a peer that must be paused or
killed is a real tests/memory_peer.py process. Nothing waits by
sleeping: tests wait on peer-state changes or replies, each with a deadline.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from memory_peer import MemoryStore
from support import free_port, need

from ramster.remote import keys, session, wire
from ramster.remote.clusterconf import load_cluster
from ramster.remote.peer import PeerNetwork, PeerTimeout, PeerUnavailable
from ramster.remote.wire import Get, GetReply, PutPage, PutPages

MEMORY_PEER = str(Path(__file__).resolve().parents[1] / "memory_peer.py")
FAST = {"request_timeout": 0.5, "keepalive": 0.2, "idle_timeout": 1.5,
        "reconnect_delay": 0.05, "reconnect_max": 0.3}


def cluster_doc(tmp_path, names, key_dir="keys", **options) -> dict:
    """A cluster of `names` numbered from 0, each node's key in tmp_path/key_dir (made once, then reused)."""
    key_dir = tmp_path / key_dir
    public = keys.node_keys(key_dir, names)
    return {"cluster": {"name": "lab", "key_dir": str(key_dir), **FAST, **options,
                        "node": [{"name": n, "number": i, "address": f"127.0.0.1:{free_port()}",
                                  "public_key": public[n]}
                                 for i, n in enumerate(names)]}}


def write_toml(path, doc) -> None:
    c = doc["cluster"]
    lines = ["[cluster]"]
    lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
              for k, v in c.items() if k != "node"]
    for n in c["node"]:
        lines += ["[[cluster.node]]", f'name = "{n["name"]}"', f'number = {n["number"]}',
                  f'address = "{n["address"]}"', f'public_key = "{n["public_key"]}"']
    path.write_text("\n".join(lines) + "\n")


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def start_net(doc, name, handler=None, frames=1000, compressor="lz4", free_frames=None,
                    on_peer_change=None) -> PeerNetwork:
    store = handler or MemoryStore(frames)
    if free_frames is None and isinstance(store, MemoryStore):
        free_frames = store.free
    net = PeerNetwork(load_cluster(doc, name), compressor=compressor)
    await net.start(store, free_frames=free_frames, on_peer_change=on_peer_change)
    return net


async def all_connected(nets, timeout=5.0) -> None:
    for net in nets:
        ok = await net.wait_until(lambda: all(p.connected for p in net.peers()), timeout)
        assert ok, f"{net.local.name}: {net.peers()}"


async def stop_all(nets) -> None:
    for net in nets:
        await net.stop()


def page(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (1 + i % 20)


class PeerProcess:
    """tests/memory_peer.py as a child process."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls, config_path, name) -> PeerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, MEMORY_PEER, "--config", str(config_path), "--name", name,
            stdout=subprocess.PIPE)
        self = cls(proc)
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            if not line:
                raise RuntimeError(f"peer process exited early with {await proc.wait()}")
            if line.strip() == b"ready":
                return self

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    async def pause(self) -> None:
        """SIGSTOP, returning once the kernel reports the process stopped."""
        self.proc.send_signal(signal.SIGSTOP)
        # WNOWAIT leaves the state for the event loop's child watcher, which only reaps exits
        await asyncio.wait_for(asyncio.to_thread(os.waitid, os.P_PID, self.proc.pid,
                                                 os.WSTOPPED | os.WNOWAIT), 10)

    async def kill(self) -> None:
        # no SIGCONT first: SIGKILL ends a stopped process too, and a continued one
        # could still answer what was sent to it while it was stopped
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), 10)


async def retry_until_ok(net, node, msg, timeout=8.0):
    """Send `msg` until it gets a reply (the peer may still be reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        await net.wait_until(lambda: net.connected(node), max(0.0, deadline - time.monotonic()))
        try:
            return await net.request(node, msg)
        except (PeerUnavailable, PeerTimeout):
            if time.monotonic() > deadline:
                raise


# --- three in-process nodes -----------------------------------------------------------------
def test_three_nodes_requests_both_ways(tmp_path):
    async def main():
        doc = cluster_doc(tmp_path, "abc")
        nets = [await start_net(doc, n) for n in "abc"]
        try:
            await all_connected(nets)
            # every ordered pair, so both the dialling and the accepting side send requests
            pairs = [(s, d) for s in range(3) for d in range(3) if s != d]
            puts = [nets[s].request(d, PutPages(1, True, [PutPage(s * 100 + i, i, i, page(i))
                                                          for i in range(8)]))
                    for s, d in pairs]
            for r in await asyncio.gather(*puts):
                assert type(r) is wire.PutReply and r.statuses == [0] * 8
            gets = [(s, d, i) for s, d in pairs for i in range(8)]
            replies = await asyncio.gather(*(nets[s].request(d, Get(1, True, s * 100 + i, i, False))
                                             for s, d, i in gets))
            for (s, d, i), r in zip(gets, replies):
                assert r == GetReply(True, i, page(i), r.free_frames, msg_id=r.msg_id)
            # pages are kept per sending node (foreign pool = sender's client id)
            r = await nets[0].request(2, Get(1, True, 100, 0, False))
            assert r.found is False
            assert all(p.free_frames == 1000 - 16 for p in nets[0].peers())
        finally:
            await stop_all(nets)

    run(main())


def test_replies_matched_when_out_of_order(tmp_path):
    release: dict[int, asyncio.Event] = {}

    async def handler(node, msg):
        # each request waits for its own release, so replies leave in whatever order we choose
        await release[msg.index].wait()
        return GetReply(True, msg.index, bytes([msg.index]), 0)

    async def main():
        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a")
        b = await start_net(doc, "b", handler)
        try:
            await all_connected([a, b])
            for i in range(40):
                release[i] = asyncio.Event()
            tasks = [asyncio.create_task(a.request(1, Get(0, False, 1, i, False), timeout=5)) for i in range(40)]
            for i in reversed(range(40)):
                release[i].set()
            for i, t in enumerate(tasks):
                r = await t
                assert (r.checksum, r.data) == (i, bytes([i]))
        finally:
            await stop_all([a, b])

    run(main())


def test_handler_errors_become_error_replies(tmp_path):
    async def handler(node, msg):
        if type(msg) is wire.FlushPage:
            raise RuntimeError("no such pool")
        if type(msg) is wire.DestroyPool:
            return None
        return wire.Ack(5)

    async def main():
        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a")
        b = await start_net(doc, "b", handler)
        try:
            await all_connected([a, b])
            r = await a.request(1, wire.FlushPage(0, True, 1, 2))
            assert type(r) is wire.ErrorReply and r.status == wire.EIO and "no such pool" in r.message
            r = await a.request(1, wire.DestroyPool(0, True))
            assert type(r) is wire.ErrorReply
            # the connection keeps serving
            r = await a.request(1, wire.FlushObject(0, True, 1))
            assert (type(r), r.free_frames, r.status) == (wire.Ack, 5, 0)
        finally:
            await stop_all([a, b])

    run(main())


def test_incoming_requests_are_bounded(tmp_path, monkeypatch):
    from ramster.remote import connection
    monkeypatch.setattr(connection, "MAX_HANDLERS", 4)
    running = []

    async def main():
        go = asyncio.Event()
        changed = asyncio.Event()

        async def handler(node, msg):
            running.append(msg.index)
            changed.set()
            await go.wait()
            return wire.Ack(msg.index)

        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a")
        b = await start_net(doc, "b", handler)
        try:
            await all_connected([a, b])
            tasks = [asyncio.create_task(a.request(1, wire.FlushPage(0, True, 0, i), timeout=5)) for i in range(20)]
            while len(running) < 4:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 5)
            conn = b._conns[0]
            # reading stops at the bound, so no more handlers start while these block
            assert conn.reading_paused and conn.handlers == 4
            # not synchronisation: a window in which excess requests could wrongly start
            await asyncio.sleep(0.05)
            assert len(running) == 4
            go.set()
            replies = await asyncio.gather(*tasks)
            assert [r.free_frames for r in replies] == list(range(20))
            assert sorted(running) == list(range(20)) and not conn.reading_paused
        finally:
            go.set()
            await stop_all([a, b])

    run(main())


def test_not_connected_and_bad_requests(tmp_path):
    async def main():
        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a")
        try:
            t0 = time.monotonic()
            with pytest.raises(PeerUnavailable):
                await a.request(1, wire.Keepalive())
            with pytest.raises(PeerUnavailable):
                await a.request(7, wire.Keepalive())
            assert time.monotonic() - t0 < 0.1
            with pytest.raises(TypeError):
                await a.request(1, wire.Ack(0))
        finally:
            await a.stop()

    run(main())


def test_keepalive_measures_rtt_and_reports_free_frames(tmp_path):
    async def main():
        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a", free_frames=lambda: 4321)
        b = await start_net(doc, "b")
        try:
            await all_connected([a, b])
            ok = await b.wait_until(lambda: b.peers()[0].rtt is not None and b.peers()[0].free_frames == 4321, 5)
            assert ok, b.peers()
            st = b.peers()[0]
            assert 0 < st.rtt < 0.5
            assert (st.name, st.number, st.connected) == ("a", 0, True)
            # with no traffic at all, keepalives keep the connection up past the idle timeout
            seen = st.last_seen
            ok = await b.wait_until(lambda: b.peers()[0].last_seen > seen + FAST["idle_timeout"], 5)
            assert ok and b.connected(0) and b.peers()[0].connects == 1
        finally:
            await stop_all([a, b])

    run(main())


def test_connection_loss_fails_waiting_requests_at_once(tmp_path):
    async def main():
        blocked = asyncio.Event()
        entered = asyncio.Event()

        async def handler(node, msg):
            entered.set()
            await blocked.wait()
            return wire.Ack(0)

        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a")
        changes = []
        b = await start_net(doc, "b", handler, on_peer_change=lambda n, c, r: changes.append((n, c, r)))
        try:
            await all_connected([a, b])
            assert changes == [(0, True, False)]
            del changes[:]
            pending = [asyncio.create_task(a.request(1, wire.FlushPage(0, True, 1, i), timeout=10))
                       for i in range(5)]
            await asyncio.wait_for(entered.wait(), 5)
            t0 = time.monotonic()
            a._conns[1].close("test: cut the wire")
            for p in pending:
                with pytest.raises(PeerUnavailable):
                    await p
            assert time.monotonic() - t0 < 1
            assert await b.wait_until(lambda: (0, False, False) in changes, 5)
            # b dials again; the same boot id means a reconnect, not a restart
            assert await b.wait_until(lambda: (0, True, False) in changes, 5)
        finally:
            blocked.set()
            await stop_all([a, b])

    run(main())


# --- handshake and authentication ----------------------------------------------------------------
def test_node_with_a_key_the_others_do_not_list_is_refused(tmp_path):
    async def main():
        doc = cluster_doc(tmp_path, "abc")
        # b's own copy of the file lists b's new key; a and c still list the old one
        bad = cluster_doc(tmp_path, "abc", key_dir="other-keys")
        bad["cluster"]["node"] = [dict(n) for n in doc["cluster"]["node"]]
        bad["cluster"]["node"][1]["public_key"] = keys.node_keys(tmp_path / "other-keys", "b")["b"]
        a = await start_net(doc, "a")
        b = await start_net(bad, "b")  # dials a, is dialled by c
        c = await start_net(doc, "c")
        try:
            ok = await a.wait_until(lambda: a.auth_failures >= 1 and a.connected(2), 5)
            assert ok
            assert await c.wait_until(lambda: c.auth_failures >= 1, 5)
            assert not a.connected(1) and not c.connected(1)
            # and b never looked connected to them, not even for a moment
            assert b.peers()[0].connects == 0 and b.peers()[1].connects == 0
            assert a.peers()[0].refused >= 1 and c.peers()[1].refused >= 1
            assert a.handshakes_refused >= a.auth_failures
            # b checked a's and c's signatures and found them good: the refusals are theirs, not its
            assert b.auth_failures == 0 and not any(p.connected for p in b.peers())
            with pytest.raises(PeerUnavailable):
                await a.request(1, wire.Keepalive())
        finally:
            await stop_all([a, b, c])

    run(main())


class RawPeer:
    """A hand-written client speaking the wire protocol directly, as an outside check."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.decoder, self.queue = reader, writer, wire.Decoder(), []

    @classmethod
    async def connect(cls, port):
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def close(self):
        self.writer.close()

    def send(self, msg):
        self.writer.write(wire.encode(msg))

    async def recv(self):
        """The next message that is not a keepalive (those are answered here)."""
        while True:
            while not self.queue:
                try:
                    data = await asyncio.wait_for(self.reader.read(65536), 5)
                except ConnectionResetError:
                    data = b""
                if not data:
                    return None
                self.queue += self.decoder.feed(data)
            m = self.queue.pop(0)
            if type(m) is not wire.Keepalive:
                return m
            self.send(wire.KeepaliveReply(0, msg_id=m.msg_id))

    async def handshake(self, number, key, cluster="lab", local=0, boot_id=99, compressor="lz4"):
        """Claim node `number`, signing with `key` (whichever key this peer holds); the reply."""
        hello = await self.recv()
        assert type(hello) is wire.Hello and hello.node_number == local
        self.peer_hello = hello
        nonce = os.urandom(32)
        self.send(wire.Hello(wire.VERSION, cluster, number, nonce, boot_id, compressor))
        signed = session.transcript(cluster, wire.VERSION, number, local, hello.nonce, nonce, boot_id, compressor)
        self.send(wire.Auth(keys.sign(key, signed)))
        self.send(wire.Welcome())  # without checking the node's Auth: only what we prove matters here
        return await self.recv()


def node_key(doc, name):
    """The private key of node `name` of a cluster_doc (what only that node holds)."""
    return keys.read_private_key(f'{doc["cluster"]["key_dir"]}/{name}.key')


def test_raw_client_handshake_and_unknown_type(tmp_path):
    async def main():
        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a")
        raw = await RawPeer.connect(a.local.port)
        try:
            auth = await raw.handshake(1, node_key(doc, "b"))
            assert type(auth) is wire.Auth
            assert type(await raw.recv()) is wire.Welcome
            assert await a.wait_until(lambda: a.connected(1), 5)
            # an unknown type gets an error status, and the connection stays
            raw.writer.write(struct.pack(">HBBiII", wire.MAGIC, wire.VERSION, 250, 0, 77, 3) + b"abc")
            raw.send(wire.Keepalive(msg_id=78))
            err = await raw.recv()
            assert type(err) is wire.ErrorReply and err.msg_id == 77 and err.status == wire.ENOPROTOOPT
            ka = await raw.recv()
            assert type(ka) is wire.KeepaliveReply and ka.msg_id == 78
            # requests from a reach the raw peer
            task = asyncio.create_task(a.request(1, Get(1, True, 2, 3, True)))
            m = await raw.recv()
            assert m == Get(1, True, 2, 3, True, msg_id=m.msg_id)
            raw.send(GetReply(True, 9, b"zz", 5, msg_id=m.msg_id))
            assert (await task).data == b"zz"
        finally:
            raw.close()
            await a.stop()

    run(main())


@pytest.mark.parametrize("case", ["another node's key", "a stranger's key", "wrong cluster", "lower number dials",
                                  "own number", "unknown number", "garbage", "version 1"])
def test_raw_client_refused(tmp_path, case):
    async def main():
        doc = cluster_doc(tmp_path, "abc")
        b = await start_net(doc, "b")  # node 1: only node 2 may dial it
        raw = await RawPeer.connect(b.local.port)
        try:
            if case in ("garbage", "version 1"):
                raw.writer.write(b"GET / HTTP/1.0\r\n\r\n" if case == "garbage" else
                                 struct.pack(">HBBiII", wire.MAGIC, 1, wire.T_HELLO, 0, 0, 0))
                await raw.recv()  # its Hello
                err = await raw.recv()  # told why, then closed
                assert type(err) is wire.ErrorReply and "protocol error" in err.message
                assert await raw.recv() is None
                if case == "version 1":
                    assert "unsupported protocol version 1 (this node speaks 2)" in err.message
                assert b.handshakes_refused == 1 and b.auth_failures == 0
                return
            number, kw = {"another node's key": (2, {"key": node_key(doc, "a")}),
                          "a stranger's key": (2, {"key": keys.new_private_key()}),
                          "wrong cluster": (2, {"cluster": "other"}),
                          "lower number dials": (0, {}), "own number": (1, {}),
                          "unknown number": (9, {})}[case]
            kw.setdefault("key", node_key(doc, "c"))
            reply = await raw.handshake(number, local=1, **kw)
            if case.endswith("key"):
                assert type(reply) is wire.Auth  # it proves itself, but refuses us
                err = await raw.recv()
                assert type(err) is wire.ErrorReply and "authentication failed" in err.message
                assert await raw.recv() is None
                assert b.auth_failures == 1 and b.peers()[1].refused == 1
            else:
                assert type(reply) is wire.ErrorReply  # the reason, before the close
                assert await raw.recv() is None
                assert b.auth_failures == 0 and b.handshakes_refused == 1
            assert not b.connected(2)
        finally:
            raw.close()
            await b.stop()

    run(main())


def test_impostor_cannot_evict_or_restart_a_connected_node(tmp_path, caplog):
    """c holds only its own key and claims to be b (with another boot id) while b is connected."""
    async def main():
        doc = cluster_doc(tmp_path, "abc")
        changes = []
        a = await start_net(doc, "a", on_peer_change=lambda n, c, r: changes.append((n, c, r)))
        b = await start_net(doc, "b")
        try:
            await a.wait_until(lambda: a.connected(1), 5)
            real = a._conns[1]
            boot = a.peers()[0].boot_id
            del changes[:]  # b's connect
            r = await a.request(1, PutPages(2, True, [PutPage(1, 1, 7, b"b keeps this")]))
            assert r.statuses == [0]
            for _ in range(3):  # an impostor that retries
                raw = await RawPeer.connect(a.local.port)
                try:
                    reply = await raw.handshake(1, node_key(doc, "c"), boot_id=boot ^ 1)
                    assert type(reply) is wire.Auth
                    err = await raw.recv()
                    assert type(err) is wire.ErrorReply and "authentication failed" in err.message
                    assert await raw.recv() is None
                finally:
                    raw.close()
            assert a.auth_failures == 3 and a.peers()[0].refused == 3
            # the real connection is the same one, b never looked restarted, and it serves
            assert a._conns[1] is real and a.peers()[0].boot_id == boot and a.peers()[0].connects == 1
            assert changes == []
            r = await a.request(1, Get(2, True, 1, 1, False))
            assert (r.found, r.data) == (True, b"b keeps this")
            # the real b, dialling again (same key, same boot id), does replace the connection
            raw = await RawPeer.connect(a.local.port)
            try:
                assert type(await raw.handshake(1, node_key(doc, "b"), boot_id=boot)) is wire.Auth
                assert type(await raw.recv()) is wire.Welcome
                assert await a.wait_until(lambda: a._conns.get(1) is not real, 5)
                # a reconnect, not a restart (b itself then dials again and takes over: also no restart)
                assert changes[0] == (1, True, False) and not any(r for *_, r in changes)
            finally:
                raw.close()
        finally:
            await stop_all([a, b])

    with caplog.at_level(logging.WARNING, logger="ramster.remote"):
        run(main())
    refusals = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    # three refusals in a row: one line at once, the rest summed up later (rate-limited)
    assert len(refusals) == 1 and "claiming node 1 (b)" in refusals[0], refusals


def test_different_compressors_are_refused_on_both_sides(tmp_path, caplog):
    async def main():
        doc = cluster_doc(tmp_path, "ab")
        a = await start_net(doc, "a", compressor="lz4")
        b = await start_net(doc, "b", compressor="zstd")
        try:
            # b dials and is refused again and again, backing off (reconnect_delay 0.05 s, doubling to 0.3 s)
            t0 = time.monotonic()
            assert await a.wait_until(lambda: a.compressor_mismatches >= 3, 5)
            elapsed = time.monotonic() - t0
            assert await b.wait_until(lambda: b.compressor_mismatches >= 3, 5)
            assert not a.connected(1) and not b.connected(0)
            assert a.peers()[0].refused >= 3 and b.peers()[0].refused >= 3 and a.auth_failures == 0
            assert a.peers()[0].connects == 0
            # no hot loop: attempts are spaced by the dialler's back-off
            assert a.compressor_mismatches <= 3 + elapsed / (0.8 * 0.05)
            assert a.counters()["ramster.compressor_mismatches"] == a.compressor_mismatches
        finally:
            await stop_all([a, b])

    with caplog.at_level(logging.WARNING, logger="ramster.remote"):
        run(main())
    lines = [r.getMessage() for r in caplog.records]
    assert any("node b uses zstd, this node uses lz4: all nodes of a cluster must use the same compressor"
               in m for m in lines), lines
    assert any("node a uses lz4, this node uses zstd: all nodes of a cluster must use the same compressor"
               in m for m in lines), lines


# --- a real peer process: pause, resume, restart ---------------------------------------------------
def test_paused_peer_times_out_and_recovers(tmp_path):
    async def main():
        doc = cluster_doc(tmp_path, ["m", "a", "b"])
        write_toml(tmp_path / "cluster.toml", doc)
        m = await PeerProcess.start(tmp_path / "cluster.toml", "m")
        changes = []
        a = await start_net(doc, "a", on_peer_change=lambda n, c, r: changes.append((n, c, r)))
        b = await start_net(doc, "b")
        try:
            await all_connected([a, b])
            assert sorted(changes) == [(0, True, False), (2, True, False)]
            del changes[:]
            r = await a.request(0, PutPages(3, True, [PutPage(1, 1, 11, b"kept")]))
            assert r.statuses == [0]

            await m.pause()
            t0 = time.monotonic()
            stalled = [asyncio.create_task(a.request(0, Get(3, True, 1, 1, False))) for _ in range(5)]
            # meanwhile the other peer keeps answering, promptly
            for i in range(20):
                r = await a.request(2, PutPages(3, True, [PutPage(i, 0, 0, b"x")]), timeout=0.4)
                assert r.statuses == [0]
            for t in stalled:
                with pytest.raises(PeerTimeout):
                    await t
            assert time.monotonic() - t0 < FAST["request_timeout"] + 0.4
            # silent past the idle timeout: the connection is given up
            assert await a.wait_until(lambda: (0, False, False) in changes, FAST["idle_timeout"] + 2)
            with pytest.raises(PeerUnavailable):
                await a.request(0, wire.Keepalive())

            m.signal(signal.SIGCONT)
            r = await retry_until_ok(a, 0, Get(3, True, 1, 1, False))
            assert (r.found, r.checksum, r.data) == (True, 11, b"kept")
            # same process, same boot id: a reconnect, not a restart
            assert (0, True, False) in changes and (0, True, True) not in changes
            await b.wait_until(lambda: b.connected(0), 5)
            assert (await retry_until_ok(b, 0, wire.Keepalive())).msg_id
        finally:
            await stop_all([a, b])
            assert await m.stop() == 0

    run(main(), timeout=45)


def test_restarted_peer_reported_with_new_boot_id(tmp_path):
    async def main():
        doc = cluster_doc(tmp_path, ["m", "a"])
        write_toml(tmp_path / "cluster.toml", doc)
        m = await PeerProcess.start(tmp_path / "cluster.toml", "m")
        changes = []
        a = await start_net(doc, "a", on_peer_change=lambda n, c, r: changes.append((n, c, r)))
        try:
            await all_connected([a])
            assert changes == [(0, True, False)]
            boot1 = a.peers()[0].boot_id
            r = await a.request(0, PutPages(0, True, [PutPage(5, 5, 5, b"gone soon")]))
            assert r.statuses == [0]

            # a request in flight when the peer dies fails at once, not at its timeout
            await m.pause()
            waiting = asyncio.create_task(a.request(0, Get(0, True, 5, 5, False), timeout=10))
            await asyncio.sleep(0)  # let it be sent
            t0 = time.monotonic()
            await m.kill()
            with pytest.raises(PeerUnavailable):
                await waiting
            assert time.monotonic() - t0 < 2
            assert await a.wait_until(lambda: (0, False, False) in changes, 5)

            m = await PeerProcess.start(tmp_path / "cluster.toml", "m")
            assert await a.wait_until(lambda: (0, True, True) in changes, 10), changes
            st = a.peers()[0]
            assert st.connected and st.boot_id != boot1 and st.connects == 2
            r = await a.request(0, Get(0, True, 5, 5, False))
            assert r.found is False  # its pages went with it
        finally:
            await a.stop()
            assert await m.stop() == 0

    run(main(), timeout=45)


# --- TLS -----------------------------------------------------------------------------------------------
def test_tls_round_trip(tmp_path):
    need("openssl")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(tmp_path / "node.key"), "-out", str(tmp_path / "node.pem"),
                    "-days", "1", "-subj", "/CN=ramster-test"],
                   check=True, capture_output=True)

    async def main():
        doc = cluster_doc(tmp_path, "ab", tls_cert=str(tmp_path / "node.pem"),
                          tls_key=str(tmp_path / "node.key"), tls_ca=str(tmp_path / "node.pem"))
        a = await start_net(doc, "a")
        b = await start_net(doc, "b")
        try:
            await all_connected([a, b])
            assert b._conns[0].transport.get_extra_info("ssl_object") is not None
            r = await b.request(0, PutPages(1, False, [PutPage(1, 2, 3, page(7))]))
            assert r.statuses == [0]
            r = await a.request(1, PutPages(1, False, [PutPage(1, 2, 3, page(8))]))
            assert r.statuses == [0]
            assert (await b.request(0, Get(1, False, 1, 2, True))).data == page(7)
            assert (await a.request(1, Get(1, False, 1, 2, True))).data == page(8)
            # a plain-TCP client gets nowhere near the handshake
            raw = await RawPeer.connect(a.local.port)
            raw.writer.write(wire.encode(wire.Keepalive()))
            try:
                got = await raw.recv()
            except ConnectionError:
                got = None
            assert got is None
            raw.close()
        finally:
            await stop_all([a, b])

    run(main())


def test_a_lost_connection_is_waited_for_and_a_dead_peer_is_not(tmp_path):
    """wait_reconnect: a connection cut a moment ago comes back within the grace; a
    peer that died refuses the redial, which ends the grace at once."""
    async def main():
        doc = cluster_doc(tmp_path, ["m", "a"])
        write_toml(tmp_path / "cluster.toml", doc)
        m = await PeerProcess.start(tmp_path / "cluster.toml", "m")
        a = await start_net(doc, "a")
        try:
            await all_connected([a])
            assert a.reconnect_grace(0) == 0  # connected: nothing to wait for
            a._conns[0].close("test: cut the wire")
            assert await a.wait_until(lambda: not a.connected(0), 5)
            assert a.reconnect_grace(0) > 0
            assert await a.wait_reconnect([0])  # a dials again at once (reconnect_delay 0.05 s)
            assert a.connected(0) and a.reconnect_grace(0) == 0
            await m.kill()
            assert await a.wait_until(lambda: not a.connected(0), 5)
            # the redial is refused (nothing listens): the grace ends with it, not with time
            assert await a.wait_until(lambda: 0 not in a._lost_at, 5)
            assert a.reconnect_grace(0) == 0 and not await a.wait_reconnect([0])
        finally:
            await a.stop()
            await m.stop()

    run(main(), timeout=45)


def test_a_stall_of_this_node_waits_for_a_peer_heard_from_after_it(tmp_path):
    """This node's loop stopped past the idle timeout (SIGSTOP, a long GC, a VM pause):
    its requests time out and its connections are gone when it resumes, through no
    fault of the peers. The stall is noticed, and wait_reconnect waits for a peer
    heard from after it instead of failing at once."""
    async def main():
        doc = cluster_doc(tmp_path, ["m", "a"])
        write_toml(tmp_path / "cluster.toml", doc)
        m = await PeerProcess.start(tmp_path / "cluster.toml", "m")
        a = await start_net(doc, "a")
        try:
            await all_connected([a])
            r = await a.request(0, PutPages(3, True, [PutPage(1, 1, 11, b"kept")]))
            assert r.statuses == [0]
            before = time.monotonic()
            assert not a.stalled_since(before)
            time.sleep(FAST["idle_timeout"] + 0.5)  # the whole loop stops: m hears nothing and hangs up
            assert not a.stalled_since(before)  # not yet: the tick has not run
            assert await a.wait_until(lambda: a.stalled_since(before), 5)
            assert await a.wait_reconnect([0], before)  # heard from again, on a new connection
            assert a.peers()[0].last_seen > before
            r = await a.request(0, Get(3, True, 1, 1, False))
            assert (r.found, r.data) == (True, b"kept")
        finally:
            await a.stop()
            assert await m.stop() == 0

    run(main(), timeout=45)
