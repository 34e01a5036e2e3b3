"""`ramster stats`' table: zramctl's columns, one row per export, filled from /stats.

A zram device owns its memory; a ramster node has one budget of page frames
shared by all its exports, split only by the seed's two pool kinds: every
swap export stores its pages in frontswap's one persistent pool, every cache
export in an ephemeral (cleancache) pool. So an export's memory columns are
the figures of the kind its pages live in, computed from the seed's counters:

    column      zram (zramctl)                  ramster, for the export's kind K (eph|pers)
    DISKSIZE    disksize                        the export's size
    DATA        orig_data_size                  (zcache.K_zpages [+ zcache.huge_pages]) x 4096
    COMPR       compr_data_size                 zcache.K_zbytes [+ zcache.huge_pages x 4096]
    ALGORITHM   comp_algorithm                  the node's compressor
    STREAMS     max_comp_streams                1: a node compresses on one thread
    ZERO-PAGES  same_pages                      zcache.K_zpages - zbud.K_zpages [- dense.cold_pages]
                                                (zero- and same-filled pages, which take no memory)
    TOTAL       mem_used_total                  (zcache.K_pageframes [+ huge_pages]) x 4096
    MEM-LIMIT   mem_limit                       zcache.max_pageframes x 4096 (the node's budget)
    MEM-USED    mem_used_max                    (zcache.K_pageframes_max [+ huge_pages_max]) x 4096
    MIGRATED    pages_compacted                 dense.objects_moved (zbud never moves a page: 0)
    MOUNTPOINT  where it is mounted             the NBD URI clients reach the export at

The bracketed huge pages (stored raw, a frame each) are persistent only. With
two exports of one kind, both rows show that kind's figures, and a last row,
"(node)", shows the whole node; it is printed whenever there is more than one
export. ramster adds columns of its own: KIND, PEERS (connected/known), REMOTE
(pages of the kind on peers), WRITTEN-BACK (pages moved from memory to the
export's backing file), BACKING-READS and BACKING-WRITES (pages the export
read from and wrote to its backing file itself), IDLE (pages not used since
the last idle mark, the node's).

Cells are never cut: on a terminal too narrow for the default columns the
optional ones are left out, last first; columns asked for with -o are all
printed and the terminal wraps the line.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..units import PAGE_SIZE, format_address, parse_address

TEXT, SIZE, NUMBER = "text", "size", "number"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # TEXT (left-aligned), SIZE (bytes; human-readable unless -b), NUMBER
    help: str


COLUMNS = {c.name: c for c in (
    Column("NAME", TEXT, "export name"),
    Column("DISKSIZE", SIZE, "the export's size"),
    Column("DATA", SIZE, "uncompressed size of the stored pages (of the export's kind)"),
    Column("COMPR", SIZE, "their compressed size (huge pages at 4096 bytes each)"),
    Column("ALGORITHM", TEXT, "the node's compression algorithm"),
    Column("STREAMS", NUMBER, "concurrent compressions: 1"),
    Column("ZERO-PAGES", NUMBER, "zero- and same-filled pages, which take no memory"),
    Column("TOTAL", SIZE, "page frames holding the pages, zbud's packing included"),
    Column("MEM-LIMIT", SIZE, "the node's memory budget"),
    Column("MEM-USED", SIZE, "the most page frames held at once (zram's mem_used_max)"),
    Column("MIGRATED", SIZE, "pages moved by compaction (the dense allocator; zbud never compacts, 0)"),
    Column("MOUNTPOINT", TEXT, "the NBD URI of the export"),
    Column("KIND", TEXT, "swap (persistent pool) or cache (ephemeral pool)"),
    Column("PEERS", TEXT, "RAMster peers connected/known"),
    Column("REMOTE", NUMBER, "pages of the export's pool kind held by peers"),
    Column("WRITTEN-BACK", NUMBER, "pages moved from memory to the backing file"),
    Column("BACKING-READS", NUMBER, "pages the export read from its backing file"),
    Column("BACKING-WRITES", NUMBER, "pages the export wrote to its backing file"),
    Column("IDLE", NUMBER, "pages not used since the last idle mark (the node's)"),
)}
ZRAMCTL_COLUMNS = ("NAME", "DISKSIZE", "DATA", "COMPR", "ALGORITHM", "STREAMS", "ZERO-PAGES", "TOTAL",
                   "MEM-LIMIT", "MEM-USED", "MIGRATED", "MOUNTPOINT")
# zramctl's default columns, then ramster's; on a narrow terminal the optional
# ones go, in this order, until the table fits
DEFAULT_COLUMNS = ("NAME", "KIND", "ALGORITHM", "DISKSIZE", "DATA", "COMPR", "TOTAL", "STREAMS",
                   "WRITTEN-BACK", "BACKING-READS", "BACKING-WRITES", "PEERS", "REMOTE", "MOUNTPOINT")
OPTIONAL = ("MOUNTPOINT", "STREAMS", "PEERS", "REMOTE", "BACKING-READS", "BACKING-WRITES", "KIND",
            "WRITTEN-BACK", "ALGORITHM")
NODE_ROW = "(node)"
_KIND_POOL = {"swap": "pers", "cache": "eph"}


def parse_columns(spec: str | None, output_all: bool) -> list[str]:
    """The columns of -o LIST (comma-separated; "+LIST" adds to the defaults) or --output-all.
    ValueError names an unknown column."""
    if output_all:
        return list(ZRAMCTL_COLUMNS) + [c for c in COLUMNS if c not in ZRAMCTL_COLUMNS]
    if not spec:
        return list(DEFAULT_COLUMNS)
    extra = spec.startswith("+")
    names = [n.strip().upper() for n in spec.lstrip("+").split(",") if n.strip()]
    for n in names:
        if n not in COLUMNS:
            raise ValueError(f"unknown column: {n} (known: {', '.join(COLUMNS)})")
    return list(DEFAULT_COLUMNS) + [n for n in names if n not in DEFAULT_COLUMNS] if extra else names


def _uri(node: dict, export: str) -> str:
    """The NBD URI of an export at the node's first listen address (as the node's banner says it)."""
    listen = node.get("listen") or []
    try:
        host, port, path = parse_address(listen[0], unix=True)
    except (IndexError, ValueError):
        return ""
    if path is not None:
        return f"nbd+unix:///{export}?socket={path}"
    host = {None: "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"nbd://{format_address(host, port)}/{export}"


def _memory(c: dict, pools: tuple[str, ...]) -> dict:
    """The memory columns for the pages of the pool kinds given."""
    g = lambda k: c.get(k, 0)  # noqa: E731
    huge = g("zcache.huge_pages") if "pers" in pools else 0
    huge_max = g("zcache.huge_pages_max") if "pers" in pools else 0
    zpages = sum(g(f"zcache.{k}_zpages") for k in pools)
    return {
        "DATA": (zpages + huge) * PAGE_SIZE,
        "COMPR": sum(g(f"zcache.{k}_zbytes") for k in pools) + huge * PAGE_SIZE,
        "ZERO-PAGES": zpages - sum(g(f"zbud.{k}_zpages") + g(f"dense.{k}_zpages") for k in pools)
        - (g("dense.cold_pages") if "pers" in pools else 0),
        "TOTAL": (sum(g(f"zcache.{k}_pageframes") for k in pools) + huge) * PAGE_SIZE,
        "MEM-LIMIT": g("zcache.max_pageframes") * PAGE_SIZE,
        "MEM-USED": (sum(g(f"zcache.{k}_pageframes_max") for k in pools) + huge_max) * PAGE_SIZE,
        "MIGRATED": g("dense.objects_moved"),
        "REMOTE": sum(g(f"ramster.remote_{k}_pages") for k in pools),
    }


def rows(doc: dict) -> list[dict]:
    """One dict per export (column -> int or str), and the "(node)" row when there are several."""
    node = doc.get("node", {})
    c = doc.get("counters", {})
    peers = doc.get("peers") or []
    common = {
        "ALGORITHM": str(node.get("compressor", "")),
        "STREAMS": 1,
        "PEERS": f"{sum(1 for p in peers if p.get('connected'))}/{len(peers)}" if peers else "-",
        "IDLE": c.get("zcache.idle_pages", 0),
    }
    out = []
    exports = doc.get("exports", {})
    for name, e in exports.items():
        k = e.get("counters", {})
        pool = _KIND_POOL.get(e.get("kind", ""))
        row = {"NAME": name, "KIND": e.get("kind", ""), "DISKSIZE": e.get("size", 0), **common,
               **_memory(c, (pool,) if pool else ()),
               "WRITTEN-BACK": k.get("written_back", 0), "BACKING-READS": k.get("backing_reads", 0),
               "BACKING-WRITES": k.get("backing_writes", 0), "MOUNTPOINT": _uri(node, name)}
        out.append(row)
    if len(exports) > 1:
        ks = [e.get("counters", {}) for e in exports.values()]
        listen = node.get("listen") or [""]
        out.append({"NAME": NODE_ROW, "KIND": "", "DISKSIZE": sum(e.get("size", 0) for e in exports.values()),
                    **common, **_memory(c, ("eph", "pers")),
                    **{col: sum(k.get(f, 0) for k in ks) for col, f in (
                        ("WRITTEN-BACK", "written_back"), ("BACKING-READS", "backing_reads"),
                        ("BACKING-WRITES", "backing_writes"))},
                    "MOUNTPOINT": listen[0]})
    return out


def human(n: int) -> str:
    """Bytes as zramctl prints them (util-linux size_to_human_string): 0B, 512B, 64M, 1.5G."""
    exp = 0
    for shift in range(10, 70, 10):
        if n < 1 << shift:
            break
        exp = shift
    if not exp:
        return f"{n}B"
    dec, frac = n >> exp, n & ((1 << exp) - 1)
    if frac:
        frac = ((frac * 1000 >> exp) + 50) // 100  # thousandths, rounded to one digit
        if frac == 10:
            dec, frac = dec + 1, 0
    suffix = "BKMGTPE"[exp // 10]
    return f"{dec}.{frac}{suffix}" if frac else f"{dec}{suffix}"


def cells(row: dict, columns: list[str], in_bytes: bool) -> list[str]:
    out = []
    for col in columns:
        v = row.get(col, "")
        out.append(human(v) if COLUMNS[col].kind == SIZE and not in_bytes and isinstance(v, int) else str(v))
    return out


def _width(columns: list[str], body: list[list[str]], headings: bool) -> list[int]:
    return [max([len(col) if headings else 0] + [len(r[i]) for r in body]) for i, col in enumerate(columns)]


def table(doc: dict, columns: list[str], *, in_bytes: bool = False, headings: bool = True,
          raw: bool = False, width: int | None = None, fit: bool = False) -> str:
    """The table as text, lines ending in newlines. `raw`: cells separated by one space,
    spaces inside a cell written \\x20 (libsmartcols' raw mode). `fit` and a `width`:
    leave out OPTIONAL columns, last first, until the lines fit; cells are never cut."""
    rs = rows(doc)
    columns = list(columns)
    while True:
        body = [cells(r, columns, in_bytes) for r in rs]
        widths = _width(columns, body, headings)
        if not (fit and width) or sum(widths) + len(widths) - 1 <= width:
            break
        drop = next((c for c in OPTIONAL if c in columns), None)
        if drop is None:
            break
        columns.remove(drop)
    lines = ([list(columns)] if headings else []) + body
    if raw:
        return "".join(" ".join(c.replace(" ", "\\x20") for c in line) + "\n" for line in lines)
    out = []
    for line in lines:
        parts = []
        for i, (col, cell) in enumerate(zip(columns, line)):
            last = i == len(columns) - 1
            if COLUMNS[col].kind == TEXT:
                parts.append(cell if last else cell.ljust(widths[i]))
            else:
                parts.append(cell.rjust(widths[i]))
        out.append(" ".join(parts).rstrip() + "\n")
    return "".join(out)


def columns_help() -> str:
    return "\n".join(f"  {c.name:>14}  {c.help}" for c in COLUMNS.values())
