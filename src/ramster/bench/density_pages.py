"""The images `ramster bench density` stores: held-out corpus pages, forked workers' memory, a guest's swap.

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

A guest's swap traffic. The guest of `ramster bench guest` (a Linux kernel
under QEMU/TCG, its verifying memory hog several times larger than its
memory) boots once, swapping on a sparse raw file through QEMU's file driver,
and runs the hog to completion. What the guest kernel wrote to swap is then
the file's data extents (SEEK_DATA / SEEK_HOLE), read as whole 4 KiB pages:
each slot as last written, in slot order. Page 0 is the swap header mkswap
wrote, not traffic, and is left out. The swap file is sparse, so a slot the
kernel never wrote is a hole and is not a page of the image.
"""
from __future__ import annotations

import collections
import os
import struct
import subprocess
import sys
from pathlib import Path

from ..compress import get_codec
from ..guest import initramfs, tools, vm
from ..units import PAGE_SIZE
from . import common, synthetic
from .corpus import CorpusFile
from .guest import DEFAULT_SIZE as SWAP_SIZE, DEFAULT_TIMEOUT as GUEST_TIMEOUT, FileTarget

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


def data_extents(path: Path):
    """(start, end) byte ranges of a sparse file's data, widened to whole pages, in file order."""
    with open(path, "rb") as f:
        fd, size = f.fileno(), os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                return
            end = os.lseek(fd, start, os.SEEK_HOLE)
            start -= start % PAGE_SIZE
            end = min(-(-end // PAGE_SIZE) * PAGE_SIZE, size)
            yield start, end
            pos = end


def written_pages(path: Path, limit: int) -> list[bytes]:
    """At most `limit` pages of a swap file's data, lowest slots first, page 0 (the swap header) left out."""
    pages: list[bytes] = []
    with open(path, "rb") as f:
        for start, end in data_extents(path):
            start = max(start, PAGE_SIZE)
            f.seek(start)
            while start < end and len(pages) < limit:
                page = f.read(PAGE_SIZE)
                if len(page) < PAGE_SIZE:  # a file that ends mid-page: no whole slot there
                    break
                pages.append(page)
                start += PAGE_SIZE
            if len(pages) >= limit:
                break
    return pages


def guest_unavailable() -> str | None:
    """Why the guest cannot boot here (a tool, a kernel, busybox-static missing), or None."""
    missing = tools.check_all()
    return "; ".join(str(m) for m in missing) or None


def guest_swap_image(size: int, path: Path, cpu: int, work: Path, timeout: float = GUEST_TIMEOUT) -> dict:
    """Up to `size` bytes of what a guest's kernel wrote to swap while its memory hog ran, written to `path`.

    QEMU runs pinned to `cpu`; `work` holds the initramfs, the console and the swap file until the
    pages are read. RuntimeError if the guest does not pass (the hog's verdict and the console's tail)."""
    kernel = tools.find_kernel()
    initrd = initramfs.build(kernel, work / "initramfs.gz")
    swap = FileTarget(work, None, {"qemu": cpu}, SWAP_SIZE)
    swap.start()
    try:
        g = vm.run(kernel, initrd, swap.disk(), work / "guest.console", timeout, prefix=tuple(common.pin(cpu)))
        if not g.passed:
            raise RuntimeError(f"the guest did not pass its memory hog: {g.summary()}")
        written = sum(end - max(start, PAGE_SIZE) for start, end in data_extents(swap.path) if end > PAGE_SIZE)
        pages = written_pages(swap.path, size // PAGE_SIZE)
    finally:
        swap.stop()
    if not pages:
        raise RuntimeError(f"the guest's memory hog passed without writing to swap: {g.summary()}")
    path.write_bytes(b"".join(pages))
    return {"kind": "a Linux guest's swap traffic", "kernel": kernel.version, "guest_memory_mib": vm.GUEST_MEMORY_MIB,
            "hog_mib": vm.HOG_MIB, "seed": vm.SEED, "swap_written_bytes": written, "hog": g.hog, "vmstat": g.vmstat,
            "guest_wall_seconds": round(g.wall_seconds, 1),
            "sources": [f"the swap disk of a Linux guest ({kernel.version}, {vm.GUEST_MEMORY_MIB} MiB, QEMU TCG) "
                        f"after its {vm.HOG_MIB} MiB memory hog (seed {vm.SEED}) passed: {swap.describe()}; its data "
                        f"extents from page 1 on, lowest slots first ({written >> 20} MiB written in all)"],
            **_stats(pages)}
