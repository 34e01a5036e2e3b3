"""Issue 8's cases, each with real node processes and a checked history.

1. zeros after the write-through failed on a full disk and the peers were killed and restarted;
2. concurrent half-page writes of pages that live on a peer while another connection keeps memory full;
3. replicas = 2, b then c paused longer than idle_timeout: no copy dropped before its replacement;
4. nodes with different compressors;
5. (impersonation: tests/unit and tests/cluster, with the node keys)
6. an outage of b while a copy is on a's swap disk: read from the disk; "lost" only when truly lost.

Plus the link itself: cut at each stage of the handshake and of the first requests.
"""
from __future__ import annotations

import random
import threading
import time

import pytest

from .cluster import Cluster, NodeDef
from .disk import SmallDisk
from .env import import_nbd
from .history import PAGE, SLOT, History, check
from .workload import Workload

pytestmark = pytest.mark.fault


@pytest.fixture
def disks():
    made: list[SmallDisk] = []
    yield made
    for d in made:
        d.close()


@pytest.fixture
def clusters(disks):
    # after `disks`, so the nodes stop (and close their backing files) before the disks unmount
    made: list[Cluster] = []
    yield made
    for c in made:
        c.stop()


def start(clusters, tmp_path, nodes: list[NodeDef], replicas: int = 1, **kw) -> Cluster:
    import_nbd()
    cl = Cluster(tmp_path, nodes, replicas=replicas, **kw)
    clusters.append(cl)
    cl.start()
    cl.wait_connected()
    return cl


