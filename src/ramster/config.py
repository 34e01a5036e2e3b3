"""Node configuration: one TOML file (the same on every node) merged with flags.

    [node]
    memory = "512M"                     # bytes, or K/M/G/T (binary; see ramster.units)
    compressor = "lz4"
    allocator = "zbud"                  # zbud | dense (size classes: denser, see ramster.dense)
    listen = ["127.0.0.1:10809", "unix:/run/ramster.sock"]
    metrics = "127.0.0.1:9105"          # "off" disables the HTTP endpoint
    log_level = "info"
    log_format = "text"                 # text | json | logfmt (see ramster.logsetup)
    recompress_codec = "zstd"           # the second codec cold pages are recompressed with
    recompress_cpu = 0.05               # share of a CPU for it in the background (default 0: off)
    recompress_groups = true            # dense + zstd: cold persistent pages compressed 32 together
    dedup = false                       # store identical pages once (see ramster.dedup)

    [[node.export]]
    name = "swap"
    kind = "swap"                       # swap | cache
    size = "2G"
    backing = "/var/tmp/ramster.swap"   # optional for swap, required for cache

Flags override the file; a list given by flags (listen, export) replaces the
file's list rather than adding to it, so a command line always says exactly
what is served. Tables other than [node] belong to other parts of ramster
(cluster, remotify) and are left alone here; inside [node] every key is
checked so that a typo is an error rather than a silently ignored setting.

Relative paths follow one rule: a path written in the config file (a backing
file, a unix: listen socket, and in [cluster] the key and TLS files) is
relative to the directory the file is in; a path given on the command line is
relative to the working directory. A config file is installed somewhere
(/etc/ramster) and started from anywhere (systemd starts services in /), so
its paths must not depend on where it is started from, the way a Cargo.toml's
or a compose file's paths are the file's; a command line is typed in a shell,
where every tool reads a relative path from the working directory.
Command-line paths are made absolute when parsed, so the banner, /stats and
the logs name the file that is used.

The memory budget must fit in what the machine (and the process's cgroup)
has: a budget above it is refused, one above 90% of it logged as a warning
(ramster.hostmem says why the node cannot simply find out later).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import compress, hostmem
from .frames import MAX_FRAMES
from .logsetup import FORMATS as LOG_FORMATS
from .logsetup import LEVELS as LOG_LEVELS
from .units import PAGE_SIZE, format_size, parse_address, parse_size
from .zcache import ALLOCATORS, DEFAULT_ALLOCATOR

KINDS = ("swap", "cache")
DEFAULT_LISTEN = "127.0.0.1:10809"
DEFAULT_METRICS = "127.0.0.1:9105"
DEFAULT_MEMORY_CAP = 1 << 30
# Frontswap takes one pool for every swap export; each cache export takes one of its own.
MAX_CACHE_EXPORTS = 15
# Frontswap addresses 2**40 pages of a swap type (a 32-bit tmem index after 8 bits of
# swizzling); NBD and QEMU would take up to 2**63 - 1 bytes. Cache exports share the limit.
MAX_EXPORT_SIZE = PAGE_SIZE << 40  # 4 PiB
# The longest export name NBD clients must accept (proto.md: SHOULD <= 256 bytes).
MAX_NAME_BYTES = 256

_NODE_KEYS = ("memory", "compressor", "allocator", "listen", "metrics", "log_level", "log_format", "export",
              "recompress_codec", "recompress_cpu", "recompress_groups", "dedup")
_EXPORT_KEYS = ("name", "kind", "size", "backing")


class ConfigError(ValueError):
    """A configuration mistake; the message is one line meant for the user."""


def read_toml(path) -> dict:
    """A TOML file as a dict; ConfigError (one line) when it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def _size(value, what: str) -> int:
    try:
        return parse_size(value, what)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_address(address: str, what: str = "listen address") -> str:
    """A listen address (HOST:PORT, [IPV6]:PORT or unix:PATH) or a metrics address
    (TCP only), returned unchanged; the grammar is ramster.units'."""
    try:
        parse_address(address, what, unix=what == "listen address")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return address


