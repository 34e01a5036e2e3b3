"""`ramster stats` against a real node: zramctl's columns and flags, pipes, terminals, --watch."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from support import NodeProcess, need
from pages import image

from ramster.cli.stats_columns import COLUMNS, ZRAMCTL_COLUMNS

pytestmark = pytest.mark.interop

PAGE = 4096
MiB = 1 << 20
RAMSTER = [sys.executable, "-m", "ramster.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node holding data: 12 MiB of pages copied into a 16 MiB swap export with a backing
    file and 4 MiB of memory (so pages were written back), a cache export read once."""
    need("nbdcopy")
    tmp = tmp_path_factory.mktemp("stats")
    (tmp / "disk.img").write_bytes(image(4 * MiB, which=1))
    src = tmp / "src.img"
    src.write_bytes(image(12 * MiB, which=2) + bytes(4 * MiB))
    n = NodeProcess(tmp, "--memory", "4M", "--export", f"swap:swap:16M:{tmp}/swap.img",
                    "--export", f"disk:cache:4M:{tmp}/disk.img")
    try:
        for cmd in (["nbdcopy", str(src), n.uri("swap")], ["nbdcopy", n.uri("disk"), "null:"],
                    ["nbdcopy", str(tmp / "disk.img"), n.uri("disk")]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
        yield n
    finally:
        assert n.stop() == 0, n.stderr()
    assert "Traceback" not in n.stderr()


def stats(node, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*RAMSTER, "stats", "--url", node.url, *args], capture_output=True, text=True,
                          timeout=60, **kw)


def expected(doc: dict, export: str) -> dict[str, int]:
    """What each zramctl column must say, from the seed's counters (the help's formulas)."""
    c = doc["counters"]
    e = doc["exports"][export]
    k = {"swap": "pers", "cache": "eph"}[e["kind"]]
    huge = c["zcache.huge_pages"] if k == "pers" else 0
    huge_max = c["zcache.huge_pages_max"] if k == "pers" else 0
    return {
        "DISKSIZE": e["size"],
        "DATA": (c[f"zcache.{k}_zpages"] + huge) * PAGE,
        "COMPR": c[f"zcache.{k}_zbytes"] + huge * PAGE,
        "ZERO-PAGES": c[f"zcache.{k}_zpages"] - c[f"zbud.{k}_zpages"],
        "TOTAL": (c[f"zcache.{k}_pageframes"] + huge) * PAGE,
        "MEM-LIMIT": 4 * MiB,
        "MEM-USED": (c[f"zcache.{k}_pageframes_max"] + huge_max) * PAGE,
        "MIGRATED": 0,
        "STREAMS": 1,
        "WRITTEN-BACK": e["counters"].get("written_back", 0),
        "BACKING-READS": e["counters"]["backing_reads"],
        "BACKING-WRITES": e["counters"]["backing_writes"],
    }


def test_columns_are_the_counters_the_help_names(node):
    cols = ["NAME", *expected(node.stats(), "swap")]
    r = stats(node, "-b", "--raw", "-n", "-o", ",".join(c.lower() for c in cols))
    assert r.returncode == 0, r.stderr
    doc = node.stats()  # the node is idle: the same numbers
    got = {line.split()[0]: dict(zip(cols[1:], map(int, line.split()[1:]))) for line in r.stdout.splitlines()}
    assert set(got) == {"swap", "disk", "(node)"}
    for name in ("swap", "disk"):
        assert got[name] == expected(doc, name), name
    swap, disk = got["swap"], got["disk"]
    # what the copy left: pages written back to the file, and memory at its budget
    assert swap["WRITTEN-BACK"] > 0 and swap["TOTAL"] <= 4 * MiB and swap["DATA"] > swap["TOTAL"]
    # the cache export read all 1024 pages from its file once, and wrote them through once
    # (nbdcopy sends the all-zero pages as zeroing requests: holes punched, no pages written)
    data = (node.dir / "disk.img").read_bytes()
    nonzero = sum(1 for i in range(0, len(data), PAGE) if data[i:i + PAGE].count(0) != PAGE)
    assert disk["BACKING-READS"] == 1024 and disk["BACKING-WRITES"] == nonzero
    assert got["(node)"]["DISKSIZE"] == 20 * MiB
    assert got["(node)"]["DATA"] == swap["DATA"] + disk["DATA"]


