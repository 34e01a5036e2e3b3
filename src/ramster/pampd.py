"""What a pampd means: the one int tmem keeps per page, and how zcache reads it.

tmem stores a pampd ("pool-and-memory page descriptor", the seed's name) in a
32-bit slot of its index and knows only that 0 means "no page". Every other
value is zcache's, and every page zcache holds is described by that value
alone, with no per-page Python object beside it. The 32 bits are split into
ranges, so one comparison tells the kinds apart on the hot paths:

    value                         kind          where the bytes are
    ----------------------------  ------------  ------------------------------------
    p > 0                         zbud page     zbudref n << 1 | bud: buddy `bud` of zbud
                                                frame node n (zbud.py), compressed
                                  (dense)       with allocator="dense": handle h of the
                                                dense allocator's table (dense.py), compressed
    0                             -             an empty tmem slot, never a page
    ZERO_FILLED (-1)              zero page     nowhere: the page is 4096 zero bytes
    SAME_FILLED_BASE - k          same-filled   nowhere: the k-th distinct 8-byte fill
                                                pattern, repeated (zcache's fill table)
    HUGE_BASE - f                 huge page     arena frame f, as it is (uncompressed)
    REMOTE_BASE - r               remote page   on peers: entry r of RAMster's remote
                                                table says which nodes hold a copy
    COLD_BASE - k                 cold page     member k % COLD_GROUP of cold group
                                                k // COLD_GROUP (coldlog.py): compressed
                                                with the other pages of its group
    DEDUP_BASE - d                dedup page    entry d of zcache's dedup table (dedup.py)
                                                names the zbud page every owner shares

        2**31-1 ... 1 | 0 | -1 | -2 ... -(2**24)+1 | -(2**24) ... | -(2**24)-2**30 ... | COLD_BASE ... | DEDUP_BASE ... -2**31
        zbud refs      empty zero  same-filled (k)     huge (frame f)  remote (r)           cold (k)        dedup (d)

So `p > 0` is the zbud fast path, `p > HUGE_BASE` (p < 0) a page with no frame,
`REMOTE_BASE < p <= HUGE_BASE` a huge frame, `COLD_BASE < p <= REMOTE_BASE`
a page on a peer, `DEDUP_BASE < p <= COLD_BASE` a page of a cold group (only
recompression on the dense allocator makes those) and `p <= DEDUP_BASE` a page shared through the dedup table
(only a node started with dedup has those; the remote test comes first on every
path, so a node without dedup pays nothing for the range). The ranges are wide enough for what fills them: a zbudref is below 2**31
because the arena has fewer than 2**30 frames (frames.MAX_FRAMES); the fill
table is capped at MAX_FILLS patterns (after that a same-filled page is
compressed like any other); a huge page's frame number is an arena frame, the
remote table holds fewer than MAX_REMOTE (2**29) entries, the cold groups
fewer than MAX_COLD (2**28) members and the dedup table fewer than MAX_DEDUP
(about 2**28).

Only zcache decodes pampds. tmem hands them to zcache's pamops and learns
nothing more from them than what those return (a get that cannot be served
here returns a falsy outcome and the slot stays as it is); RAMster deals in
remote table entries r and opaque pampds it got from zcache, never in ranges.
The helpers below are for paths that run per batch or per request; the
per-page paths in zcache compare with the constants inline.

A synchronous get of a remote page returns ON_PEER: an expected outcome, not
an error, and not a page (see its class).
"""
from __future__ import annotations

ZERO_FILLED = -1
SAME_FILLED_BASE = -2
HUGE_BASE = -(1 << 24)
# fill patterns stay above HUGE_BASE
MAX_FILLS = (1 << 24) - 2
# lz4, lzo, zstd and zlib all shrink a same-filled page below this, so only
# pages this short are compared with their first word repeated
SAME_FILLED_MAX_CLEN = 64
REMOTE_BASE = HUGE_BASE - (1 << 30)
MAX_REMOTE = 1 << 29
COLD_BASE = REMOTE_BASE - MAX_REMOTE
MAX_COLD = 1 << 28
COLD_SHIFT = 5  # a cold group holds at most 1 << COLD_SHIFT pages
COLD_GROUP = 1 << COLD_SHIFT
DEDUP_BASE = COLD_BASE - MAX_COLD
# tmem's slots are signed 32-bit
MAX_DEDUP = DEDUP_BASE + (1 << 31) + 1


def is_frameless(p: int) -> bool:
    """A zero or same-filled page: no frame, no zbud."""
    return HUGE_BASE < p < 0


def huge(f: int) -> int:
    """The pampd of a huge page kept in arena frame f."""
    return HUGE_BASE - f


def huge_frame(p: int) -> int:
    return HUGE_BASE - p


def is_huge(p: int) -> bool:
    return REMOTE_BASE < p <= HUGE_BASE


def remote(r: int) -> int:
    """The pampd of the page in remote table entry r."""
    if not 0 <= r < MAX_REMOTE:
        raise ValueError(f"remote table entry {r} out of range")
    return REMOTE_BASE - r


def remote_entry(p: int) -> int:
    """The remote table entry of a remote pampd."""
    return REMOTE_BASE - p


def is_remote(p: int) -> bool:
    return COLD_BASE < p <= REMOTE_BASE


def cold(g: int, m: int) -> int:
    """The pampd of member m of cold group g."""
    return COLD_BASE - (g << COLD_SHIFT | m)


def is_cold(p: int) -> bool:
    return DEDUP_BASE < p <= COLD_BASE


def dedup(d: int) -> int:
    """The pampd of the page in dedup table entry d."""
    return DEDUP_BASE - d


def dedup_entry(p: int) -> int:
    return DEDUP_BASE - p


def is_dedup(p: int) -> bool:
    return p <= DEDUP_BASE


class _OnPeer:
    """The outcome of a synchronous get of a page that lives on a peer (RAMster).

    False in a boolean test, like a miss, so a caller that only asks "did I get
    bytes?" stays on its fast path; anything that would use it as a page fails
    loudly instead of passing off something else as the page's contents."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "ON_PEER"

    def __reduce__(self):
        return "ON_PEER"


ON_PEER = _OnPeer()
