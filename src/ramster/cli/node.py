"""`ramster node`: run a node (compressed memory served as NBD swap and cache exports).

The flags mirror the [node] table of the config file (ramster.config has
the grammar) and override it; with --name the same file's [cluster] table
makes the node one of a RAMster cluster (ramster.remote.clusterconf). Every
mistake found while reading them is a ConfigError, reported as one line and
exit status 2 before anything is bound or allocated; what the running node
composes is ramster.node's business.
"""
from __future__ import annotations

import argparse

from .. import compress
from . import UserError
from ..config import DEFAULT_LISTEN, DEFAULT_METRICS, LOG_FORMATS, LOG_LEVELS, ConfigError, build

DESCRIPTION = """\
Run a ramster node: one process holding a compressed-memory budget (zcache +
zbud) and serving it as Network Block Device exports, so that nbd-client +
swapon, QEMU, nbdcopy, fio or any NBD client can use it.

With no arguments it serves one export "swap" (kind swap, twice the memory)
on 127.0.0.1:10809 with metrics on 127.0.0.1:9105, using 1 GiB of memory or a
quarter of the RAM, whichever is smaller. It prints how to connect, and runs
until SIGINT or SIGTERM (in-flight requests finish, backing files are synced).
SIGHUP re-reads the config file and applies what can change at run time
(memory, log level, remotify switches and targets); `ramster ctl` changes
the same settings and more while it runs.

Export kinds:
  swap   frontswap over the shared budget; every page is accepted (those that
         do not compress are kept as they are). Pages zcache refuses go to the
         optional BACKING file (the "swap disk"), as do the coldest pages when
         memory runs short. Without one, a write fails with ENOSPC only when
         memory is full, and that page reads as EIO until written again or
         trimmed. With one, SIGTERM writes memory to the file, and after a
         crash a page reads its last version from the file or EIO.
  cache  a disk image (BACKING, required) with a cleancache of its pages in
         memory: reads are cached, writes go through to the file.
A BACKING file is created (sparse) if missing and grown to SIZE if shorter;
it is never shrunk.
"""

