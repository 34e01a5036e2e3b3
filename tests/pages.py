"""Test pages: real ones from shared/corpus when it is there, else memory-like pages
built from this repository's sources (text with a zero tail, compressing about 3x
as the corpus does: plain source text alone compresses too poorly per page for
the persistent pool's mean-size rule)."""
from __future__ import annotations

import functools
import random
from pathlib import Path

PAGE_SIZE = 4096
REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus_files(pattern: str = "*.pages") -> list[Path]:
    return sorted(CORPUS.glob(pattern)) if CORPUS.is_dir() else []


@functools.cache
def _source_text() -> bytes:
    return b"".join(p.read_bytes() for d in ("src", "tests") for p in sorted((REPO / d).rglob("*.py")))


def corpus_path(tmp: Path) -> Path:
    """A --corpus argument for the benchmarks: shared/corpus, else a file of synthetic pages in tmp."""
    if corpus_files():
        return CORPUS
    path = tmp / "synthetic.pages"
    path.write_bytes(b"".join(synthetic_pages(1024)))
    return path


def synthetic_pages(count: int, seed: int = 7) -> list[bytes]:
    text = _source_text()
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        start = rnd.randrange(len(text) - 1536)
        out.append(text[start : start + 1536].ljust(PAGE_SIZE, b"\0"))
    return out


def image(size: int, pattern: str = "*.pages", which: int = 0) -> bytes:
    """`size` bytes of whole pages: a corpus file (chosen by `which`), else synthetic pages."""
    files = corpus_files(pattern)
    if files:
        data = files[which % len(files)].read_bytes()
        data = (data * (size // len(data) + 1))[:size]
    else:
        data = b"".join(synthetic_pages(-(-size // PAGE_SIZE), seed=which))[:size]
    return data


@functools.cache
def corpus_pages() -> tuple[bytes, ...]:
    """Real compressible pages (at most 2048), without zero or same-filled ones."""
    files = corpus_files()
    if files:
        out = []
        for f in files:
            data = f.read_bytes()[: 512 * PAGE_SIZE]
            out += [data[i : i + PAGE_SIZE] for i in range(0, len(data) - PAGE_SIZE + 1, PAGE_SIZE)]
        return tuple(p for p in out if not _same_filled(p))
    return tuple(synthetic_pages(512))


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