def default_memory() -> int:
    """1 GiB or a quarter of the RAM, whichever is smaller, in whole pages."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover - every Linux has both
        ram = 4 * DEFAULT_MEMORY_CAP
    return max(PAGE_SIZE, min(DEFAULT_MEMORY_CAP, ram // 4) // PAGE_SIZE * PAGE_SIZE)


@dataclass
class ExportConfig:
    name: str
    kind: str
    size: int
    backing: Path | None = None

    def spec(self) -> str:
        """The --export form of this export."""
        s = f"{self.name}:{self.kind}:{self.size}"
        return f"{s}:{self.backing}" if self.backing is not None else s


@dataclass
class NodeConfig:
    memory: int
    compressor: str = compress.DEFAULT
    allocator: str = DEFAULT_ALLOCATOR
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    metrics: str | None = DEFAULT_METRICS  # None: no metrics endpoint
    log_level: str = "info"
    log_format: str = "text"
    recompress_codec: str = "zstd"
    recompress_cpu: float = 0.0  # 0: no background recompression
    recompress_groups: bool = True  # cold groups (zcache_cold.py), on a dense node recompressing with zstd
    dedup: bool = False
    exports: list[ExportConfig] = field(default_factory=list)
    source: Path | None = None  # the TOML file it came from, if any
    # things allowed but probably unwise (a budget near all of the RAM), logged when the node starts
    warnings: list[str] = field(default_factory=list)

    @property
    def max_pageframes(self) -> int:
        return self.memory // PAGE_SIZE


def parse_export_spec(spec: str) -> ExportConfig:
    """NAME:KIND:SIZE[:BACKING] (the backing path may itself contain colons)."""
    parts = spec.split(":", 3)
    if len(parts) < 3 or not all(parts[:3]):
        raise ConfigError(f"invalid --export {spec!r}: expected NAME:KIND:SIZE[:BACKING], e.g. swap:swap:2G")
    name, kind, size = parts[:3]
    backing = parts[3] if len(parts) == 4 else None
    if backing == "":
        raise ConfigError(f"invalid --export {spec!r}: empty backing path")
    return ExportConfig(name, kind.lower(), _size(size, f"size of export {name!r}"),
                        command_line_path(backing) if backing is not None else None)


def command_line_path(text: str) -> Path:
    """A path given on the command line: relative to the working directory, made absolute
    now so that the banner, /stats and the logs say which file it is."""
    return Path(os.path.abspath(Path(text).expanduser()))


def file_path(text: str, base: Path) -> Path:
    """A path written in a config file: relative to the file's directory `base`."""
    return base / Path(text).expanduser()


def _file_address(address, base: Path):
    """A listen address from a config file: a relative unix: socket path is the file's, too."""
    if isinstance(address, str) and address.startswith("unix:") and len(address) > 5:
        return f"unix:{file_path(address[5:], base)}"
    return address


def load_file(path: str | os.PathLike) -> dict:
    """The [node] table of a TOML file ({} if it has none); other tables are ignored."""
    path = Path(path)
    doc = read_toml(path)
    node = doc.get("node", {})
    if not isinstance(node, dict):
        raise ConfigError(f"config file {path}: 'node' must be a table ([node])")
    unknown = sorted(set(node) - set(_NODE_KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} in [node] "
                          f"(known: {', '.join(_NODE_KEYS)})")
    return node


def _file_exports(node: dict, base: Path, path: Path) -> list[ExportConfig]:
    tables = node.get("export", [])
    if isinstance(tables, dict):
        tables = [tables]
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"config file {path}: exports must be [[node.export]] tables")
    out = []
    for i, t in enumerate(tables, 1):
        where = f"config file {path}: [[node.export]] #{i}"
        unknown = sorted(set(t) - set(_EXPORT_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_EXPORT_KEYS)})")
        for key in ("name", "kind", "size"):
            if key not in t:
                raise ConfigError(f"{where}: missing {key!r}")
        name, kind, backing = t["name"], t["kind"], t.get("backing")
        if not isinstance(name, str) or not isinstance(kind, str):
            raise ConfigError(f"{where}: name and kind must be strings")
        if backing is not None and (not isinstance(backing, str) or not backing):
            raise ConfigError(f"{where}: backing must be a non-empty path string")
        bpath = None if backing is None else file_path(backing, base)
        out.append(ExportConfig(name, kind.lower(), _size(t["size"], f"size of export {name!r}"), bpath))
    return out


