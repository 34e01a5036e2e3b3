"""Test pages: real ones from shared/corpus (or $RAMSTER_CORPUS) when it is there, else pages of
ramster.bench.synthetic (seeded: the same on every run and machine, with the
corpus' mix of zero, same-filled, text, pointer-heavy, binary and random pages,
and about its lz4 ratio)."""
from __future__ import annotations

import functools
import os
import random
from pathlib import Path

from ramster.bench import synthetic
from ramster.units import PAGE_SIZE

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("RAMSTER_CORPUS") or REPO.parent / "shared" / "corpus")
# page(i), synthetic_pages() and the one corpus file the tests name (anon-python.pages) are
# pages zcache stores compressed in a zbud frame: no zero or same-filled page (kept without a
# frame) and no incompressible one (kept whole; a swap export without a disk refuses it once
# memory is full). The tests that use them count frames and hits on that.
COMPRESSIBLE_MIX = {k: v for k, v in synthetic.MIX.items() if k in ("text", "pointer", "binary")}


def corpus_files(pattern: str = "*.pages") -> list[Path]:
    return sorted(CORPUS.glob(pattern)) if CORPUS.is_dir() else []


def corpus_path(tmp: Path) -> Path:
    """A --corpus argument for the benchmarks: shared/corpus, else a file of synthetic pages in tmp."""
    if corpus_files():
        return CORPUS
    path = tmp / "synthetic.pages"
    path.write_bytes(b"".join(synthetic_pages(1024, mix=synthetic.MIX)))
    return path


def synthetic_pages(count: int, seed: int = 7, mix: dict[str, float] = COMPRESSIBLE_MIX) -> list[bytes]:
    return synthetic.PageGenerator(seed, mix).pages(count)


def image(size: int, pattern: str = "*.pages", which: int = 0) -> bytes:
    """`size` bytes of whole pages: a corpus file (chosen by `which`), else synthetic pages (seed `which`)."""
    files = corpus_files(pattern)
    if files:
        data = files[which % len(files)].read_bytes()
        return (data * (size // len(data) + 1))[:size]
    mix = synthetic.MIX if pattern == "*.pages" else COMPRESSIBLE_MIX
    return b"".join(synthetic_pages(-(-size // PAGE_SIZE), seed=which, mix=mix))[:size]


@functools.cache
def corpus_pages() -> tuple[bytes, ...]:
    """Real compressible pages (at most 2048), without zero or same-filled ones."""
    files = corpus_files()
    out = []
    if files:
        for f in files:
            data = f.read_bytes()[: 512 * PAGE_SIZE]
            out += [data[i : i + PAGE_SIZE] for i in range(0, len(data) - PAGE_SIZE + 1, PAGE_SIZE)]
    else:
        out = synthetic_pages(2048)
    return tuple(p for p in out if not _same_filled(p))


def _same_filled(p: bytes) -> bool:
    return p == p[:8] * 512


def page(i: int) -> bytes:
    pages = corpus_pages()
    return pages[i % len(pages)]


def random_page(seed: int) -> bytes:
    """Incompressible."""
    return random.Random(seed).randbytes(PAGE_SIZE)


def sized_page(seed: int, target: int) -> bytes:
    """A page whose lz4 size is roughly `target` bytes: random head, zero tail."""
    rnd = random.Random(seed)
    return rnd.randbytes(target).ljust(PAGE_SIZE, b"\0")