def test_human_sizes_and_headings_as_zramctl(node):
    r = stats(node, "-o", "name,disksize,mem-limit,algorithm,mountpoint")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DISKSIZE", "MEM-LIMIT", "ALGORITHM", "MOUNTPOINT"]
    assert lines[1].split() == ["swap", "16M", "4M", "lz4", f"nbd+unix:///swap?socket={node.sock}"]
    # right-aligned sizes under right-aligned headings, as zramctl prints them
    assert lines[0].index("DISKSIZE") + len("DISKSIZE") == lines[1].index("16M") + len("16M")


def test_output_flags(node):
    r = stats(node, "--output-all", "-b")
    assert r.returncode == 0, r.stderr
    head = r.stdout.splitlines()[0].split()
    assert head[:len(ZRAMCTL_COLUMNS)] == list(ZRAMCTL_COLUMNS) and set(head) == set(COLUMNS)
    r = stats(node, "-n", "-o", "name")
    assert r.stdout.split() == ["swap", "disk", "(node)"]
    r = stats(node, "-o", "+idle")
    assert r.stdout.splitlines()[0].split()[-1] == "IDLE"
    r = stats(node, "-o", "name,bogus")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown column: BOGUS" in r.stderr
    r = stats(node, "--raw", "-o", "name,kind")
    assert r.stdout.splitlines() == ["NAME KIND", "swap swap", "disk cache", "(node) "]


def read_lines(proc: subprocess.Popen, want, deadline: float) -> list[str]:
    """Lines from the child's stdout until want(lines) holds; fails at the deadline."""
    lines: list[str] = []
    buf = b""
    fd = proc.stdout.fileno()
    while not want(lines):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {lines!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stats exited: {lines!r} {proc.stderr.read()!r}"
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += [ln.decode() for ln in done]
    return lines


def test_watch_json_into_a_pipe_is_ndjson(node):
    proc = subprocess.Popen([*RAMSTER, "stats", "--url", node.url, "--watch", "--json", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = read_lines(proc, lambda ls: len(ls) >= 3, time.monotonic() + 30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    docs = [json.loads(ln) for ln in lines]  # each refresh: one whole document on one line
    assert all(set(d) >= {"node", "counters", "exports"} for d in docs)
    assert docs[0]["node"]["uptime_seconds"] < docs[2]["node"]["uptime_seconds"]


def test_watch_table_into_a_pipe_is_plain_and_whole(node):
    proc = subprocess.Popen([*RAMSTER, "stats", "--url", node.url, "--watch", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = read_lines(proc, lambda ls: sum(ln.startswith("NAME") for ln in ls) >= 3, time.monotonic() + 30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "\n".join(lines)
    assert "\x1b" not in text  # no styling, no cursor movement
    assert f"nbd+unix:///swap?socket={node.sock}" in text  # nothing cut, however long
    proc = subprocess.Popen([*RAMSTER, "stats", "--url", node.url, "--watch", "--summary", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = read_lines(proc, lambda ls: sum("ramster node" in ln for ln in ls) >= 2, time.monotonic() + 30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "\n".join(lines)
    assert "\x1b" not in text and "…" not in text and "original data" in text


def on_terminal(node, *args, columns: int = 80) -> str:
    """The output of `ramster stats ARGS` on a pseudo-terminal `columns` wide, escapes removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([*RAMSTER, "stats", "--url", node.url, *args], stdin=slave, stdout=slave,
                            stderr=slave, env={**env, "TERM": "xterm"}, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while True:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no end of output: {out!r}"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0, out
    return ANSI.sub("", out.decode().replace("\r\n", "\n"))


def test_narrow_terminal_drops_columns_and_never_cuts_cells(node):
    text = on_terminal(node, columns=80)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert all(len(ln) <= 80 for ln in lines), lines
    head = lines[0].split()
    assert head[:2] == ["NAME", "KIND"] and {"DATA", "COMPR", "TOTAL"} <= set(head)
    assert "MOUNTPOINT" not in head  # the first optional column to go
    assert [ln.split()[0] for ln in lines[1:]] == ["swap", "disk", "(node)"]
    assert all(len(ln.split()) == len(head) - (ln.startswith("(node)") and "KIND" in head) for ln in lines[1:])
    # columns asked for are all printed: the terminal wraps the line, the cell stays whole
    text = on_terminal(node, "-o", "name,mountpoint,data", columns=40)
    assert f"nbd+unix:///swap?socket={node.sock}" in text.replace("\n", "")


def test_summary_on_a_narrow_terminal_folds_rather_than_cuts(node):
    text = on_terminal(node, "--summary", columns=80)
    assert "…" not in text
    for word in ("original data", "memory used", "written back", "exports", "swap", "disk"):
        assert word in text