def build(
    config_file: str | os.PathLike | None = None,
    *,
    memory=None,
    compressor: str | None = None,
    allocator: str | None = None,
    listen: list[str] | None = None,
    exports: list[str] | None = None,
    metrics: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    recompress_codec: str | None = None,
    recompress_cpu=None,
    recompress_groups: bool | None = None,
    dedup: bool | None = None,
) -> NodeConfig:
    """The defaults, overridden by the file, overridden by flags; validated."""
    node: dict = {}
    src = None
    file_exports: list[ExportConfig] = []
    base = None  # the config file's directory
    if config_file is not None:
        src = Path(config_file)
        node = load_file(src)
        base = src.resolve().parent
        file_exports = _file_exports(node, base, src)

    def pick(flag, key):
        return flag if flag is not None else node.get(key)

    mem = pick(memory, "memory")
    mem = default_memory() if mem is None else _size(mem, "memory")
    cfg = NodeConfig(memory=mem, source=src)

    comp = pick(compressor, "compressor")
    if comp is not None:
        if not isinstance(comp, str):
            raise ConfigError(f"invalid compressor {comp!r}: expected a name")
        cfg.compressor = comp.lower()

    alloc = pick(allocator, "allocator")
    if alloc is not None:
        if not isinstance(alloc, str):
            raise ConfigError(f"invalid allocator {alloc!r}: expected a name")
        cfg.allocator = alloc.lower()

    lst = listen if listen else node.get("listen")
    if lst is not None:
        if isinstance(lst, str):
            lst = [lst]
        if not isinstance(lst, list) or not all(isinstance(a, str) for a in lst):
            raise ConfigError("invalid listen: expected a list of addresses like \"127.0.0.1:10809\"")
        cfg.listen = list(lst) if listen else [_file_address(a, base) for a in lst]

    met = pick(metrics, "metrics")
    if met is not None:
        if not isinstance(met, str):
            raise ConfigError(f"invalid metrics address {met!r}: expected HOST:PORT or \"off\"")
        cfg.metrics = None if met.strip().lower() in ("off", "none", "") else met

    lvl = pick(log_level, "log_level")
    if lvl is not None:
        if not isinstance(lvl, str):
            raise ConfigError(f"invalid log level {lvl!r}")
        cfg.log_level = lvl.lower()

    fmt = pick(log_format, "log_format")
    if fmt is not None:
        if not isinstance(fmt, str):
            raise ConfigError(f"invalid log format {fmt!r}")
        cfg.log_format = fmt.lower()

    rc = pick(recompress_codec, "recompress_codec")
    if rc is not None:
        if not isinstance(rc, str):
            raise ConfigError(f"invalid recompress codec {rc!r}: expected a name")
        cfg.recompress_codec = rc.lower()
    share = pick(recompress_cpu, "recompress_cpu")
    if share is not None:
        try:
            cfg.recompress_cpu = float(share)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid recompress_cpu {share!r}: expected a fraction of a CPU, "
                              "like 0.05") from None
    rg = pick(recompress_groups, "recompress_groups")
    if rg is not None:
        if not isinstance(rg, bool):
            raise ConfigError(f"invalid recompress_groups {rg!r}: expected true or false")
        cfg.recompress_groups = rg
    dd = pick(dedup, "dedup")
    if dd is not None:
        if not isinstance(dd, bool):
            raise ConfigError(f"invalid dedup {dd!r}: expected true or false")
        cfg.dedup = dd

    if exports:
        cfg.exports = [parse_export_spec(s) for s in exports]
    elif file_exports:
        cfg.exports = file_exports
    else:
        cfg.exports = [ExportConfig("swap", "swap", 2 * cfg.memory)]

    validate(cfg)
    try:
        warning = hostmem.check_budget(cfg.memory)
    except ValueError as e:
        raise ConfigError(f"{e} (lower --memory, or memory in [node])") from None
    if warning is not None:
        cfg.warnings.append(warning)
    return cfg


