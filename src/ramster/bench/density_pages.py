"""The two images `ramster bench density` stores: held-out corpus pages, and forked workers' memory.

Held-out pages. Each *.pages file of shared/corpus is 4096 pages dumped from
one process or from files; the first HELD_OUT_FROM of each are the ones
`ramster bench engine --pages 2048` and the other benchmarks' defaults tune
on, the pages from HELD_OUT_FROM on are set aside here. The image takes an
equal run of set-aside pages from every file, never cycling: a page repeated
by the image itself would flatter deduplication. With no corpus, the pages
come from the synthetic generator with seed 1 (the benchmarks' synthetic
corpus is seed 0).

Forked workers. Duplicate pages in real memory come from several processes
of one program: a prefork server, multiprocessing's workers, a zygote. A
Python parent imports some of the standard library and builds a shared
table, then forks WORKERS children; each builds data of its own (seeded by
its number) and reports ready on a pipe. Every child's private writable
memory (heap and anonymous mappings) is then read as it is: pagemap says
which pages are present (bit 63, readable without root), /proc/PID/mem
gives their bytes. A page the children never wrote is identical in all of
them (the same address layout, inherited by fork), a page one wrote differs;
that mix, not a made-up duplicate share, is what dedup meets.
"""
from __future__ import annotations

import collections
import os
import struct
import subprocess
import sys
from pathlib import Path

from ..compress import get_codec
from ..units import PAGE_SIZE
from . import common, synthetic
from .corpus import CorpusFile

HELD_OUT_FROM = 2048  # pages of each corpus file before this one are not used here

# The forked program: argv[1] workers, argv[2] rows of the parent's table, argv[3] rows per worker.
WORKER_PROGRAM = r"""
import collections, decimal, email.parser, http.client, json, os, random, sys, xml.dom.minidom
workers, rows, own = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
table = [{"id": i, "name": "user%d" % i, "tags": ["a", "b", str(i % 7)], "score": i / 7} for i in range(rows)]
index = {r["name"]: r for r in table}
children = []
for k in range(workers):
    pid = os.fork()
    if pid == 0:
        rnd = random.Random(k)
        mine = [{"id": i, "v": rnd.random(), "s": "x" * rnd.randrange(64)} for i in range(own)]
        seen = collections.Counter(r["tags"][2] for r in table[: rows // 4])
        text = json.dumps(table[: rows // 10])
        sys.stdout.write("%d\n" % os.getpid())
        sys.stdout.flush()
        sys.stdin.read()
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""
ROW_BYTES = 600  # rather more than one row of the table costs in a worker (dicts, strings, list): the cut trims the rest


def _stats(pages: list[bytes]) -> dict:
    compress = get_codec("lz4").compress
    zbytes = sum(min(len(compress(p)), PAGE_SIZE) for p in pages)
    count = collections.Counter(pages)
    same = sum(v for p, v in count.items() if p == p[:8] * (PAGE_SIZE // 8))
    dup = sum(v - 1 for p, v in count.items() if p != p[:8] * (PAGE_SIZE // 8))
    return {"pages": len(pages), "size": len(pages) * PAGE_SIZE, "lz4_ratio": len(pages) * PAGE_SIZE / max(zbytes, 1),
            "same_filled_pages": same, "duplicate_pages": dup, "distinct_pages": len(count),
            "duplicate_share": dup / max(len(pages), 1)}


def held_out_image(files: list[CorpusFile], size: int, path: Path) -> dict:
    """Up to `size` bytes of set-aside corpus pages (an equal run from each file) written to `path`."""
    want = size // PAGE_SIZE
    per_file = -(-want // len(files))
    pages: list[bytes] = []
    sources = []
    for f in files:
        if f.path is None:
            data = synthetic.image(per_file * PAGE_SIZE, seed=1)
            sources.append(f"synthetic pages, seed 1 ({per_file} pages)")
        else:
            with f.open() as src:
                src.seek(HELD_OUT_FROM * PAGE_SIZE)
                data = src.read(per_file * PAGE_SIZE)
            sources.append(f"{f.path} pages {HELD_OUT_FROM}..{HELD_OUT_FROM + len(data) // PAGE_SIZE - 1}")
        pages += [data[o:o + PAGE_SIZE] for o in range(0, len(data) // PAGE_SIZE * PAGE_SIZE, PAGE_SIZE)]
    pages = pages[:want]
    if not pages:
        raise ValueError(f"the corpus files hold no page from page {HELD_OUT_FROM} on (they are held out "
                         f"from there; give bigger files or none for synthetic pages)")
    path.write_bytes(b"".join(pages))
    return {"kind": "held-out corpus pages", "sources": sources, **_stats(pages)}


def _present_private_pages(pid: int) -> list[bytes]:
    """The present pages of a process' private writable heap and anonymous mappings."""
    pages = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap, \
            open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            perms, name = fields[1], fields[5] if len(fields) > 5 else ""
            if perms[1] != "w" or perms[3] != "p" or (name and name != "[heap]"):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            n = (hi - lo) // PAGE_SIZE
            pagemap.seek(lo // PAGE_SIZE * 8)
            entries = struct.unpack(f"<{n}Q", pagemap.read(8 * n))
            for i, e in enumerate(entries):
                if e >> 63:
                    mem.seek(lo + i * PAGE_SIZE)
                    try:
                        page = mem.read(PAGE_SIZE)
                    except OSError:  # a guard page or a mapping that went away
                        continue
                    if len(page) == PAGE_SIZE:
                        pages.append(page)
    return pages


def workers_image(workers: int, size: int, path: Path, cpu: int) -> dict:
    """The memory of `workers` forked Python workers, about `size` bytes in all, written to `path`."""
    per_worker = max(size // workers, 4 << 20)
    rows = max((per_worker - (6 << 20)) * 4 // 5 // ROW_BYTES, 1000)
    own = max(rows // 8, 100)
    cmd = common.pin(cpu) + [sys.executable, "-c", WORKER_PROGRAM, str(workers), str(rows), str(own)]
    parent = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True, preexec_fn=common._child_setup)
    try:
        pids = []
        for _ in range(workers):
            line = parent.stdout.readline()
            if not line:
                raise RuntimeError(f"the worker program exited: {parent.stderr.read().decode(errors='replace')[-300:]}")
            pids.append(int(line))
        captured = [_present_private_pages(pid) for pid in pids]
    finally:
        parent.stdin.close()
        try:
            parent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            common._kill_group(parent, 9)
            parent.wait()
        parent.stdout.close()
        parent.stderr.close()
    # an equal share of each worker, lowest addresses first, so that the share of duplicates survives the cut
    share = min([size // PAGE_SIZE // workers] + [len(c) for c in captured])
    pages = [p for c in captured for p in c[:share]]
    path.write_bytes(b"".join(pages))
    return {"kind": f"{workers} forked Python workers' memory", "workers": workers, "parent_rows": rows,
            "rows_per_worker": own,
            "sources": [f"/proc/PID/mem of {workers} children forked from one Python parent (heap and "
                        f"anonymous private writable mappings, present pages only; {os.uname().release})"],
            **_stats(pages)}