def wait_for(what: str, predicate, timeout: float = 15.0, poll: float = 0.05):
    """Poll `predicate` until it returns a true value; it may return (False, why) to say what it saw."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value and not (isinstance(value, tuple) and value[0] is False):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {value!r})")
        time.sleep(poll)


def counter(node, name: str) -> int:
    return node.counters().get(name, 0)


def assert_clean(cl: Cluster, history: History, **rules) -> None:
    rep = check(history, **rules)
    assert rep.ok, rep.summary() + "\n" + rep.details(history.t0) + _events(history)
    tb = cl.tracebacks()
    assert not tb, "a node logged a traceback:\n" + "\n".join(f"{n}: {t}" for n, t in tb.items())


def _events(history: History) -> str:
    return "".join(f"\n  {t - history.t0:7.3f} s  {what}" for t, what in history.events)


def eio_pages(ops) -> set[int]:
    return {p for op in ops if op.kind == "r" and op.status == "error" and op.length == PAGE for p in op.pages}


# ---- 1 --------------------------------------------------------------------------------------------------

def test_full_disk_then_peers_killed_and_restarted_never_reads_zeros(tmp_path, clusters, disks):
    """replicas = 1, a's swap disk fills up so the write-through of remotified pages fails,
    b and c are killed -9 and restarted: every page reads as its last acknowledged write, or
    EIO where its only copies were on the dead peers; never zeros. Lost pages are counted once."""
    disk = SmallDisk(tmp_path / "disk", size="24m")
    disks.append(disk)
    npages = 4096
    cl = start(clusters, tmp_path, [NodeDef("a", 0, "4M", [f"swap:swap:{npages * 4}K:{disk.path / 'a.swap'}"]),
                                    NodeDef("b", 1, "64M", ["swap:swap:1M"]),
                                    NodeDef("c", 2, "64M", ["swap:swap:1M"])])
    a = cl["a"]
    # pages that compress: tmem takes them, so they reach peers rather than the (full) disk
    wl = Workload(a.uri("swap"), npages, seed=101, kinds=(100, 0, 0, 0))
    h = wl.history
    wl.fill(range(0, npages // 2))
    wait_for("pages moving to peers (written through)", lambda: counter(a, "ramster.remote_pers_pages") >= 256)
    h.event(f"disk full: {disk.fill() >> 10} KiB of ballast")
    t_full = time.monotonic()
    # the rest, and the first half again: write-through now fails, pages still go to peers
    wl.fill(range(npages // 2, npages), name="fill-full-disk")
    wl.fill(range(0, npages // 2), name="refill-full-disk")
    # whether a moves pages to peers while its disk refuses them is the node's choice: either way,
    # what b and c hold dies with them below, and reads must stay honest
    deadline = time.monotonic() + 5
    while counter(a, "ramster.remote_pers_pages") < 1024 and time.monotonic() < deadline:
        time.sleep(0.05)
    h.event(f"{counter(a, 'ramster.remote_pers_pages')} pages on peers; killing b and c")
    t_kill = time.monotonic()
    cl["b"].kill()
    cl["c"].kill()
    cl.start(["b", "c"])
    cl.wait_connected()  # a learns their new boot ids in the handshakes: their pages are gone
    h.event("b and c back, empty")
    first = wl.verify(name="verify-1")
    lost_after_first = counter(a, "ramster.remote_pers_pages_lost")
    second = wl.verify(name="verify-2")
    # pages whose only copies were on b and c may read EIO, and only after they died;
    # a write that found memory, peers and disk full may fail with ENOSPC
    assert_clean(cl, h, eio_ok=lambda op: op.start > t_kill, enospc_ok=lambda op: op.start > t_full)
    e1, e2 = eio_pages(first), eio_pages(second)
    assert e1 == e2, "a page that read EIO once must keep reading EIO (and one that did not, must not)"
    # a page reads EIO because its own last write failed (the export's lost pages) or because its
    # only copies died with b and c (ramster's lost pages): each counted once, in one of the two
    lost = counter(a, "ramster.remote_pers_pages_lost")
    failed = a.stats()["exports"]["swap"]["gauges"]["lost_pages"]
    assert lost == lost_after_first, f"reading lost pages again counted them again ({lost_after_first} -> {lost})"
    assert lost + failed == len(e1), (f"{len(e1)} pages read EIO, but ramster.remote_pers_pages_lost = {lost} "
                                      f"and the export's lost_pages = {failed}")


# ---- 2 --------------------------------------------------------------------------------------------------

def test_concurrent_half_page_writes_to_remote_pages_lose_neither_half(tmp_path, clusters):
    """a at 4 MiB without a disk, pages on peers; both halves of each page written at once (two
    read-modify-writes of a page fetched from a peer) while another connection keeps memory full:
    every page then holds both new halves, and no write fails while every peer is up."""
    npages, target = 4096, 2048  # pages [0, target) get the half writes, the rest is the filler's
    cl = start(clusters, tmp_path, [NodeDef("a", 0, "4M", [f"swap:swap:{npages * 4}K"]),
                                    NodeDef("b", 1, "64M", ["swap:swap:1M"]),
                                    NodeDef("c", 2, "64M", ["swap:swap:1M"])])
    a = cl["a"]
    wl = Workload(a.uri("swap"), npages, seed=202, kinds=(80, 20, 0, 0))
    h = wl.history
    wl.fill(range(0, target))
    wl.fill(range(target, npages), name="fill-2")
    wait_for("pages on peers", lambda: counter(a, "ramster.remote_pers_pages") >= target // 2)
    stop = threading.Event()

    def keep_memory_full() -> None:
        rnd = random.Random(2)
        c = wl.client("filler")
        try:
            while not stop.is_set():
                p = rnd.randrange(target, npages - 16)
                c.batch([("w", p * PAGE, wl.data(rnd, 16 * PAGE), "filler")])
        finally:
            c.close()

    filler = threading.Thread(target=keep_memory_full, daemon=True)
    filler.start()
    rnd = random.Random(3)
    c = wl.client("halves")
    try:
        for p0 in range(0, target, 8):
            reqs = []
            for p in range(p0, p0 + 8):
                reqs += [("w", p * PAGE, wl.data(rnd, SLOT), "half-pair"),
                         ("w", p * PAGE + SLOT, wl.data(rnd, SLOT), "half-pair")]
            c.batch(reqs)
    finally:
        c.close()
        stop.set()
        filler.join(20)
    wl.verify()
    assert_clean(cl, h)


@pytest.mark.parametrize("disk", [False, True], ids=["no-disk", "swap-disk"])
def test_read_while_the_same_page_is_written_sees_old_or_new(tmp_path, clusters, disk):
    """A read of a page while a write of it waits (for room, for the peer that holds it) returns
    the bytes before the write or after it: not zeros (no disk), not an older version from the
    swap disk (disk). Memory is kept full by another connection, so stores have to wait."""
    npages, target = 4096, 2048
    backing = f":{tmp_path / 'a.swap'}" if disk else ""
    cl = start(clusters, tmp_path, [NodeDef("a", 0, "4M", [f"swap:swap:{npages * 4}K{backing}"]),
                                    NodeDef("b", 1, "64M", ["swap:swap:1M"]),
                                    NodeDef("c", 2, "64M", ["swap:swap:1M"])])
    a = cl["a"]
    # pages of every kind: with a disk, the ones tmem refuses go to the file, so the file holds
    # older versions of pages whose newer version is in memory or on a peer
    wl = Workload(a.uri("swap"), npages, seed=250 + disk)
    h = wl.history
    wl.fill()
    wait_for("pages on peers", lambda: counter(a, "ramster.remote_pers_pages") >= 512)
    stop = threading.Event()

    def keep_memory_full() -> None:
        rnd = random.Random(5)
        c = wl.client("filler")
        try:
            while not stop.is_set():
                p = rnd.randrange(target, npages - 16)
                c.batch([("w", p * PAGE, wl.data(rnd, 16 * PAGE), "filler")])
        finally:
            c.close()

    filler = threading.Thread(target=keep_memory_full, daemon=True)
    filler.start()
    rnd = random.Random(6)
    c = wl.client("write+read")
    try:
        for p0 in [*range(0, target, 8), *range(0, target // 4, 8), *range(0, target // 4, 8)]:
            reqs = []
            for p in range(p0, p0 + 8):
                reqs += [("w", p * PAGE, wl.data(rnd, PAGE), "write"), ("r", p * PAGE, PAGE, "read")]
            c.batch(reqs)
    finally:
        c.close()
        stop.set()
        filler.join(20)
    wl.verify()
    assert_clean(cl, h)


# ---- 3 --------------------------------------------------------------------------------------------------

def test_replicas_2_pausing_b_then_c_beyond_idle_timeout_loses_no_copy(tmp_path, clusters):
    """replicas = 2: b paused past idle_timeout and resumed, then c: while c is paused every page
    reads from b (a copy is dropped only once its replacement is acknowledged, and a peer that
    comes back with the same boot keeps its copies); pages rewritten during a pause drop their old
    copies; afterwards a's idea of what b and c hold matches what they hold (no copy leaked)."""
    npages = 6000
    cl = start(clusters, tmp_path, [NodeDef("a", 0, "8M", [f"swap:swap:{npages * 4}K"]),
                                    NodeDef("b", 1, "64M", ["swap:swap:1M"]),
                                    NodeDef("c", 2, "64M", ["swap:swap:1M"])], replicas=2)
    a = cl["a"]
    wl = Workload(a.uri("swap"), npages, seed=303)
    h = wl.history
    wl.fill()
    wait_for("pages on peers", lambda: counter(a, "ramster.remote_pers_pages") >= 2000)
    for victim in ("b", "c"):
        node = cl[victim]
        node.pause()
        h.event(f"{victim} paused")
        wait_for(f"a giving up on paused {victim}", lambda: not a.peer(victim)["connected"])
        wl.verify(name=f"verify-{victim}-paused")  # every page has a copy on the other peer
        # rewriting the oldest pages (remote ones) drops their copies: the paused peer's are
        # flushed later or still counted, never forgotten while it holds them
        wl.fill(range(0, 512), name=f"rewrite-{victim}-paused")
        node.resume()
        h.event(f"{victim} resumed")
        cl.wait_connected()
        # pages placed while a peer was away have one copy until repaired: pausing the other
        # peer before that would be a second fault at once
        wait_for("every page with its two copies again", lambda: counter(a, "ramster.remote_pages_short") == 0
                 or (False, counter(a, "ramster.remote_pages_short")))
        h.event("repaired")
    wl.verify(name="verify-after")
    assert_clean(cl, h)
    assert counter(a, "ramster.remote_pers_pages_lost") == 0

    def held_matches():
        held = {p["name"]: p["pages_held"] for p in a.stats()["peers"]}
        has = {n: counter(cl[n], "ramster.foreign_pers_pages") for n in ("b", "c")}
        return held == has or (False, f"a counts on {held}, they hold {has}")

    wait_for("b and c holding exactly the copies a counts on (none leaked)", held_matches, timeout=10)


