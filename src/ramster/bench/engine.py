"""`ramster bench engine`: Zcache put/get throughput against the codec floor, metadata and density.

For each corpus file and compressor, in one process pinned to one CPU:
- floor put: compress each page and copy it into a preallocated arena;
  floor get: decompress each page from that arena. This is the work any
  compressed store must do; the ratio Zcache/floor is the engine's efficiency.
- Zcache put into a persistent pool (frontswap's swizzled handles), then
  non-destructive gets of every page.
- metadata: tracemalloc delta per stored page with the budget full (the
  arena is an mmap and is not traced; the per-frame arrays are counted).
- density: stored zpages per frame and original bytes per frame byte.
Every timing is the best of `repeat` runs, floors and Zcache interleaved,
with warm memory on both sides.
"""
from __future__ import annotations

import gc
import os
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

from ..compress import available, get_codec
from ..zcache import Zcache
from ..units import PAGE_SIZE
from .corpus import corpus_files, load_pages

SWIZ = 8


@dataclass
class EngineResult:
    corpus: str
    compressor: str
    pages: int
    floor_put_pps: float
    floor_get_pps: float
    put_pps: float
    get_pps: float
    put_ratio: float
    get_ratio: float
    stored_pages: int
    rejected_pages: int
    metadata_bytes_per_page: float
    zpages_per_frame: float
    density: float  # original bytes / bytes of frames used


