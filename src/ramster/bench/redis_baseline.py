"""The Redis side of `ramster bench cluster`: the same compressed pages in redis-server.

Debian's redis-server runs on loopback with persistence off (`--save ''
--appendonly no`), pinned to the server CPU; the client is redis-py (the
`bench` extra). Keys are b"p<i>", values the lz4 payloads RAMster moves.
SETs go in pipelines of REDIS_BATCH (= the pages of one PutPages message)
per round trip, GETs one at a time from one client, as remote gets are.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

from . import common
from .common import ToolError

REDIS_BATCH = 64  # = ramster.remote's PAGES_PER_MESSAGE
WARMUP_GETS = 50


def start_redis(procs: common.Procs, tmp: Path, cpu: int, timeout: float = 20):
    """redis-server on a free loopback port, and a redis-py client once it answers PING."""
    try:
        import redis
    except ImportError:
        raise ToolError("redis-py is not installed (pip install 'ramster[bench]', or run scripts/bootstrap.sh --bench)") \
            from None
    server = common.require("redis-server")
    port = common.free_port()
    rdir = tmp / "redis"
    rdir.mkdir()
    log_path = tmp / "redis.log"
    cmd = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
           "--protected-mode", "yes", "--daemonize", "no", "--dir", str(rdir), "--logfile", ""]
    p = procs.start(cmd, log_path, rdir, cpu=cpu)
    deadline = time.monotonic() + timeout
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {p.returncode}: {common.tail(log_path)}")
        client = redis.Redis(host="127.0.0.1", port=port, socket_keepalive=False)
        try:
            if client.ping():
                return client
            last = "no PONG"
        except redis.exceptions.RedisError as e:  # not listening yet, or loading
            last = e
        client.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer within {timeout:g} s ({last}): {common.tail(log_path)}")
        time.sleep(0.05)


def describe(client) -> tuple[str, str]:
    """(redis-server's version, the client's name and version)."""
    import redis

    return str(client.info("server").get("redis_version", "?")), f"redis-py {redis.__version__}"


def set_run(client, keys: list[bytes], payloads: list[bytes], flush: bool) -> float:
    """Seconds to SET every payload, in pipelines of REDIS_BATCH."""
    if flush:
        client.flushall()
    batches = [list(zip(keys[i : i + REDIS_BATCH], payloads[i : i + REDIS_BATCH]))
               for i in range(0, len(keys), REDIS_BATCH)]
    pipeline = client.pipeline
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for b in batches:
            pipe = pipeline(transaction=False)
            for k, v in b:
                pipe.set(k, v)
            pipe.execute()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def get_run(client, keys: list[bytes], payloads: list[bytes], order: list[int]) -> list[int]:
    """Nanoseconds of each GET of `order`, one at a time (after WARMUP_GETS untimed ones)."""
    get = client.get
    for i in order[:WARMUP_GETS]:
        get(keys[i])
    samples = []
    bad = 0
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i in order:
            t0 = clock()
            v = get(keys[i])
            samples.append(clock() - t0)
            if v != payloads[i]:
                bad += 1
    finally:
        gc.enable()
    if bad:
        raise RuntimeError(f"redis returned {bad} wrong payload(s)")
    return samples
