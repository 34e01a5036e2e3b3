"""Test pages: real ones from shared/corpus when it is there, else pages built from this repository's text."""
from __future__ import annotations

import functools
import random
from pathlib import Path

PAGE_SIZE = 4096
REPO = Path(__file__).resolve().parents[1]


@functools.cache
def corpus_pages() -> tuple[bytes, ...]:
    """Real compressible pages (at most 2048), without zero or same-filled ones."""
    for d in (REPO.parent / "shared" / "corpus", REPO / "shared" / "corpus"):
        files = sorted(d.glob("*.pages")) if d.is_dir() else []
        if files:
            out = []
            for f in files:
                data = f.read_bytes()[: 512 * PAGE_SIZE]
                out += [data[i : i + PAGE_SIZE] for i in range(0, len(data) - PAGE_SIZE + 1, PAGE_SIZE)]
            return tuple(p for p in out if not _same_filled(p))
    text = b"".join(p.read_bytes() for p in sorted(REPO.rglob("*.py")))
    rnd = random.Random(7)
    out = []
    for _ in range(512):
        start = rnd.randrange(max(1, len(text) - PAGE_SIZE))
        page = (text[start : start + PAGE_SIZE] * 2)[:PAGE_SIZE]
        out.append(page.ljust(PAGE_SIZE, b"#"))
    return tuple(out)


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