EPILOG = """\
sizes: bytes, or with a K, M, G, T suffix (KiB, MiB, ... also accepted; all binary).
addresses: HOST:PORT, [IPV6]:PORT, or unix:PATH for NBD.
flags override the config file; --listen and --export replace its lists.
relative paths: in the config file, relative to the file's directory (wherever the
  node is started from); on the command line, relative to the working directory.
memory: a budget above the machine's RAM (MemTotal) or the cgroup's memory.max is
  refused; above 90% of it, the node starts with a warning.

examples:
  ramster node
  ramster node --config cluster.toml --name a --listen 127.0.0.1:10809 --metrics 127.0.0.1:9105
  ramster node --memory 2G --export swap:swap:8G:/var/tmp/ramster.swap
  ramster node --listen unix:/run/ramster.sock --export disk:cache:20G:disk.img --metrics off
  ramster node --config /etc/ramster/ramster.toml --log-level debug --log-format json

config file (TOML):
  [node]
  memory = "1G"
  listen = ["127.0.0.1:10809"]
  [[node.export]]
  name = "swap"
  kind = "swap"
  size = "4G"
  backing = "/var/tmp/ramster.swap"   # a relative path is beside the config file

contrib/ramster.service is an example systemd unit (Type=notify: the node
sends READY=1 once it listens, STOPPING=1 on SIGTERM, over $NOTIFY_SOCKET).
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("node", help="run a node serving NBD swap/cache exports",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE",
                   help="TOML file with a [node] table and, for a RAMster cluster, [cluster] and "
                        "[remotify] tables (the same file on every node)")
    p.add_argument("--name", metavar="NAME",
                   help="this node's name in the config's [cluster] (runs the node as a RAMster peer)")
    p.add_argument("--memory", metavar="SIZE",
                   help="memory budget for compressed pages, a multiple of 4096, at most the RAM "
                        "(default: min(1G, RAM/4))")
    p.add_argument("--compressor", metavar="NAME",
                   help=f"page compressor: {', '.join(compress.NAMES)} (default: {compress.DEFAULT})")
    p.add_argument("--allocator", metavar="NAME", type=str.lower,
                   help="where compressed pages are kept: zbud (two per page frame) or dense (size "
                        "classes across frames, denser, with compaction) (default: zbud)")
    p.add_argument("--recompress-codec", metavar="NAME",
                   help=f"the second codec cold and huge pages are recompressed with, at its denser "
                        f"setting: {', '.join(compress.NAMES)} (default: zstd)")
    p.add_argument("--recompress-cpu", metavar="FRACTION",
                   help="share of one CPU the node spends recompressing cold pages in the background, "
                        "e.g. 0.05 (default: 0, off; `ramster ctl recompress` works either way)")
    p.add_argument("--no-recompress-groups", dest="recompress_groups", action="store_false", default=None,
                   help="with --allocator dense and zstd recompression, recompress cold persistent pages one "
                        "by one instead of 32 together (groups keep ~15%% fewer bytes; reading a grouped page "
                        "decompresses its group, ~0.1 ms; recompress_groups in [node])")
    p.add_argument("--dedup", action="store_true", default=None,
                   help="store identical pages once, shared with a reference count (xxh3-128 and a byte "
                        "compare; costs a hash per put, saves memory where pages repeat; dedup in [node])")
    p.add_argument("--listen", action="append", metavar="ADDR",
                   help=f"NBD address, HOST:PORT or unix:PATH; repeat for several (default: {DEFAULT_LISTEN})")
    p.add_argument("--export", action="append", metavar="NAME:KIND:SIZE[:BACKING]", dest="exports",
                   help="an export; KIND is swap or cache, SIZE a multiple of 4096, BACKING a file "
                        "(optional for swap, required for cache); repeat for several "
                        "(default: swap:swap:<2 x memory>)")
    p.add_argument("--metrics", metavar="ADDR",
                   help=f"HTTP address for /metrics and /stats, or \"off\" (default: {DEFAULT_METRICS})")
    p.add_argument("--log-level", metavar="LEVEL", type=str.lower,
                   help=f"one of {', '.join(LOG_LEVELS)} (default: info)")
    p.add_argument("--log-format", metavar="FORMAT", type=str.lower,
                   help=f"stderr lines as {', '.join(LOG_FORMATS)}: json is one object per line "
                        "(ts, level, logger, msg, ...) for journald or Loki (default: text)")
    p.add_argument("--control", metavar="PATH",
                   help="the control socket `ramster ctl` talks to (mode 0600, this user and root only), "
                        "or \"off\" (default: after the first --listen, PATH.ctl for unix:PATH, else "
                        "ramster-PORT.ctl in $XDG_RUNTIME_DIR or /run/ramster; see `ramster ctl --help`)")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from ..node import run

    def load():
        # a reload reads the file again with the same flags on top: a flag still wins
        cfg = build(args.config, memory=args.memory, compressor=args.compressor, allocator=args.allocator, listen=args.listen,
                    exports=args.exports, metrics=args.metrics, log_level=args.log_level,
                    log_format=args.log_format, recompress_codec=args.recompress_codec,
                    recompress_cpu=args.recompress_cpu,
                    recompress_groups=args.recompress_groups, dedup=args.dedup)
        return cfg, _cluster(args.config, args.name)

    try:
        cfg, cluster = load()
        return run(cfg, cluster, loader=load, control=args.control)
    except ConfigError as e:
        raise UserError(str(e)) from None


def _cluster(config: str | None, name: str | None):
    """The cluster this node belongs to, or None for a single node."""
    from ..config import read_toml

    has_cluster = config is not None and "cluster" in read_toml(config)
    if name is None:
        if has_cluster:
            raise ConfigError(f"{config} describes a cluster: say which node this is with --name")
        return None
    if not has_cluster:
        raise ConfigError("--name needs a --config file with a [cluster] table")
    from ..remote.clusterconf import load_cluster

    return load_cluster(config, name)