# ---- 4 --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codecs", [("zstd", "lz4"), ("lz4", "zlib")], ids=lambda c: f"a-{c[0]}-b-{c[1]}")
def test_mixed_compressors_work_or_are_refused_clearly(tmp_path, clusters, codecs):
    """a and b with different --compressor values: either they join and every page of both
    (a's pages held on b, b's own pages written back to b's disk next to a's) reads back right,
    with no zombie frame left on b; or b is refused at the handshake with a message that says why."""
    ca, cb = codecs
    # b sends nothing to a (targets), so its own pages must go to its disk when memory runs short
    cl = Cluster(tmp_path, [NodeDef("a", 0, "4M", ["swap:swap:16M"], compressor=ca),
                            NodeDef("b", 1, "6M", [f"swap:swap:8M:{tmp_path / 'b.swap'}"], compressor=cb)],
                 remotify={"targets": ["b"]})
    clusters.append(cl)
    import_nbd()
    cl.start()
    a, b = cl["a"], cl["b"]

    def refusal() -> str | None:
        return next((line for line in (a.log() + b.log()).splitlines()
                     if "refus" in line.lower() and "compressor" in line.lower()), None)

    wait_for("a and b joining, or refusing each other for their compressors",
             lambda: cl.connected() or refusal())
    if not cl.connected():
        line = refusal()
        assert ca in line and cb in line, f"the refusal should name both compressors: {line}"
        print("refused at the handshake:", line)
        return
    # pages that compress, so that tmem keeps them: a's go to b, b's own fill b's memory
    wa = Workload(a.uri("swap"), 4096, seed=404, kinds=(100, 0, 0, 0))
    wa.fill()
    wait_for("a's pages on b", lambda: counter(b, "ramster.foreign_pers_pages") >= 1024)
    # b's own writes push its LRU frames, a's foreign ones first, toward its swap disk
    wb = Workload(b.uri("swap"), 2048, seed=405, kinds=(100, 0, 0, 0))
    wb.fill()
    wb.fill(name="refill")
    wb.verify()
    wa.verify()
    assert_clean(cl, wb.history)
    assert_clean(cl, wa.history)
    wait_for("no zombie frame left on b", lambda: counter(b, "zbud.pers_zombie_count") == 0 or
             (False, counter(b, "zbud.pers_zombie_count")), timeout=5)
    written_back = b.stats()["exports"]["swap"]["counters"]["written_back"]
    print(f"joined; b holds {counter(b, 'ramster.foreign_pers_pages')} of a's pages, wrote back {written_back}")
    assert written_back > 0, "b never ran short of memory: the test tests nothing"