def validate(cfg: NodeConfig) -> None:
    """Raise ConfigError (one line) for the first mistake found."""
    if cfg.memory % PAGE_SIZE or cfg.memory <= 0:
        raise ConfigError(f"memory {cfg.memory} is not a positive multiple of {PAGE_SIZE} bytes")
    if cfg.memory // PAGE_SIZE > MAX_FRAMES:
        raise ConfigError(f"memory {format_size(cfg.memory)} is more than one node can hold "
                          f"(at most {format_size(MAX_FRAMES * PAGE_SIZE)})")
    if cfg.compressor not in compress.NAMES:
        raise ConfigError(f"unknown compressor {cfg.compressor!r}; choose one of: {', '.join(compress.NAMES)}")
    if cfg.allocator not in ALLOCATORS:
        raise ConfigError(f"unknown allocator {cfg.allocator!r}; choose one of: {', '.join(ALLOCATORS)}")
    try:
        compress.get_codec(cfg.compressor)
    except ValueError as e:  # a known compressor whose optional library is missing
        raise ConfigError(str(e)) from None
    if cfg.recompress_codec not in compress.NAMES:
        raise ConfigError(f"unknown recompress codec {cfg.recompress_codec!r}; "
                          f"choose one of: {', '.join(compress.NAMES)}")
    try:
        compress.get_codec(cfg.recompress_codec)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not 0 <= cfg.recompress_cpu <= 1 or cfg.recompress_cpu != cfg.recompress_cpu:
        raise ConfigError(f"recompress_cpu {cfg.recompress_cpu} is not a fraction of a CPU between 0 and 1")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {cfg.log_level!r}; choose one of: {', '.join(LOG_LEVELS)}")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"unknown log format {cfg.log_format!r}; choose one of: {', '.join(LOG_FORMATS)}")
    if not cfg.listen:
        raise ConfigError("nothing to listen on: give at least one --listen address")
    for a in cfg.listen:
        check_address(a)
    if len(set(cfg.listen)) != len(cfg.listen):
        raise ConfigError("the same listen address is given twice")
    if cfg.metrics is not None:
        check_address(cfg.metrics, "metrics address")
    if not cfg.exports:
        raise ConfigError("no exports: give at least one --export NAME:KIND:SIZE[:BACKING]")
    seen = set()
    for e in cfg.exports:
        validate_export(e)
        if e.name in seen:
            raise ConfigError(f"duplicate export name {e.name!r}")
        seen.add(e.name)
    if sum(e.kind == "cache" for e in cfg.exports) > MAX_CACHE_EXPORTS:
        raise ConfigError(f"too many cache exports: at most {MAX_CACHE_EXPORTS} (one tmem pool each)")
    backings = [e.backing.resolve() for e in cfg.exports if e.backing is not None]
    if len(set(backings)) != len(backings):
        raise ConfigError("two exports use the same backing file")


def validate_export(e: ExportConfig) -> None:
    if not e.name or "\0" in e.name or len(e.name.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"invalid export name {e.name!r}: 1 to {MAX_NAME_BYTES} bytes, no NUL")
    if e.kind not in KINDS:
        raise ConfigError(f"export {e.name!r}: unknown kind {e.kind!r}; choose swap or cache")
    if e.size <= 0 or e.size % PAGE_SIZE:
        raise ConfigError(f"export {e.name!r}: size {e.size} is not a positive multiple of {PAGE_SIZE}")
    if e.size > MAX_EXPORT_SIZE:
        raise ConfigError(f"export {e.name!r}: size {format_size(e.size)} is more than an export can address "
                          f"(at most {format_size(MAX_EXPORT_SIZE)})")
    if e.kind == "cache" and e.backing is None:
        raise ConfigError(f"export {e.name!r}: a cache export needs a backing file (NAME:cache:SIZE:PATH)")
    if e.backing is not None:
        check_backing(e.name, e.backing)


def check_backing(name: str, path: Path) -> None:
    """The backing file must be a readable, writable regular file, or creatable."""
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"export {name!r}: backing file {path} is a directory")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"export {name!r}: backing file {path} is not readable and writable")
        return
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"export {name!r}: backing file {path} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"export {name!r}: backing file {path} cannot be created: {parent} is not writable")
