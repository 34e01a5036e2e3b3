"""`ramster bench BENCHMARK`: each benchmark measures its baseline in the same run.

A ratio to a floor measured seconds earlier on the same machine survives a
noisy neighbour or another CPU; an absolute rate does not. `engine` is
declared here; the bigger benchmarks (nbd, density, cluster, guest) keep their flags
beside their bodies in ramster.bench and are registered here.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark (engine, nbd, density, cluster, guest)",
        description="Benchmarks measure their baseline in the same run and report the ratio to it.",
    )
    bsub = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    bsub.required = True
    e = bsub.add_parser(
        "engine",
        help="Zcache put/get throughput vs the bare codec, metadata per page, density",
        description="Puts every corpus page into a persistent pool and gets it back, for each compressor, "
        "against a floor loop that only compresses into an arena and decompresses from it. Also fills a small "
        "budget to measure Python metadata bytes per stored page and zbud density.",
    )
    e.add_argument("--corpus", nargs="+", metavar="PATH", help="*.pages files or directories (default: shared/corpus, else synthetic pages with its mix)")
    e.add_argument("--compressor", nargs="+", metavar="NAME", help="compressors to run (default: every installed one of lz4 lzo zstd zlib)")
    e.add_argument("--allocator", choices=("zbud", "dense"), default="zbud",
                   help="where Zcache keeps the compressed pages (default: zbud)")
    e.add_argument("--pages", type=int, metavar="N", help="use at most N pages of each file")
    e.add_argument("--repeat", type=int, default=3, metavar="R", help="timed runs; the best is kept (default 3)")
    e.add_argument("--cpu", type=int, metavar="N", help="CPU to pin to (default: the last one)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--markdown", action="store_true", help="print Markdown tables (for BENCHMARKS.md)")
    e.set_defaults(func=_engine)
    # the cluster, NBD and guest benchmarks declare their own flags beside their bodies
    from ..bench import cluster, density, guest, nbd

    cluster.add_parser(bsub)
    nbd.add_parser(bsub)
    density.add_parser(bsub)
    guest.add_parser(bsub)


def _engine(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ..bench import engine
    from ..bench.corpus import corpus_files

    if args.repeat < 1:
        raise UserError("--repeat must be at least 1")
    if args.pages is not None and args.pages < 1:
        raise UserError("--pages must be at least 1")
    try:
        files = corpus_files(args.corpus)
        pinning = engine.pin_to_cpu(args.cpu)
        names = args.compressor or list(engine.available())
        for nm in names:
            engine.get_codec(nm)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    console = Console(stderr=True)
    total = len(files) * len(names)
    quiet = (args.json or args.markdown) and not sys.stderr.isatty()
    with Progress(console=console, transient=True, disable=quiet) as prog:
        task = prog.add_task("bench engine", total=total)
        results = engine.run(args.corpus, names, args.pages, args.repeat, lambda: prog.advance(task),
                             allocator=args.allocator)
    if args.json:
        print(json.dumps(engine.as_json(results, pinning), indent=2))
        return 0
    if args.markdown:
        print(engine.as_markdown(results, pinning))
        return 0
    t = Table(title=f"ramster bench engine — {pinning}")
    for col in ("corpus", "codec", "put/s", "floor", "×", "get/s", "floor", "×", "meta B", "zp/frame", "rejected"):
        t.add_column(col, justify="left" if col in ("corpus", "codec") else "right")
    k = lambda v: f"{v / 1000:,.0f}k"  # noqa: E731
    for r in results:
        t.add_row(r.corpus.removesuffix(".pages"), r.compressor, k(r.put_pps), k(r.floor_put_pps), f"{r.put_ratio:.2f}",
                  k(r.get_pps), k(r.floor_get_pps), f"{r.get_ratio:.2f}", f"{r.metadata_bytes_per_page:.0f}",
                  f"{r.zpages_per_frame:.2f}", str(r.rejected_pages))
    t.caption = "×: ratio to the floor (compress into / decompress from a bare arena); meta B: Python bytes per stored page"
    out = Console(width=max(Console().width, 100))
    out.print(t)
    tt = Table(title="all corpus files (ratios of total times)")
    for col in ("codec", "pages", "put ratio", "get ratio", "max meta B/page", "min zpages/frame"):
        tt.add_column(col, justify="left" if col == "codec" else "right")
    for r in engine.totals(results):
        tt.add_row(r["compressor"], str(r["pages"]), f"{r['put_ratio']:.2f}", f"{r['get_ratio']:.2f}",
                   f"{r['metadata_bytes_per_page_max']:.1f}", f"{r['zpages_per_frame_min']:.2f}")
    out.print(tt)
    return 0
