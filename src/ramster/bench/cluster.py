"""`ramster bench cluster`: RAMster remotify and remote gets against Redis, in one run.

Two nodes on loopback, and a Redis server holding the same compressed pages:

- node B is a real `ramster node --config C --name b` process; node A lives in
  this process (a `ramster.node.Node` started with the same cluster file, so
  Zcache + PeerNetwork + Ramster are wired exactly as in `_start_cluster`).
  A is pinned to one CPU (sched_setaffinity); B and redis-server to another
  (taskset), so client and server never share a CPU when there are two.
- remotify: A's persistent pool is filled with N corpus pages (pages that
  compress worse than 3584 bytes, or are same-filled and so take no frame,
  are skipped), then `await ramster.remotify_batch(frames=F)` is called until
  every page has moved to B (or a time cap): pages/s from
  `ramster.pers_pages_remoted`. One batch is what the remotify worker sends in
  one pass step: F frames, PutPages messages of up to 64 pages.
- remote get: K random remote pages, one at a time, `await ramster.get(pool,
  oid, index)` (non-freeing). A's budget is first shrunk to the frames it has
  in use, so there is no room to repatriate and every get is a real round trip
  to B; the returned page is decompressed, checksummed and compared.
- Redis baseline (redis_baseline.py: Debian's redis-server, which
  scripts/bootstrap.sh --bench installs, and redis-py): the same lz4 payloads
  stored with pipelined SETs of 64 (the pages of one PutPages message) per
  round trip, and GETs of the same K pages at one request at a time from one
  client.

Throughput is the best of `repeat` runs (pools destroyed / FLUSHALL between
runs), latency is the run with the best p50. Acceptance (issue 4 §6):
remotify >= 0.5 x Redis SET pages/s, remote get p50 <= 2 x Redis GET p50.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..compress import get_codec
from ..zcache import PERS_MAX_ZSIZE
from ..units import PAGE_SIZE
from . import common, redis_baseline
from .corpus import corpus_files, load_pages
from .redis_baseline import REDIS_BATCH, WARMUP_GETS

SWIZ = 8  # frontswap's swizzle: oid = offset & 255, index = offset >> 8 (as bench engine)
DEFAULT_PAGES = 32768
DEFAULT_GETS = 2000
REMOTIFY_TARGET = 0.5  # remotify >= 0.5 x Redis SET
GET_TARGET = 2.0  # remote get p50 <= 2 x Redis GET p50

DESCRIPTION = """\
Measures, in one run on loopback, RAMster against Redis holding the same pages:

  remotify    node A (this process) fills its persistent pool with N corpus
              pages, then calls ramster.remotify_batch() until every page has
              moved to node B (a `ramster node` process): pages/s moved.
  remote get  K random remote pages fetched one at a time with ramster.get()
              (non-freeing; A's budget is shrunk so nothing is repatriated):
              p50/p99 latency in microseconds.
  Redis       redis-server (Debian's; scripts/bootstrap.sh --bench) holding
              the same lz4 payloads: pipelined SET pages/s in batches of 64
              (one PutPages message), and GET p50/p99 at one request at a time
              from one client.

A is pinned to one CPU, node B and redis-server to another. Throughput is the
best of --repeat runs. Acceptance: remotify >= 0.5 x Redis SET pages/s and
remote get p50 <= 2 x Redis GET p50. Every process started is killed at the end.
"""


# ---- results ----------------------------------------------------------------------------------

@dataclass
class Latency:
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    gets: int

    @staticmethod
    def of(samples_ns: list[int]) -> "Latency":
        s = sorted(samples_ns)
        n = len(s)
        pick = lambda q: s[min(n - 1, int(q * n))] / 1000  # noqa: E731
        return Latency(pick(0.50), pick(0.99), sum(s) / n / 1000, s[-1] / 1000, n)


@dataclass
class ClusterResult:
    pinning: str
    pages: int  # pages stored in A (and in Redis)
    corpus_pages_skipped: int  # compress worse than 3584 bytes, or same-filled
    payload_bytes: int  # lz4 bytes of the stored pages
    compressor: str
    frames_per_batch: int
    repeat: int
    remotify_pps: float
    remotify_runs: list[dict]
    redis_set_pps: float
    redis_set_runs: list[float]
    remote_get: Latency
    redis_get: Latency
    get_mode: str
    redis_version: str
    redis_client: str
    cpus: dict = field(default_factory=dict)

    @property
    def remotify_ratio(self) -> float:
        return self.remotify_pps / self.redis_set_pps

    @property
    def get_p50_ratio(self) -> float:
        return self.remote_get.p50_us / self.redis_get.p50_us

    @property
    def get_p99_ratio(self) -> float:
        return self.remote_get.p99_us / self.redis_get.p99_us

    @property
    def remotify_ok(self) -> bool:
        return self.remotify_ratio >= REMOTIFY_TARGET

    @property
    def get_ok(self) -> bool:
        return self.get_p50_ratio <= GET_TARGET


def as_json(r: ClusterResult) -> dict:
    d = asdict(r)
    d["ratios"] = {"remotify_vs_redis_set": r.remotify_ratio, "get_p50_vs_redis": r.get_p50_ratio,
                   "get_p99_vs_redis": r.get_p99_ratio}
    d["acceptance"] = {"remotify_ge_0.5x_redis_set": r.remotify_ok, "get_p50_le_2x_redis": r.get_ok,
                       "passed": r.remotify_ok and r.get_ok}
    return d


def _rows(r: ClusterResult) -> list[tuple[str, str, str, str, str]]:
    k = lambda v: f"{v / 1000:,.1f}k"  # noqa: E731
    us = lambda v: f"{v:,.1f}"  # noqa: E731
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    return [
        ("remotify vs pipelined SET, pages/s", k(r.remotify_pps), k(r.redis_set_pps), f"{r.remotify_ratio:.2f}",
         f"≥ {REMOTIFY_TARGET} {ok(r.remotify_ok)}"),
        ("get p50, µs", us(r.remote_get.p50_us), us(r.redis_get.p50_us), f"{r.get_p50_ratio:.2f}",
         f"≤ {GET_TARGET:g} {ok(r.get_ok)}"),
        ("get p99, µs", us(r.remote_get.p99_us), us(r.redis_get.p99_us), f"{r.get_p99_ratio:.2f}", ""),
        ("get mean, µs", us(r.remote_get.mean_us), us(r.redis_get.mean_us),
         f"{r.remote_get.mean_us / r.redis_get.mean_us:.2f}", ""),
    ]


def _summary(r: ClusterResult) -> str:
    return (f"{r.pages} pages ({r.corpus_pages_skipped} corpus pages skipped), {r.payload_bytes:,} payload bytes "
            f"({r.compressor}, mean {r.payload_bytes / max(r.pages, 1):.0f} B); remotify batches of "
            f"{r.frames_per_batch} frames, Redis pipelines of {REDIS_BATCH}; {r.remote_get.gets} gets ({r.get_mode}); "
            f"best of {r.repeat} run(s); redis-server {r.redis_version} via {r.redis_client}")


def _report(r: ClusterResult) -> tuple[list[str], list[common.Table], list[str]]:
    t = common.Table("ramster bench cluster — RAMster (2 nodes, loopback) vs Redis",
                     ["measure", "ramster", "Redis", "ramster / Redis", "target"], [list(row) for row in _rows(r)],
                     left=("measure", "target"))
    verdict = (f"Acceptance: {'passed' if r.remotify_ok and r.get_ok else 'NOT passed'} "
               f"(remotify ≥ {REMOTIFY_TARGET} × Redis SET pages/s; remote get p50 ≤ {GET_TARGET:g} × Redis GET p50).")
    return [f"Pinning: {r.pinning}.", _summary(r) + "."], [t], [verdict]


def as_markdown(r: ClusterResult) -> str:
    return common.markdown(*_report(r))


def print_table(r: ClusterResult) -> None:
    common.print_report(*_report(r), width=110)


# ---- corpus ---------------------------------------------------------------------------------------

def corpus_pages(paths: list[str] | None, n: int, compressor: str) -> tuple[list[bytes], list[bytes], int]:
    """N (page, payload) pairs taken from the corpus files in turn (page i of each file,
    then page i+1, ...; cycling when all are used up), skipping pages that compress
    worse than 3584 bytes or are same-filled. Returns (pages, payloads, skipped)."""
    files = corpus_files(paths)
    if not files:
        raise FileNotFoundError("the corpus has no *.pages files")
    per_file = [load_pages(f, n) for f in files]
    compress = get_codec(compressor).compress
    uniq_pages: list[bytes] = []
    uniq_payloads: list[bytes] = []
    skipped = 0
    for i in range(max(map(len, per_file))):
        for pages in per_file:
            if i >= len(pages):
                continue
            p = pages[i]
            c = compress(p)
            if len(c) > PERS_MAX_ZSIZE or p == p[:8] * 512:
                skipped += 1
                continue
            uniq_pages.append(p)
            uniq_payloads.append(bytes(c))
            if len(uniq_pages) == n:
                break
        if len(uniq_pages) == n:
            break
    if not uniq_pages:
        raise ValueError("no corpus page compresses to 3584 bytes or less")
    u = len(uniq_pages)
    return [uniq_pages[i % u] for i in range(n)], [uniq_payloads[i % u] for i in range(n)], skipped


# ---- processes ------------------------------------------------------------------------------------

# ---- the cluster ------------------------------------------------------------------------------------

def write_cluster_config(tmp: Path) -> Path:
    from ..remote.keys import node_keys

    public = node_keys(tmp / "keys", ("a", "b"))  # keys/<name>.key beside the file: the default key_dir
    lines = ['[cluster]', 'name = "bench"', "request_timeout = 10",
             "keepalive = 2", "idle_timeout = 30", "reconnect_delay = 0.1", "reconnect_max = 1"]
    for number, name in enumerate(("a", "b")):
        lines += ["[[cluster.node]]", f'name = "{name}"', f"number = {number}",
                  f'address = "127.0.0.1:{common.free_port()}"', f'public_key = "{public[name]}"']
    # selfshrink would bring remote pages home behind the benchmark's back
    lines += ["[remotify]", "persistent = true", "ephemeral = true", "replicas = 1", "selfshrink = false"]
    path = tmp / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _start_node_a(tmp: Path, config: Path, memory: int):
    from ..config import build
    from ..node import Node
    from ..remote.clusterconf import load_cluster

    cfg = build(None, memory=str(memory), listen=[f"unix:{tmp / 'a.sock'}"], metrics="off", log_level="warning")
    node = Node(cfg, load_cluster(config, "a"))
    await node.start()
    # The benchmark drives remotify itself: keep the background worker out of the way.
    node.ramster.policy.low_water = 0.0
    return node


def _fill(zc, pages: list[bytes]) -> tuple[int, int]:
    """A fresh persistent pool holding every page; (pool id, pages refused)."""
    pid = zc.new_pool(persistent=True)
    put = zc.put_page
    refused = 0
    for i, p in enumerate(pages):
        if not put(pid, i & 255, i >> SWIZ, p):
            refused += 1
    return pid, refused


async def _wait(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _remotify_run(node, pages: list[bytes], frames: int, cap: float) -> tuple[int, dict]:
    zc, ram = node.zc, node.ramster
    pid, refused = _fill(zc, pages)
    if refused:
        raise RuntimeError(f"node A refused {refused} of {len(pages)} pages; is its budget too small?")
    stored = zc.stats()["zbud.pers_zpages"]
    base, failed0 = ram.pers_pages_remoted, ram.pers_pages_remote_failed
    batch = ram.remotify_batch
    idle = 0
    capped = False
    gc.collect()
    gc.disable()
    try:
        c0 = time.process_time()
        t0 = time.perf_counter()
        while ram.pers_pages_remoted - base < stored:
            if not await batch(frames):
                idle += 1
                if idle >= 3:
                    break
            else:
                idle = 0
            if time.perf_counter() - t0 > cap:
                capped = True
                break
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        gc.enable()
    moved = ram.pers_pages_remoted - base
    run = {"pages_moved": moved, "pages_in_frames": stored, "seconds": dt, "node_a_cpu_seconds": cpu,
           "pages_per_s": moved / dt if dt else 0.0,
           "failed": ram.pers_pages_remote_failed - failed0, "capped": capped,
           "frames_left": zc.stats()["zbud.pers_pageframes"]}
    return pid, run


async def _get_run(node, pid: int, pages: list[bytes], order: list[int]) -> list[int]:
    zc, ram = node.zc, node.ramster
    pool = zc.pool(pid)
    get = ram.get
    for i in order[:WARMUP_GETS]:
        await get(pool, i & 255, i >> SWIZ)
    samples = []
    bad = 0
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i in order:
            t0 = clock()
            page = await get(pool, i & 255, i >> SWIZ)
            samples.append(clock() - t0)
            if page != pages[i]:
                bad += 1
    finally:
        gc.enable()
    if bad:
        raise RuntimeError(f"{bad} remote get(s) returned a wrong page")
    still = sum(1 for i in order if zc.on_peer(pid, i & 255, i >> SWIZ))
    if still != len(order):
        raise RuntimeError(f"{len(order) - still} page(s) were repatriated during the remote get run")
    return samples


async def _bench(args, pages, payloads, tmp: Path, procs: common.Procs, client, cpus: tuple[int, int],
                 progress) -> dict:
    config = write_cluster_config(tmp)
    n = len(pages)
    frames_needed = n + 256  # one frame per page at worst: the fill never runs short
    # B first: once A's arena (address space for every frame of RAM) is mapped, fork() may fail with ENOMEM
    ramster_cmd = [sys.executable, "-m", "ramster.cli"]
    b_mem = frames_needed * PAGE_SIZE + (16 << 20)
    b_log = tmp / "node-b.log"
    b = procs.start([*ramster_cmd, "node", "--config", str(config), "--name", "b", "--memory", str(b_mem),
                     "--metrics", "off", "--log-level", "warning", "--listen", f"unix:{tmp / 'b.sock'}"],
                    b_log, tmp, cpu=cpus[1])
    node = await _start_node_a(tmp, config, frames_needed * PAGE_SIZE)
    try:
        deadline = time.monotonic() + 60
        while not node.net.connected(1):
            if b.poll() is not None:
                raise RuntimeError(f"node b exited with status {b.returncode}: {common.tail(b_log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node b did not connect within 60 s: {common.tail(b_log)}")
            await node.net.wait_until(lambda: node.net.connected(1), 0.2)

        keys = [b"p%d" % i for i in range(n)]
        rng = random.Random(4)
        zc, ram = node.zc, node.ramster
        budget = zc.max_pageframes
        remotify_runs, set_times = [], []
        get_runs: list[list[int]] = []
        redis_get_runs: list[list[int]] = []
        for run in range(args.repeat):
            progress(f"run {run + 1}/{args.repeat}: remotify")
            pid, rr = await _remotify_run(node, pages, args.frames, args.time_cap)
            remotify_runs.append(rr)
            if rr["pages_moved"] == 0:
                raise RuntimeError(f"no page moved to node b ({rr}); see {common.tail(b_log)}")
            # no room at home: every get below is a round trip to B, and the page stays remote
            zc.set_max_pageframes(zc.pageframes_in_use)
            remote = [i for i in range(n) if zc.on_peer(pid, i & 255, i >> SWIZ)]
            order = [remote[rng.randrange(len(remote))] for _ in range(args.gets)]
            progress(f"run {run + 1}/{args.repeat}: remote gets")
            get_runs.append(await _get_run(node, pid, pages, order))
            progress(f"run {run + 1}/{args.repeat}: Redis SET")
            set_times.append(redis_baseline.set_run(client, keys, payloads, flush=run > 0))
            progress(f"run {run + 1}/{args.repeat}: Redis GET")
            redis_get_runs.append(redis_baseline.get_run(client, keys, payloads, order))
            # back to an empty cluster: the pool destroy reaches B (FIFO with the puts)
            destroyed = ram.remote_pools_destroyed
            zc.destroy_pool(pid)
            await _wait(lambda: ram.remote_pools_destroyed > destroyed or ram.remote_pool_destroys_failed,
                        "the remote pool destroy")
            zc.set_max_pageframes(budget)
        return {"remotify_runs": remotify_runs, "set_times": set_times, "get_runs": get_runs,
                "redis_get_runs": redis_get_runs}
    finally:
        await node.stop()
        node.zc.close()


def run(args: argparse.Namespace, progress=lambda msg: None) -> ClusterResult:
    a_cpu, b_cpu = common.two_cpus()  # A (remotify, gets, the Redis client) works hardest: the last CPU
    if a_cpu == b_cpu:
        pinning = (f"only CPU {a_cpu} is available: node A (this process, also the Redis client), node B and "
                   f"redis-server all share it (taskset -c {b_cpu}); {os.cpu_count()} CPUs online")
    else:
        pinning = (f"node A (this process: remotify, remote gets, and the Redis client) on CPU {a_cpu} "
                   f"(sched_setaffinity); node B and redis-server on CPU {b_cpu} (taskset -c {b_cpu}); "
                   f"{os.cpu_count()} CPUs online")
    compressor = "lz4"
    progress("loading the corpus")
    pages, payloads, skipped = corpus_pages(args.corpus, args.pages, compressor)
    with common.workspace("ramster-bench-cluster-", cpu=a_cpu) as (tmp, procs):
        progress("starting redis-server")
        client = redis_baseline.start_redis(procs, tmp, b_cpu)
        try:
            version, client_name = redis_baseline.describe(client)
            progress("starting node b")
            logging.getLogger("ramster").setLevel(logging.ERROR)
            raw = asyncio.run(_bench(args, pages, payloads, tmp, procs, client, (a_cpu, b_cpu), progress))
        finally:
            client.close()
    best_remotify = max(raw["remotify_runs"], key=lambda r: r["pages_per_s"])
    gets = min((Latency.of(s) for s in raw["get_runs"]), key=lambda x: x.p50_us)
    rgets = min((Latency.of(s) for s in raw["redis_get_runs"]), key=lambda x: x.p50_us)
    n = len(pages)
    return ClusterResult(
        pinning=pinning, pages=n, corpus_pages_skipped=skipped, payload_bytes=sum(map(len, payloads)),
        compressor=compressor, frames_per_batch=args.frames, repeat=args.repeat,
        remotify_pps=best_remotify["pages_per_s"], remotify_runs=raw["remotify_runs"],
        redis_set_pps=max(n / t for t in raw["set_times"]), redis_set_runs=[n / t for t in raw["set_times"]],
        remote_get=gets, redis_get=rgets,
        get_mode="non-freeing ramster.get(); A's budget shrunk to its frames in use so nothing is repatriated; "
                 "includes the xxh3 check and lz4 decompression, Redis GET returns the payload only",
        redis_version=version, redis_client=client_name, cpus={"node_a": a_cpu, "node_b": b_cpu, "redis": b_cpu},
    )


# ---- command line ------------------------------------------------------------------------------------

def add_parser(bsub) -> None:
    from ..remote.ramster import FRAMES_PER_BATCH

    c = bsub.add_parser(
        "cluster",
        help="RAMster remotify pages/s and remote get latency vs Redis SET/GET of the same pages",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--pages", type=int, default=DEFAULT_PAGES, metavar="N",
                   help=f"pages stored and remotified (default {DEFAULT_PAGES} = 128 MiB of pages)")
    c.add_argument("--gets", type=int, default=DEFAULT_GETS, metavar="K",
                   help=f"timed remote gets and Redis GETs, one at a time (default {DEFAULT_GETS})")
    c.add_argument("--repeat", type=int, default=3, metavar="R", help="runs; the best is kept (default 3)")
    c.add_argument("--frames", type=int, default=FRAMES_PER_BATCH, metavar="F",
                   help=f"frames per remotify_batch() call (default {FRAMES_PER_BATCH}, the worker's)")
    c.add_argument("--time-cap", type=float, default=120.0, metavar="S",
                   help="stop a remotify run after S seconds (default 120)")
    c.add_argument("--corpus", nargs="+", metavar="PATH", help="*.pages files or directories (default: shared/corpus, else synthetic pages with its mix)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--markdown", action="store_true", help="print a Markdown table (for BENCHMARKS.md)")
    c.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..config import ConfigError

    for name in ("pages", "gets", "repeat", "frames"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.time_cap <= 0:
        raise UserError("--time-cap must be positive")
    quiet = (args.json or args.markdown) and not sys.stderr.isatty()
    try:
        common.require("taskset")
        result = common.with_status("cluster", quiet, lambda progress: run(args, progress))
    except (OSError, ValueError, RuntimeError, ConfigError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(as_json(result), indent=2))
    elif args.markdown:
        print(as_markdown(result))
    else:
        print_table(result)
    return 0
