"""`ramster stats`' table (cli/stats_columns.py): sizes as zramctl prints them, columns, fitting."""
import pytest

from ramster.cli.stats_columns import COLUMNS, DEFAULT_COLUMNS, ZRAMCTL_COLUMNS, human, parse_columns, rows, table

# (bytes, what zramctl printed as DISKSIZE for a zram device of that size, util-linux 2.38.1)
ZRAMCTL_SIZES = [
    (0, "0B"), (1023, "1023B"), (4096, "4K"), (61440, "60K"), (1048576, "1M"), (8155136, "7.8M"),
    (104857600, "100M"), (1048571904, "1000M"), (1073741824, "1G"), (1126170624, "1G"),
    (1610612736, "1.5G"), (2040107008, "1.9G"), (2147479552, "2G"), (1020051456, "972.8M"),
    (1099511627776, "1T"),
]


@pytest.mark.parametrize("n,want", ZRAMCTL_SIZES)
def test_sizes_read_as_zramctl_prints_them(n, want):
    assert human(n) == want


def doc(exports=("swap",), peers=()):
    kinds = {"swap": "swap", "small": "swap", "disk": "cache"}
    return {
        "node": {"compressor": "lz4", "listen": ["unix:/run/r.sock"]},
        "counters": {
            "zcache.pers_zpages": 10, "zbud.pers_zpages": 7, "zcache.pers_zbytes": 9000, "zcache.huge_pages": 2,
            "zcache.pers_pageframes": 4, "zcache.pers_pageframes_max": 6, "zcache.huge_pages_max": 3,
            "zcache.eph_zpages": 5, "zbud.eph_zpages": 5, "zcache.eph_zbytes": 5000, "zcache.eph_pageframes": 3,
            "zcache.eph_pageframes_max": 3, "zcache.max_pageframes": 256, "ramster.remote_pers_pages": 4,
            "zcache.idle_pages": 1,
        },
        "exports": {name: {"kind": kinds[name], "size": 1 << 24,
                           "counters": {"written_back": 3, "backing_reads": 2, "backing_writes": 1}}
                    for name in exports},
        "peers": list(peers),
    }


def test_a_swap_export_row_is_the_persistent_kind():
    (row,) = rows(doc())
    assert row["DATA"] == (10 + 2) * 4096 and row["COMPR"] == 9000 + 2 * 4096
    assert row["ZERO-PAGES"] == 3 and row["TOTAL"] == (4 + 2) * 4096 and row["MEM-USED"] == (6 + 3) * 4096
    assert row["MEM-LIMIT"] == 1 << 20 and row["MIGRATED"] == 0 and row["STREAMS"] == 1
    assert row["MOUNTPOINT"] == "nbd+unix:///swap?socket=/run/r.sock" and row["PEERS"] == "-"
    assert (row["WRITTEN-BACK"], row["BACKING-READS"], row["BACKING-WRITES"], row["REMOTE"]) == (3, 2, 1, 4)


def test_several_exports_add_the_node_row():
    r = rows(doc(("swap", "disk"), peers=[{"connected": True}, {"connected": False}]))
    assert [x["NAME"] for x in r] == ["swap", "disk", "(node)"]
    swap, disk, node = r
    assert disk["DATA"] == 5 * 4096 and disk["TOTAL"] == 3 * 4096 and disk["REMOTE"] == 0
    assert node["DATA"] == swap["DATA"] + disk["DATA"] and node["TOTAL"] == swap["TOTAL"] + disk["TOTAL"]
    assert node["DISKSIZE"] == 2 << 24 and node["BACKING-READS"] == 4 and swap["PEERS"] == "1/2"


def test_parse_columns():
    assert parse_columns(None, False) == list(DEFAULT_COLUMNS)
    assert parse_columns(None, True)[:len(ZRAMCTL_COLUMNS)] == list(ZRAMCTL_COLUMNS)
    assert sorted(parse_columns(None, True)) == sorted(COLUMNS)
    assert parse_columns("name, Data ,compr", False) == ["NAME", "DATA", "COMPR"]
    assert parse_columns("+idle,data", False) == [*DEFAULT_COLUMNS, "IDLE"]
    with pytest.raises(ValueError, match="unknown column: NOPE"):
        parse_columns("name,nope", False)


def test_table_layout_raw_bytes_and_noheadings():
    d = doc(("swap", "disk"))
    text = table(d, ["NAME", "DISKSIZE", "ALGORITHM"])
    assert text.splitlines() == ["NAME   DISKSIZE ALGORITHM", "swap        16M lz4", "disk        16M lz4",
                                 "(node)      32M lz4"]
    assert table(d, ["NAME", "DISKSIZE"], in_bytes=True, headings=False, raw=True).splitlines() == [
        "swap 16777216", "disk 16777216", "(node) 33554432"]


def test_fitting_drops_optional_columns_and_never_cuts():
    d = doc(("swap", "disk"))
    full = table(d, list(DEFAULT_COLUMNS))
    assert max(map(len, full.splitlines())) > 80
    fitted = table(d, list(DEFAULT_COLUMNS), width=80, fit=True)
    assert max(map(len, fitted.splitlines())) <= 80
    head = fitted.splitlines()[0].split()
    assert "MOUNTPOINT" not in head and head[0] == "NAME" and {"DATA", "COMPR", "TOTAL"} <= set(head)
    # too narrow even for the columns that stay: they are all printed, whole
    tiny = table(d, list(DEFAULT_COLUMNS), width=10, fit=True)
    assert [ln.split()[0] for ln in tiny.splitlines()] == ["NAME", "swap", "disk", "(node)"]
    assert tiny.splitlines()[0].split() == ["NAME", "DISKSIZE", "DATA", "COMPR", "TOTAL"]
