"""Put and get rates of each allocator and feature, as ratios to the lz4 floor measured beside them.

The floor is bench engine's: compress every page into a bare arena, then
decompress every page from it, the work any compressed store must do. Each
variant is a Zcache built with the constructor arguments that select it
(allocator=, dedup=), given memory for every page, warmed once (its frames
faulted in), then timed: puts of every page into a persistent pool and
non-destructive gets of every page. Floors and variants are interleaved and
the best of `repeat` runs kept, so a noisy neighbour moves both sides.

Recompression is timed on its own: after the puts, Zcache.recompress()
over every page (its pages per second, as a ratio to the floor's puts), then
the gets, which now decompress with the second codec.

A variant whose constructor argument or method this Zcache lacks is
reported "not available" with the reason, never approximated by another.
"""
from __future__ import annotations

import gc
import inspect
import time
from dataclasses import dataclass

from ..compress import get_codec
from ..units import PAGE_SIZE
from ..zcache import Zcache
from .engine import SWIZ, _floor

# name -> Zcache keyword arguments; "recompress" also runs Zcache.recompress()
VARIANTS = (
    ("zbud", {}, False),
    ("zbud+recompress", {}, True),
    ("dense", {"allocator": "dense"}, False),
    ("dense+recompress", {"allocator": "dense"}, True),
    ("dense+dedup", {"allocator": "dense", "dedup": True}, False),
)


@dataclass
class Rate:
    workload: str
    variant: str
    status: str = "ok"
    reason: str = ""
    pages: int = 0
    put_pps: float | None = None
    get_pps: float | None = None
    put_ratio: float | None = None  # to the lz4 floor's puts, same run
    get_ratio: float | None = None
    recompress_pps: float | None = None
    recompress_ratio: float | None = None
    recompressed: int | None = None  # pages the recompression kept in the second codec
    bytes_per_original_byte: float | None = None  # frames in use x 4096 / pages x 4096


def unavailable(kwargs: dict, recompress: bool) -> str | None:
    """Why this Zcache cannot run a variant, or None."""
    params = inspect.signature(Zcache.__init__).parameters
    missing = [k for k in kwargs if k not in params]
    if missing:
        return f"Zcache has no {', '.join(missing)}= argument"
    if recompress and not hasattr(Zcache, "recompress"):
        return "Zcache has no recompress()"
    return None


def _one(pages: list[bytes], kwargs: dict, recompress: bool, repeat: int, floor) -> tuple:
    n = len(pages)
    zc = Zcache(max_pageframes=n, compressor="lz4", reserve_pageframes=n, **kwargs)
    try:
        pid = zc.new_pool(persistent=True)
        for i, p in enumerate(pages):  # fault the frames in once, as a running cache has them
            zc.put_page(pid, i & 255, i >> SWIZ, p)
        zc.destroy_pool(pid)
        best = [float("inf")] * 5
        used = recompressed = 0
        for _ in range(repeat):
            fp, fg = floor()
            best[0], best[1] = min(best[0], fp), min(best[1], fg)
            pid = zc.new_pool(persistent=True)
            put, get = zc.put_page, zc.get_page
            gc.disable()
            t0 = time.perf_counter()
            for i, p in enumerate(pages):
                put(pid, i & 255, i >> SWIZ, p)
            t1 = time.perf_counter()
            if recompress:
                recompressed = zc.recompress(max_pages=n, idle_only=False)
                while zc.recompress_pending():
                    recompressed += zc.recompress(max_pages=n, idle_only=False)
            t2 = time.perf_counter()
            for i in range(n):
                get(pid, i & 255, i >> SWIZ)
            t3 = time.perf_counter()
            gc.enable()
            best[2], best[3], best[4] = min(best[2], t1 - t0), min(best[3], t3 - t2), min(best[4], t2 - t1)
            used = zc.pageframes_in_use
            zc.destroy_pool(pid)
    finally:
        gc.enable()
        zc.close()
    return (*best, used, recompressed)


def measure(workloads: dict[str, list[bytes]], repeat: int, progress=lambda msg: None) -> list[Rate]:
    codec = get_codec("lz4")
    out = []
    for wl, pages in workloads.items():
        for name, kwargs, recompress in VARIANTS:
            why = unavailable(kwargs, recompress)
            if why:
                out.append(Rate(wl, name, status="not available", reason=why))
                continue
            progress(f"rates: {name} on {wl}")
            fp, fg, zp, zg, zr, used, recompressed = _one(pages, kwargs, recompress, repeat, lambda: _floor(pages, codec))
            n = len(pages)
            r = Rate(wl, name, pages=n, put_pps=n / zp, get_pps=n / zg, put_ratio=fp / zp, get_ratio=fg / zg,
                     bytes_per_original_byte=used / n)
            if recompress:
                r.recompress_pps, r.recompress_ratio, r.recompressed = n / zr, fp / zr, recompressed
            out.append(r)
    return out


def floor_rates(pages: list[bytes]) -> dict:
    fp, fg = _floor(pages, get_codec("lz4"))
    return {"put_pps": len(pages) / fp, "get_pps": len(pages) / fg}


def pages_of(data: bytes, limit: int, parts: int = 1) -> list[bytes]:
    """At most `limit` pages of an image made of `parts` equal shares (the workers'), an equal
    prefix of each share, so that a subset keeps the image's duplicates."""
    total = len(data) // PAGE_SIZE
    share, take = total // parts, min(total, limit) // parts
    return [data[o:o + PAGE_SIZE] for k in range(parts)
            for o in range(k * share * PAGE_SIZE, (k * share + take) * PAGE_SIZE, PAGE_SIZE)]
