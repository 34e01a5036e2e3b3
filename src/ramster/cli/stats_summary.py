"""`ramster stats --summary`: a node's counters grouped for reading, not for columns.

The zramctl figures first, computed over the whole node (both pool kinds):

    original data  (eph_zpages + pers_zpages + huge_pages) x PAGE_SIZE  -- DATA
    compressed     eph_zbytes + pers_zbytes + huge_pages x PAGE_SIZE    -- COMPR
    memory used    (eph_pageframes + pers_pageframes + huge_pages) x PAGE_SIZE -- TOTAL
    ratio          original data / memory used (what the budget really buys;
                   zbud's two-per-frame packing is why it is below the codec's ratio)

then the pages by kind, the events, the exports' I/O and, in a cluster, the
RAMster counters and each peer's state. The counter names are the seed's
debugfs names (SPEC), so a number here can be looked up there. Cells fold
onto a second line rather than being cut when the terminal is narrow.
"""
from __future__ import annotations

from ..units import PAGE_SIZE, format_size


def summary(stats: dict) -> dict:
    """The zramctl-like figures, in bytes and counts."""
    c = stats.get("counters", {})
    g = c.get
    eph_pages, pers_pages = g("zcache.eph_zpages", 0), g("zcache.pers_zpages", 0)
    eph_frames, pers_frames = g("zcache.eph_pageframes", 0), g("zcache.pers_pageframes", 0)
    huge = g("zcache.huge_pages", 0)  # kept as they are, a frame each
    original = (eph_pages + pers_pages + huge) * PAGE_SIZE
    compressed = g("zcache.eph_zbytes", 0) + g("zcache.pers_zbytes", 0) + huge * PAGE_SIZE
    used = (eph_frames + pers_frames + huge) * PAGE_SIZE
    return {
        "original": original,
        "compressed": compressed,
        "memory_used": used,
        "memory_limit": g("zcache.max_pageframes", 0) * PAGE_SIZE,
        "ratio": original / used if used else 0.0,
        "compress_ratio": original / compressed if compressed else 0.0,
        "eph_pageframes": eph_frames,
        "pers_pageframes": pers_frames,
        "eph_zpages": eph_pages,
        "pers_zpages": pers_pages,
        "zero_filled_pages": g("zcache.zero_filled_pages", 0),
        "same_filled_pages": g("zcache.same_filled_pages", 0),
        "huge_pages": huge,
        "evicted_eph_pageframes": g("zcache.evicted_eph_pageframes", 0),
        "evicted_eph_zpages": g("zcache.evicted_eph_zpages", 0),
        "writtenback_pages": g("zcache.writtenback_pages", 0),
        "outstanding_writeback_pages": g("zcache.outstanding_writeback_pages", 0),
        "compress_poor": g("zcache.compress_poor", 0),
        "mean_compress_poor": g("zcache.mean_compress_poor", 0),
        "failed_eph_puts": g("zcache.failed_eph_puts", 0),
        "failed_pers_puts": g("zcache.failed_pers_puts", 0),
    }


def _kv(title: str, rows: list[tuple[str, str]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left", title_style="bold", box=None, show_header=False,
              pad_edge=False)
    t.add_column(overflow="fold")
    t.add_column(justify="right", overflow="fold")
    for k, v in rows:
        t.add_row(k, v)
    return t


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...]):
    from rich.table import Table

    t = Table(title=title, title_justify="left", title_style="bold", box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col, justify="left" if col in left else "right", overflow="fold")
    return t


def width_needed(group) -> int:
    """The columns the widest of the view's parts needs to print without folding a cell:
    the console is made at least this wide (the terminal wraps what it cannot show)."""
    from rich.columns import Columns
    from rich.console import Console

    console = Console(width=10_000)
    parts = []
    for r in group.renderables:
        parts += r.renderables if isinstance(r, Columns) else [r]
    return max((console.measure(r).maximum for r in parts if not isinstance(r, str)), default=0)


