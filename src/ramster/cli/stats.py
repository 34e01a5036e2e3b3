"""`ramster stats`: a running node's numbers as zramctl shows a zram device's.

It reads the node's /stats document (JSON, served beside /metrics on the
metrics address) and never the node's memory: a node is a separate process,
possibly on another machine. Three views of one document:

- the table (default): zramctl's columns and flags, one row per export
  (stats_columns.py says which counters fill which column, and why the
  memory columns are the export's pool kind's);
- --summary: the counters grouped for reading (stats_summary.py);
- --json: the document itself.

--watch refetches every --interval seconds. On a terminal the table or the
summary is redrawn in place; into a pipe or a file every refresh is printed
in full, as plain text without styling or truncation, and flushed, so
`ramster stats --watch | tee log` shows each refresh as it comes; with
--json every refresh is one line of JSON (NDJSON). An unreachable node is
one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request

from . import UserError

from ..config import DEFAULT_METRICS
from .stats_columns import ZRAMCTL_COLUMNS, columns_help, parse_columns, table
from .stats_summary import render, summary, width_needed

__all__ = ["NodeUnreachable", "fetch", "main", "node_base_url", "render", "summary"]

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


EPILOG = """\
columns (NAME to MOUNTPOINT as zramctl(8) defines them, then ramster's own):
{columns}

where the numbers come from, for an export whose pages are of pool kind K
(pers for swap, eph for cache; huge pages, stored raw, are persistent only):
  DATA        (zcache.K_zpages + zcache.huge_pages) x 4096
  COMPR       zcache.K_zbytes + zcache.huge_pages x 4096
  ZERO-PAGES  zcache.K_zpages - zbud.K_zpages (- dense.cold_pages for pers)
  TOTAL       (zcache.K_pageframes + zcache.huge_pages) x 4096
  MEM-LIMIT   zcache.max_pageframes x 4096
  MEM-USED    (zcache.K_pageframes_max + zcache.huge_pages_max) x 4096
  REMOTE      ramster.remote_K_pages
  WRITTEN-BACK, BACKING-READS, BACKING-WRITES
              the export's written_back, backing_reads, backing_writes
  IDLE        zcache.idle_pages

examples:
  ramster stats
  ramster stats -b -o name,data,compr,total --raw
  ramster stats --watch --json | jq -c .counters
  ramster stats --summary --url http://10.0.0.2:9105
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "stats", help="show a running node's memory and counters, like zramctl",
        description=textwrap.fill("Show a running node's memory use and counters (from its /stats endpoint) "
                    "with zramctl's columns, one row per export. An export's memory columns "
                    "are those of the pool kind its pages live in (swap: persistent, cache: "
                    "ephemeral), which all exports of that kind share; with several exports "
                    "a last row, (node), shows the whole node.", 79),
        epilog=EPILOG.format(columns=columns_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=DEFAULT_URL, help=f"the node's metrics address (default: {DEFAULT_URL})")
    p.add_argument("-b", "--bytes", action="store_true", help="print sizes in bytes rather than in human readable format")
    p.add_argument("-o", "--output", metavar="LIST", help="columns to print, comma-separated; +LIST adds to the defaults")
    p.add_argument("--output-all", action="store_true", help="print all columns")
    p.add_argument("-n", "--noheadings", action="store_true", help="don't print headings")
    p.add_argument("--raw", action="store_true", help="raw output: one space between cells, no alignment")
    p.add_argument("--json", action="store_true", help="print the /stats document as JSON (one line per refresh with --watch)")
    p.add_argument("--summary", action="store_true", help="the counters grouped for reading instead of the table")
    p.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between refreshes (default: 1)")
    p.set_defaults(func=main)
    return p


class _View:
    """Writes one refresh of the chosen view to stdout."""

    def __init__(self, args: argparse.Namespace, columns: list[str]):
        self.args = args
        self.columns = columns
        self.out = sys.stdout
        self.tty = self.out.isatty()
        self.live = None

    def show(self, doc: dict) -> None:
        a = self.args
        if a.json:
            self.out.write(json.dumps(doc, separators=(",", ":")) + "\n" if a.watch else json.dumps(doc, indent=1) + "\n")
        elif a.summary:
            self._summary(doc)
        else:
            width = shutil.get_terminal_size().columns if self.tty else None
            text = table(doc, self.columns, in_bytes=a.bytes, headings=not a.noheadings, raw=a.raw, width=width,
                         fit=self.tty and not (a.output or a.output_all))
            if a.watch and self.tty:
                text = "\x1b[H\x1b[J" + text  # redraw in place
            self.out.write(text)
        self.out.flush()

    def _summary(self, doc: dict) -> None:
        from rich.console import Console

        view = render(doc)
        # never narrower than a part needs: a cell is folded or cut by nothing, and a
        # terminal narrower than that wraps the line instead
        need = width_needed(view)
        if self.tty:
            width = max(shutil.get_terminal_size().columns, need)
            console = Console(width=width)
        else:  # into a pipe: plain text, one line per line
            console = Console(file=self.out, width=max(80, need), color_system=None, highlight=False,
                              emoji=False)
        if not (self.args.watch and self.tty):
            console.print(view, crop=False)
        elif self.live is None:
            from rich.live import Live

            self.live = Live(view, console=console, auto_refresh=False)
            self.live.start(refresh=True)
        else:
            self.live.console.width = console.width
            self.live.update(view, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def main(args: argparse.Namespace) -> int:
    try:
        columns = parse_columns(args.output, args.output_all)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not args.interval > 0:
        raise UserError(f"--interval must be above 0, not {args.interval}")
    view = _View(args, columns)
    try:
        while True:
            try:
                doc = fetch(args.url)
            except NodeUnreachable as e:
                view.close()
                print(f"ramster stats: {e}", file=sys.stderr)
                return 1
            view.show(doc)
            if not args.watch:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `ramster stats --watch | head`
        # the reader is gone: nothing more to say, and nothing on stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        view.close()
