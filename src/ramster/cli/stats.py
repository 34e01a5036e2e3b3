"""`ramster stats`: a running node's counters, summarised like zramctl.

It reads the node's /stats document (JSON, served beside /metrics on the
metrics address) and never the node's memory: a node is a separate process,
possibly on another machine. The summary follows zramctl's columns:

    original data  (eph_zpages + pers_zpages + huge_pages) x PAGE_SIZE  -- DATA
    compressed     eph_zbytes + pers_zbytes + huge_pages x PAGE_SIZE    -- COMPR
    memory used    (eph_pageframes + pers_pageframes + huge_pages) x PAGE_SIZE -- TOTAL
    ratio          original data / memory used (what the budget really buys;
                   zbud's two-per-frame packing is why it is below the codec's ratio)

then the exports' I/O counters and, in a cluster, each peer's state. The
counter names are the seed's debugfs names (SPEC), so a number here can be
looked up there. `--json` prints the document as it came; an unreachable
node is one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from ..config import DEFAULT_METRICS
from ..units import PAGE_SIZE, format_size

DEFAULT_URL = f"http://{DEFAULT_METRICS}"
TIMEOUT = 5.0


class NodeUnreachable(Exception):
    pass


def node_base_url(url: str) -> str:
    """http://HOST:PORT of a node from what the user typed (HOST:PORT, a URL, its /stats or /metrics)."""
    bad = NodeUnreachable(f"invalid --url {url!r}: expected http://HOST:PORT (e.g. {DEFAULT_URL})")
    base = url.strip().rstrip("/")
    if base.endswith("/stats") or base.endswith("/metrics"):
        base = base.rsplit("/", 1)[0]
    if "://" not in base:
        if "://" in url:  # "http://" alone
            raise bad
        base = "http://" + base
    if any(ch.isspace() or ord(ch) < 32 for ch in base):
        raise bad
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise bad
    return base


def fetch(url: str) -> dict:
    """The node's /stats document; NodeUnreachable (one line) if there is no node there."""
    base = node_base_url(url)
    target = base + "/stats"
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise NodeUnreachable(f"{target} answered {e.code} {e.reason}: is that a ramster node?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NodeUnreachable(f"no ramster node answering at {base} ({reason}); "
                              f"start one with `ramster node` or pass --url") from None
    except ValueError:
        raise NodeUnreachable(f"{target} did not return JSON: is that a ramster node?") from None


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
    t.add_column(no_wrap=True)
    t.add_column(justify="right", no_wrap=True)
    for k, v in rows:
        t.add_row(k, v)
    return t


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
    ex = Table(title="exports", title_justify="left", title_style="bold", box=None, header_style="bold",
               pad_edge=False)
    for col in ("export", "kind", "size", "reads", "writes", "read", "written", "errors", "failed", "lost",
                "hits", "miss"):
        ex.add_column(col, justify="left" if col in ("export", "kind") else "right", no_wrap=True)
    for name, e in stats.get("exports", {}).items():
        k = e.get("counters", {})
        ex.add_row(name, e.get("kind", ""), format_size(e.get("size", 0)), str(k.get("reads", 0)),
                   str(k.get("writes", 0)), format_size(k.get("bytes_read", 0)),
                   format_size(k.get("bytes_written", 0)), str(k.get("errors", 0)),
                   str(k["failed_writes"]) if "failed_writes" in k else "-",
                   str(e.get("gauges", {})["lost_pages"]) if "lost_pages" in e.get("gauges", {}) else "-",
                   str(k["cache_hits"]) if "cache_hits" in k else "-",
                   str(k["cache_misses"]) if "cache_misses" in k else "-")
    title = (f"ramster node {node.get('version', '?')}  pid {node.get('pid', '?')}  "
             f"up {_duration(node.get('uptime_seconds', 0))}  listen {' '.join(node.get('listen', []))}")
    parts = [title, "", Columns([memory, pages, events], padding=(0, 4)), "", ex]
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
        pt = Table(title="peers", title_justify="left", title_style="bold", box=None, header_style="bold",
                   pad_edge=False)
        for col in ("peer", "number", "state", "rtt", "pages held", "only copy", "free", "refused"):
            pt.add_column(col, justify="left" if col in ("peer", "state") else "right", no_wrap=True)
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


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stats", help="show a running node's counters",
        description="Show a running node's memory use and counters (from its /stats endpoint), "
                    "summarised like zramctl: DATA is the original size of the stored pages, COMPR "
                    "their compressed size, TOTAL the memory holding them, RATIO DATA/TOTAL.",
        epilog="examples:\n  ramster stats\n  ramster stats --watch\n"
               "  ramster stats --url http://10.0.0.2:9105 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL, help=f"the node's metrics address (default: {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="print the raw /stats document as JSON")
    p.add_argument("--watch", action="store_true", help="refresh in place every second until Ctrl-C")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    try:
        stats = fetch(args.url)
    except NodeUnreachable as e:
        print(f"ramster stats: {e}", file=sys.stderr)
        return 1
    if args.json and not args.watch:
        try:
            json.dump(stats, sys.stdout, indent=1)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `ramster stats --json | head`
            sys.stderr.close()
        return 0
    from rich.console import Console

    console = Console()
    if not args.watch:
        console.print(render(stats))
        return 0
    from rich.live import Live
    from rich.pretty import Pretty

    def view(st):
        return Pretty(st) if args.json else render(st)

    try:
        with Live(view(stats), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(1.0)
                try:
                    stats = fetch(args.url)
                except NodeUnreachable as e:
                    live.stop()
                    print(f"ramster stats: {e}", file=sys.stderr)
                    return 1
                live.update(view(stats), refresh=True)
    except KeyboardInterrupt:
        return 0