def render(stats: dict):
    from rich.columns import Columns
    from rich.console import Group
    from rich.table import Table

    s = summary(stats)
    node = stats.get("node", {})
    memory = _kv("memory", [
        ("algorithm", str(node.get("compressor", "?"))),
        ("original data", format_size(s["original"])),
        ("compressed", format_size(s["compressed"])),
        ("memory used", format_size(s["memory_used"])),
        ("memory limit", format_size(s["memory_limit"])),
        ("ratio (data/used)", f"{s['ratio']:.2f}"),
        ("compression ratio", f"{s['compress_ratio']:.2f}"),
    ])
    pages = _kv("pages", [
        ("eph frames", str(s["eph_pageframes"])),
        ("pers frames", str(s["pers_pageframes"])),
        ("eph pages", str(s["eph_zpages"])),
        ("pers pages", str(s["pers_zpages"])),
        ("zero-filled", str(s["zero_filled_pages"])),
        ("same-filled", str(s["same_filled_pages"])),
        ("huge (incompressible)", str(s["huge_pages"])),
    ])
    events = _kv("events", [
        ("evicted eph frames", str(s["evicted_eph_pageframes"])),
        ("evicted eph pages", str(s["evicted_eph_zpages"])),
        ("written back", str(s["writtenback_pages"])),
        ("writeback outstanding", str(s["outstanding_writeback_pages"])),
        ("rejected: compress poor", str(s["compress_poor"] + s["mean_compress_poor"])),
        ("failed eph/pers puts", f"{s['failed_eph_puts']}/{s['failed_pers_puts']}"),
    ])
    # two tables of the exports, each narrow enough for an 80-column terminal
    io = _table("exports", ("export", "kind", "size", "reads", "writes", "read", "written"), ("export", "kind"))
    health = _table("exports: errors, file, cache", ("export", "errors", "failed", "lost", "file reads",
                                                     "file writes", "hits", "miss"), ("export",))
    for name, e in stats.get("exports", {}).items():
        k = e.get("counters", {})
        gauges = e.get("gauges", {})
        opt = lambda d, key: str(d[key]) if key in d else "-"  # noqa: E731
        io.add_row(name, e.get("kind", ""), format_size(e.get("size", 0)), str(k.get("reads", 0)),
                   str(k.get("writes", 0)), format_size(k.get("bytes_read", 0)),
                   format_size(k.get("bytes_written", 0)))
        health.add_row(name, str(k.get("errors", 0)), opt(k, "failed_writes"), opt(gauges, "lost_pages"),
                       opt(k, "backing_reads"), opt(k, "backing_writes"), opt(k, "cache_hits"),
                       opt(k, "cache_misses"))
    title = (f"ramster node {node.get('version', '?')}  pid {node.get('pid', '?')}  "
             f"up {_duration(node.get('uptime_seconds', 0))}  listen {' '.join(node.get('listen', []))}")
    parts = [title, "", Columns([memory, pages, events], padding=(0, 4)), "", io, "", health]
    peers = stats.get("peers") or []
    if peers:
        c = stats.get("counters", {})
        g = lambda k: str(c.get(f"ramster.{k}", 0))  # noqa: E731
        remote = _kv("RAMster", [
            ("pages remoted eph/pers", f"{g('eph_pages_remoted')}/{g('pers_pages_remoted')}"),
            ("remote pages now eph/pers", f"{g('remote_eph_pages')}/{g('remote_pers_pages')}"),
            ("foreign pages eph/pers", f"{g('foreign_eph_pages')}/{g('foreign_pers_pages')}"),
            ("remote gets ok/miss", f"{g('remote_pers_pages_succ_get')}/{g('remote_pers_pages_unsucc_get')}"),
            ("pages lost", g("remote_pers_pages_lost")),
            ("pages short of copies", g("remote_pages_short")),
            ("checksum errors", g("remote_checksum_errors")),
            ("handshakes refused", g("handshakes_refused")),
        ])
        pt = _table("peers", ("peer", "number", "state", "rtt", "pages held", "only copy", "free", "refused"),
                    ("peer", "state"))
        for p in peers:
            rtt = p.get("rtt_seconds")
            free = p.get("free_frames")
            pt.add_row(p["name"], str(p["number"]), "connected" if p["connected"] else "down",
                       f"{rtt * 1e3:.2f} ms" if rtt is not None else "-", str(p.get("pages_held", 0)),
                       str(p.get("pages_only_copy", 0)),
                       format_size(free * PAGE_SIZE) if free is not None else "-", str(p.get("refused", 0)))
        parts += ["", Columns([remote, pt], padding=(0, 4))]
    return Group(*parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
