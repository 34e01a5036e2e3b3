"""One ramster node: a Zcache served as NBD exports (and, in a cluster, to peers) on one asyncio loop.

    cfg = ramster.config.build(memory="256M")
    sys.exit(run(cfg))

What a node is made of, each part built once, in this order, and given what
it uses when it is built (nothing is plugged in by assignment afterwards):

    SwapWriteback                  storage: where zcache's evicted swap pages go; built
                                   first because Zcache takes it at construction
    Zcache(memory, codec, sink)    the one budget every export and peer shares
      Frontswap                    one persistent pool for every swap export
      Cleancache                   one ephemeral pool per cache export
      PeerNetwork + Ramster        only in a cluster: Ramster hooks itself into the
                                   Zcache (zc.attach_remote) when it is built
    exports, by config order       SwapExport(frontswap, swap type = its number, backing
                                   file, writeback); in a cluster it may wait for RAMster
                                   to make room (attach_remote). CacheExport(cleancache,
                                   disk image)
    RecompressTask                 only with recompress_cpu > 0: cold pages recompressed
                                   on the loop, at that share of a CPU (recompress_task.py)
    HeapTrimmer                    the heap's free memory back to the kernel once the
                                   traffic stops after a burst (heaptrim.py)

Nothing above holds a socket. `start()` binds them, metrics first (so a busy
port fails before any NBD client connected), then the NBD listeners, then
the peer port; `stop()` undoes it the other way: the NBD server drains the
requests in flight and closes the exports, the writeback sink is closed,
RAMster and the peer connections stop, and the backing files are fsynced.
Under a service manager (ramster.sdnotify) `serve()` says READY=1 only after
start() has bound everything, so a unit ordered after this one finds it
listening, and STOPPING=1 as soon as the stop signal arrives, before the drain.

Everything runs on the one loop `serve()` runs on, with no threads: every
zcache operation is synchronous (a put or get never awaits), so the loop
itself serialises them and the engine needs no locks. Only network and disk
waits are awaits.

All exports share the budget: a persistent put may eat an ephemeral frame
but never the reverse, and when it runs short a swap export with a backing
file takes the LRU persistent frames (the writeback sink) while, in a
cluster, RAMster moves pages to peers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from . import __version__, logsetup, sdnotify
from .config import DEFAULT_LISTEN, DEFAULT_METRICS, ConfigError, NodeConfig
from .control import Control
from .control_server import ControlServer, default_path
from .frontends import Cleancache, Frontswap
from .frontends.frontswap import unswiz
from .heaptrim import HeapTrimmer
from .nbd.base import Export
from .nbd.cache import CacheExport
from .nbd.swap import SwapExport
from .recompress_task import RecompressTask
from .storage import BackingFile, PageMapError, SwapWriteback
from .units import PAGE_SIZE, format_address, format_size, parse_address
from .zcache import Zcache

log = logging.getLogger("ramster.node")

# how often `systemctl status` hears how full the budget is, when a service manager listens
STATUS_INTERVAL = 10.0


class Node:
    def __init__(self, config: NodeConfig, cluster=None, *, loader=None, control: str | None = None):
        """`loader()` re-reads the configuration for a reload (SIGHUP, `ramster ctl reload`);
        `control` is the control socket's path, "off", or None for the default one."""
        self.config = config
        # a ramster.remote.clusterconf.ClusterConfig: this node is one of a RAMster cluster
        self.cluster = cluster
        self.net = None  # a ramster.remote.peer.PeerNetwork, in a cluster
        self.ramster = None  # the ramster.remote.ramster.Ramster hooked into self.zc, in a cluster
        self.started = time.time()
        # the sink first: Zcache hands it the pages it evicts; swap exports register their disks in it
        self.writeback = SwapWriteback(unswiz)
        try:
            self.zc = Zcache(max_pageframes=config.memory // PAGE_SIZE, compressor=config.compressor,
                             writeback_sink=self.writeback, allocator=config.allocator,
                             recompressor=config.recompress_codec, dedup=config.dedup,
                             cold_groups=config.recompress_groups)
        except ValueError as err:  # e.g. the compressor's library is not installed, or memory > the arena
            raise ConfigError(str(err)) from None
        # Non-exclusive: an NBD client may read a swap block any number of times (see SwapExport).
        self.frontswap = Frontswap(self.zc, exclusive_gets=False)
        self.cleancache = Cleancache(self.zc)
        self.exports: dict[str, Export] = {}
        self._files: list[BackingFile] = []
        self.server = None
        self.metrics = None
        self.control_path = control
        self.control_server = None
        self.ready = False  # start() is done: a SIGHUP may reload
        self._reloads: set[asyncio.Task] = set()
        self.addresses: list[str] = []
        if cluster is not None:
            self.net, self.ramster = self._cluster(cluster)
        try:
            for number, e in enumerate(config.exports):
                # a swap export's page map lays out its file itself (it must look before anything grows it)
                backing = self._open_backing(e, grow=e.kind != "swap") if e.backing is not None else None
                if e.kind == "swap":
                    # the swap type is the export's number, as a kernel numbers its swap devices
                    try:
                        exp = SwapExport(e.name, e.size, self.frontswap, number, backing,
                                         writeback=self.writeback)
                    except (PageMapError, OSError) as err:
                        raise ConfigError(f"export {e.name!r}: cannot use backing file {e.backing}: "
                                          f"{getattr(err, 'strerror', None) or err}") from None
                    if self.ramster is not None:
                        exp.attach_remote(self.ramster, cluster.request_timeout)
                else:
                    exp = CacheExport(e.name, e.size, self.cleancache, backing)
                self.exports[e.name] = exp
        except BaseException:
            self._close_files()
            raise
        self.control = Control(self.zc, config, cluster, ramster=self.ramster, net=self.net, loader=loader)
        # cold pages recompressed in the background, at a bounded CPU share (off at 0)
        self.recompress = RecompressTask(self.zc, config.recompress_cpu) if config.recompress_cpu > 0 else None
        # freed heap memory goes back to the kernel when the node goes quiet after a burst
        self.heap = HeapTrimmer(self._traffic)

    def _traffic(self) -> int:
        """Bytes moved through the exports and pages recompressed, a running total."""
        n = self.zc.recompressed * PAGE_SIZE
        for e in self.exports.values():
            n += e.counters.bytes_read + e.counters.bytes_written
        return n

    def _cluster(self, cl):
        """The peer network and the RAMster that serves it, for ClusterConfig `cl`."""
        from .remote.peer import PeerNetwork
        from .remote.ramster import Ramster, RemotifyPolicy

        policy = RemotifyPolicy(persistent=cl.persistent, ephemeral=cl.ephemeral,
                                targets=tuple(t.number for t in cl.targets),
                                replicas=min(cl.replicas, len(cl.targets)),
                                selfshrink=cl.selfshrink)
        try:
            net = PeerNetwork(cl, compressor=self.config.compressor)
        except OSError as err:  # the TLS files (checked when the cluster file was read) went bad since
            raise ConfigError(f"cannot use the cluster's TLS files: {_oserror_text(err)}") from None
        return net, Ramster(self.zc, net, policy)

    def _open_backing(self, e, grow: bool) -> BackingFile:
        try:
            f = BackingFile(e.backing, e.size, grow)
        except OSError as err:
            raise ConfigError(f"export {e.name!r}: cannot use backing file {e.backing}: "
                              f"{err.strerror or err}") from None
        self._files.append(f)
        return f

    def _close_files(self) -> None:
        for f in self._files:
            try:
                f.close()
            except OSError as err:
                log.error("closing %s failed: %s", f.path, err)
        self._files.clear()

    # ---- counters --------------------------------------------------------------------

    def stats(self) -> dict:
        counters = self.zc.stats()
        counters.update(self.frontswap.stats())
        counters.update(self.cleancache.stats())
        counters.update(self.control.stats())
        counters.update(self.heap.stats())
        peers = []
        if self.ramster is not None:
            counters.update(self.net.counters())
            for p in self.net.peers():
                peers.append({"name": p.name, "number": p.number, "connected": p.connected,
                              "rtt_seconds": p.rtt, "free_frames": p.free_frames, "refused": p.refused,
                              "target": p.number in self.ramster.policy.targets, "down": p.down,
                              "pages_held": self.ramster.pages_on(p.number),
                              "pages_only_copy": self.ramster.pages_only_on(p.number)})
        exports = {}
        for name, e in self.exports.items():
            c = e.counters
            exports[name] = {
                "kind": e.kind,
                "size": e.size,
                "backing": e.backing.path if e.backing is not None else None,
                "counters": dict(c.__dict__),
                "gauges": e.gauges(),
            }
        return {
            "node": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime_seconds": round(time.time() - self.started, 3),
                "memory": self.zc.max_pageframes * PAGE_SIZE,
                "log_level": logsetup.level(),
                "compressor": self.config.compressor,
                "allocator": self.config.allocator,
                "dedup": self.config.dedup,
                "recompress_codec": self.config.recompress_codec,
                "recompress_cpu": self.config.recompress_cpu,
                "recompress_groups": self.zc.cold_groups,
                "page_size": PAGE_SIZE,
                "listen": list(self.addresses),
                "metrics": self.metrics.address if self.metrics is not None else None,
                "control": str(self.control_server.path) if self.control_server is not None else None,
            },
            "counters": counters,
            "exports": exports,
            "peers": peers,
            "classes": self.zc.class_stats(),
        }

    # ---- running ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every socket; ConfigError (one line) when one cannot be bound."""
        from .nbd.server import NbdServer

        # metrics first: a port in use there then fails before any NBD client could connect
        if self.config.metrics is not None:
            from .metrics import MetricsServer

            host, port, _ = parse_address(self.config.metrics, "metrics address")
            metrics = MetricsServer(self.stats)
            try:
                await metrics.start(host, port)
            except OSError as err:
                raise ConfigError(f"cannot serve metrics on {self.config.metrics}: {_oserror_text(err)}") from None
            self.metrics = metrics
        self.heap.start()  # imports and configuration leave free memory behind
        self.server = NbdServer(self.exports, default_export=next(iter(self.exports)))
        try:
            await self.server.start(self.config.listen)
        except (OSError, ValueError) as err:
            await self.server.stop(timeout=0, close_exports=False)
            if self.metrics is not None:
                await self.metrics.stop()
            raise ConfigError(f"cannot listen: {_oserror_text(err)}") from None
        self.addresses = list(self.server.addresses)
        if self.metrics is not None:
            log.info("metrics on http://%s/metrics", self.metrics.address)
        await self._start_control()
        if self.cluster is not None:
            await self._start_cluster()
        if self.recompress is not None:
            self.recompress.start()

    async def _start_control(self) -> None:
        """The control socket: a path given that cannot be used is an error; the default
        one only a warning (the node serves without `ramster ctl` then)."""
        if self.control_path == "off":
            return
        path = self.control_path or default_path(self.config.listen)
        server = ControlServer(self.control, path)
        try:
            await server.start()
        except OSError as err:
            if self.control_path is not None:
                await self.stop()
                raise ConfigError(f"cannot serve control socket {path}: {_oserror_text(err)}") from None
            log.warning("no control socket at %s (%s): `ramster ctl` cannot reach this node; "
                        "give --control PATH, or --control off", path, _oserror_text(err))
            return
        self.control_server = server
        log.info("control socket %s", path)

    async def _start_cluster(self) -> None:
        cl = self.cluster
        try:
            await self.net.start(self.ramster.handle, free_frames=self.ramster.free_frames,
                                 on_peer_change=self.ramster.peer_changed)
        except OSError as err:
            raise ConfigError(f"cannot listen for peers on {cl.local.host}:{cl.local.port}: "
                              f"{_oserror_text(err)}") from None
        self.ramster.start()
        log.info("cluster %s: node %d (%s), remotify to %s, %d replica(s)", cl.name, cl.local.number,
                 cl.local.name, ", ".join(t.name for t in cl.targets) or "nobody", cl.replicas)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, fsync and close the backing files."""
        self.heap.stop()
        if self.recompress is not None:
            await self.recompress.stop()
        if self.control_server is not None:
            await self.control_server.stop()
            self.control_server = None
        if self.server is not None:
            await self.server.stop()  # also closes (fsyncs) every export
        self.writeback.close()  # the swap disks' maps are closed: evicted pages stay in memory now
        if self.ramster is not None:
            await self.ramster.stop()
            await self.net.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        for f in self._files:
            log.info("closing %s", f.path)
        self._close_files()  # fsyncs what is still dirty

    async def serve(self, out=sys.stdout) -> int:
        """Start, print how to connect, run until SIGINT/SIGTERM, stop. Returns the exit status."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        caught: list[str] = []

        def on_signal(sig: signal.Signals) -> None:
            if not caught:  # the manager hears of the stop at once, before the drain
                sdnotify.notify("STOPPING=1\nSTATUS=stopping: finishing requests in flight, syncing backing files")
            caught.append(sig.name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        # SIGHUP reloads (ramster.control); until start() is done it is ignored, not fatal
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        status = None
        try:
            await self.start()
            log.info("node started: %s memory, %s, %d export(s)", format_size(self.config.memory),
                     self.config.compressor, len(self.exports))
            print(self.banner(), file=out, flush=True)
            self.ready = True
            sdnotify.notify("READY=1\nSTATUS=" + self.status_line())
            if sdnotify.enabled():
                status = asyncio.create_task(self._report_status(stop))
            await stop.wait()
            log.info("%s received: stopping", caught[0])
            await self.stop()
            log.info("node stopped")
            return 0
        finally:
            if status is not None:
                status.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._close_files()

    def _on_sighup(self) -> None:
        if not self.ready:
            log.info("SIGHUP received while starting: ignored")
            return
        log.info("SIGHUP received: reloading %s", self.config.source or "the configuration")
        task = asyncio.get_running_loop().create_task(self.control.sighup())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def status_line(self) -> str:
        """One line for `systemctl status`: where it serves and how full the budget is."""
        c = self.zc.stats()
        frames = c["zcache.eph_pageframes"] + c["zcache.pers_pageframes"]
        budget = c["zcache.max_pageframes"]
        pages = c["zcache.eph_zpages"] + c["zcache.pers_zpages"]
        where = ", ".join(self.addresses) or "nothing"
        line = (f"{len(self.exports)} export(s) on {where}; {pages} pages in {format_size(frames * PAGE_SIZE)} "
                f"of {format_size(budget * PAGE_SIZE)} ({100 * frames // max(budget, 1)}%)")
        if self.net is not None:
            peers = self.net.peers()
            line += f"; {sum(p.connected for p in peers)} of {len(peers)} peer(s) up"
        return line

    async def _report_status(self, stop: asyncio.Event, interval: float = STATUS_INTERVAL) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                sdnotify.status(self.status_line())

    def banner(self) -> str:
        lines = [f"ramster node {__version__}: {format_size(self.config.memory)} of memory "
                 f"({self.config.compressor}), {len(self.exports)} export(s)"]
        first = self.addresses[0] if self.addresses else self.config.listen[0]
        for name, e in self.exports.items():
            backing = f", backing {e.backing.path}" if e.backing is not None else ""
            lines.append(f"  {name}: {e.kind}, {format_size(e.size)}{backing}")
            lines.append(f"    nbdinfo {nbd_uri(first, name)}")
            if e.kind == "swap" and not first.startswith("unix:"):
                host, port, _ = parse_address(first)
                lines.append(f"    swap: nbd-client -N {name} {host} {port} /dev/nbd0 && mkswap /dev/nbd0 "
                             f"&& swapon /dev/nbd0")
        for a in self.addresses[1:]:
            lines.append(f"  also listening on {a}")
        if self.control_server is not None:
            path = self.control_server.path
            ctl = "ramster ctl" if path == default_path([DEFAULT_LISTEN]) else f"ramster ctl --control {path}"
            lines.append(f"  control: {path}   {ctl} show")
        if self.metrics is not None:
            stats = "ramster stats" if self.metrics.address == DEFAULT_METRICS else \
                f"ramster stats --url http://{self.metrics.address}"
            lines.append(f"  metrics: http://{self.metrics.address}/metrics   stats: {stats}")
        return "\n".join(lines)


def nbd_uri(address: str, export: str) -> str:
    """The NBD URI (as libnbd, qemu and nbdkit spell it) of an export at a listen address."""
    host, port, path = parse_address(address, unix=True)
    if path is not None:
        return f"'nbd+unix:///{export}?socket={path}'"
    if host in (None, "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"nbd://{format_address(host, port)}/{export}"


def _oserror_text(err: Exception) -> str:
    # asyncio puts the address and the reason in strerror; "[Errno 98]" adds nothing for a user
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def run(config: NodeConfig, cluster=None, *, loader=None, control: str | None = None) -> int:
    """Run a node in this process until a signal stops it (SIGHUP reloads via `loader`)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until serve() handles it: a reload, never an exit
    logsetup.configure(config.log_format, config.log_level)
    for warning in config.warnings:
        log.warning("%s", warning)
    node = Node(config, cluster, loader=loader, control=control)
    return asyncio.run(node.serve())