# ---- 6 --------------------------------------------------------------------------------------------------

def test_outage_of_b_reads_from_the_swap_disk_and_counts_lost_only_when_lost(tmp_path, clusters):
    """replicas = 1, a's export "wb" writes remotified pages through to its swap disk, "nb" has no disk.
    While b is paused, wb reads every page (from the disk) and nothing counts as lost (unreachable
    is not lost); once b is back everything reads again. After b is killed and restarted, wb still
    reads everything; nb's pages that only b held read EIO, and each is counted lost exactly once."""
    npages = 2048
    cl = start(clusters, tmp_path, [NodeDef("a", 0, "4M", [f"wb:swap:{npages * 4}K:{tmp_path / 'a-wb.swap'}",
                                                         f"nb:swap:{npages * 4}K"]),
                                    NodeDef("b", 1, "64M", ["swap:swap:1M"]),
                                    NodeDef("c", 2, "64M", ["swap:swap:1M"])])
    a, b = cl["a"], cl["b"]
    # pages that compress, so that tmem keeps them and they move to peers (a refused one goes to the disk)
    ww = Workload(a.uri("wb"), npages, seed=601, kinds=(100, 0, 0, 0))
    wn = Workload(a.uri("nb"), npages, seed=602, kinds=(100, 0, 0, 0))
    ww.fill()
    wn.fill()
    wait_for("pages on b", lambda: a.peer("b")["pages_held"] >= 128 or
             (False, {p["name"]: p["pages_held"] for p in a.stats()["peers"]}))
    held = a.peer("b")["pages_held"]

    def event(what: str) -> None:
        ww.history.event(what)
        wn.history.event(what)

    b.pause()
    t_pause = time.monotonic()
    event(f"b paused, holding {held} pages")
    wait_for("a giving up on paused b", lambda: not a.peer("b")["connected"])
    ww.verify(name="b-paused")
    paused_nb = wn.verify(name="b-paused")
    t_resume = time.monotonic()
    assert eio_pages(paused_nb), "no page of nb was on b: the test tests nothing"
    assert counter(a, "ramster.remote_pers_pages_lost") == 0, "pages on a paused peer are unreachable, not lost"
    b.resume()
    event("b resumed")
    cl.wait_connected()
    ww.verify(name="b-back")
    wn.verify(name="b-back")
    assert counter(a, "ramster.remote_pers_pages_lost") == 0
    b.kill()
    t_kill = time.monotonic()
    event("b killed")
    cl.start(["b"])
    cl.wait_connected()  # a learns b's new boot id in the handshake: its pages there are gone
    ww.verify(name="b-restarted")
    first = wn.verify(name="b-restarted-1")
    lost_first = counter(a, "ramster.remote_pers_pages_lost")
    second = wn.verify(name="b-restarted-2")
    # wb: every page has a copy on a's disk, at all times
    assert_clean(cl, ww.history)
    # nb has no disk: while b is paused its pages there are out of reach, after b's restart gone
    assert_clean(cl, wn.history, eio_ok=lambda op: t_pause <= op.start <= t_resume or op.start >= t_kill)
    e1, e2 = eio_pages(first), eio_pages(second)
    assert e1 == e2
    lost = counter(a, "ramster.remote_pers_pages_lost")
    assert lost == lost_first, f"reading lost pages again counted them again ({lost_first} -> {lost})"
    assert lost == len(e1), f"ramster.remote_pers_pages_lost = {lost}, but {len(e1)} pages of nb read EIO"