def pin_to_cpu(cpu: int | None) -> str:
    """Pin this process to one CPU (default: the last allowed one) and describe it."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None:
        cpu = allowed[-1]
    if cpu not in allowed:
        raise ValueError(f"cpu {cpu} is not available (allowed: {allowed})")
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu} (sched_setaffinity, like taskset -c {cpu}); {os.cpu_count()} CPUs online"


def _floor(pages: list[bytes], codec) -> tuple[float, float]:
    compress, decompress = codec.compress, codec.decompress
    arena = bytearray(b"\x01") * (len(pages) * PAGE_SIZE)  # touched up front, like a warm arena
    mv = memoryview(arena)
    spans = []
    gc.disable()
    t0 = time.perf_counter()
    off = 0
    for p in pages:
        c = compress(p)
        n = len(c)
        mv[off : off + n] = c
        spans.append((off, n))
        off += n
    t1 = time.perf_counter()
    for o, n in spans:
        decompress(mv[o : o + n])
    t2 = time.perf_counter()
    gc.enable()
    return t1 - t0, t2 - t1


def _zcache_runs(pages: list[bytes], name: str, repeat: int, floor, allocator: str = "zbud") -> tuple[float, float, float, float, int]:
    n = len(pages)
    zc = Zcache(max_pageframes=n, compressor=name, reserve_pageframes=n, allocator=allocator)
    # warm: fault the frames in once, as a running cache has them
    pid = zc.new_pool(persistent=True)
    for i, p in enumerate(pages):
        zc.put_page(pid, i & 255, i >> SWIZ, p)
    zc.destroy_pool(pid)
    best = [float("inf")] * 4
    stored = 0
    for _ in range(repeat):
        fp, fg = floor()
        best[0] = min(best[0], fp)
        best[1] = min(best[1], fg)
        pid = zc.new_pool(persistent=True)
        put, get = zc.put_page, zc.get_page
        gc.disable()
        t0 = time.perf_counter()
        for i, p in enumerate(pages):
            put(pid, i & 255, i >> SWIZ, p)
        t1 = time.perf_counter()
        for i in range(n):
            get(pid, i & 255, i >> SWIZ)
        t2 = time.perf_counter()
        gc.enable()
        best[2] = min(best[2], t1 - t0)
        best[3] = min(best[3], t2 - t1)
        stored = zc.zpages_in_memory(True)
        zc.destroy_pool(pid)
    zc.close()
    return best[0], best[1], best[2], best[3], stored


def _metadata(pages: list[bytes], name: str, allocator: str = "zbud") -> tuple[float, int, int, int, float, float]:
    """Fill a budget smaller than the corpus needs; bytes of Python heap per stored page."""
    frames = len(pages) * 2 // 5
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    zc = Zcache(max_pageframes=frames, compressor=name, reserve_pageframes=frames, allocator=allocator)
    pid = zc.new_pool(persistent=True)
    rejected = 0
    for i, p in enumerate(pages):
        if not zc.put_page(pid, i & 255, i >> SWIZ, p):
            rejected += 1
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    st = zc.stats()
    stored = st["zcache.pers_zpages"]
    in_frames = st[f"{allocator}.pers_zpages"]
    pf = st["zcache.pers_pageframes"]
    zc.close()
    return used / max(stored, 1), stored, rejected, pf, in_frames / max(pf, 1), stored * PAGE_SIZE / max(pf * PAGE_SIZE, 1)


def run(corpus: list[str] | None, compressors: list[str] | None, limit: int | None, repeat: int, progress=None,
        allocator: str = "zbud") -> list[EngineResult]:
    files = corpus_files(corpus)
    names = compressors or list(available())
    for nm in names:
        get_codec(nm)  # fail early with the list of choices
    results = []
    for source in files:
        pages = load_pages(source, limit)
        if not pages:
            continue
        for nm in names:
            codec = get_codec(nm)
            fp, fg, zp, zg, _ = _zcache_runs(pages, nm, repeat, lambda: _floor(pages, codec), allocator)
            meta, stored, rejected, pf, zpf, density = _metadata(pages, nm, allocator)
            n = len(pages)
            results.append(
                EngineResult(
                    corpus=source.name,
                    compressor=nm,
                    pages=n,
                    floor_put_pps=n / fp,
                    floor_get_pps=n / fg,
                    put_pps=n / zp,
                    get_pps=n / zg,
                    put_ratio=fp / zp,
                    get_ratio=fg / zg,
                    stored_pages=stored,
                    rejected_pages=rejected,
                    metadata_bytes_per_page=meta,
                    zpages_per_frame=zpf,
                    density=density,
                )
            )
            if progress:
                progress()
    return results


def totals(results: list[EngineResult]) -> list[dict]:
    """Per compressor, over every corpus file: time-weighted ratios (total floor time / total time)."""
    out = []
    for nm in dict.fromkeys(r.compressor for r in results):
        rs = [r for r in results if r.compressor == nm]
        t = {k: sum(r.pages / getattr(r, k) for r in rs) for k in ("floor_put_pps", "put_pps", "floor_get_pps", "get_pps")}
        out.append({
            "compressor": nm,
            "pages": sum(r.pages for r in rs),
            "put_ratio": t["floor_put_pps"] / t["put_pps"],
            "get_ratio": t["floor_get_pps"] / t["get_pps"],
            "metadata_bytes_per_page_max": max(r.metadata_bytes_per_page for r in rs),
            "zpages_per_frame_min": min(r.zpages_per_frame for r in rs),
        })
    return out


def as_json(results: list[EngineResult], pinning: str) -> dict:
    return {"benchmark": "engine", "pinning": pinning, "results": [asdict(r) for r in results], "totals": totals(results)}


def as_markdown(results: list[EngineResult], pinning: str) -> str:
    k = lambda v: f"{v / 1000:,.0f}k"  # noqa: E731
    lines = [
        f"Pinning: {pinning}.",
        "",
        "| corpus | codec | put/s | floor put/s | put × | get/s | floor get/s | get × | metadata B/page | zpages/frame | density | rejected |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.corpus.removesuffix('.pages')} | {r.compressor} | {k(r.put_pps)} | {k(r.floor_put_pps)} | {r.put_ratio:.2f} "
            f"| {k(r.get_pps)} | {k(r.floor_get_pps)} | {r.get_ratio:.2f} | {r.metadata_bytes_per_page:.0f} "
            f"| {r.zpages_per_frame:.2f} | {r.density:.2f} | {r.rejected_pages} |"
        )
    lines += ["", "| codec | pages | put × (all files) | get × (all files) | max metadata B/page | min zpages/frame |",
              "|---|---:|---:|---:|---:|---:|"]
    for t in totals(results):
        lines.append(f"| {t['compressor']} | {t['pages']} | {t['put_ratio']:.2f} | {t['get_ratio']:.2f} "
                     f"| {t['metadata_bytes_per_page_max']:.0f} | {t['zpages_per_frame_min']:.2f} |")
    return "\n".join(lines)