# ---- the link, cut at each stage ---------------------------------------------------------------------

def test_link_cut_at_each_stage_reconnects_and_keeps_every_copy(tmp_path, clusters):
    """The b->a link is reset after N bytes of a new connection, for N inside the Hello, the
    handshake's proof, the first requests, in each direction: b reconnects, and since it did
    not restart, every page it holds still reads (replicas = 1, no disk: a dropped copy is EIO)."""
    npages = 2048
    cl = start(clusters, tmp_path, [NodeDef("a", 0, "4M", [f"swap:swap:{npages * 4}K"]),
                                    NodeDef("b", 1, "64M", ["swap:swap:1M"])])
    a = cl["a"]
    wl = Workload(a.uri("swap"), npages, seed=701, kinds=(100, 0, 0, 0))
    wl.fill()
    wait_for("pages on b", lambda: counter(a, "ramster.remote_pers_pages") >= 512)
    link = cl.link("a", "b")
    for i, after in enumerate((0, 1, 16, 40, 90, 150, 250, 400, 3000)):
        direction = ("c2s", "s2c")[i % 2]
        before = link.accepted
        wl.history.event(f"cut the next connection after {after} bytes {direction}")
        link.cut(after=after, direction=direction, scope="next")
        link.cut(after=0)
        wait_for("b reconnecting through the cut", lambda: link.accepted >= before + 2 and cl.connected())
        wl.verify(name=f"verify-cut-{after}")
    assert_clean(cl, wl.history)
    assert counter(a, "ramster.remote_pers_pages_lost") == 0
