"""Where the benchmarks' pages come from: shared/corpus, or the synthetic generator.

shared/corpus (beside the checkout, or $RAMSTER_CORPUS) holds *.pages files:
raw 4 KiB pages dumped from real processes and files, one after another. A
benchmark takes a list of CorpusFile; each reads as whole pages. When no
corpus is given and none is found, the list is one synthetic "file" of
SYNTHETIC_PAGES pages from ramster.bench.synthetic (seed 0), which has the
corpus' mix of page kinds and compresses about as well, so `ramster bench`
runs on a fresh machine and gives the same pages on every run.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from ..compress import get_codec
from ..units import PAGE_SIZE
from . import synthetic

SYNTHETIC_PAGES = 4096  # as many as one corpus file holds (16 MiB)


class CorpusFile:
    """A *.pages file, or (path None) the synthetic pages of `seed`."""

    def __init__(self, path: Path | None, seed: int = 0):
        self.path = path
        self.seed = seed
        self.name = path.name if path is not None else "synthetic.pages"
        self._data: bytes | None = None

    def open(self) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        if self._data is None:
            self._data = synthetic.image(SYNTHETIC_PAGES * PAGE_SIZE, self.seed)
        return io.BytesIO(self._data)

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"synthetic pages (seed {self.seed})"


def default_corpus_dir() -> Path | None:
    """$RAMSTER_CORPUS, else shared/corpus beside the checkout or the working directory."""
    env = os.environ.get("RAMSTER_CORPUS")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "corpus" for p in here.parents]
    candidates += [Path.cwd().parent / "shared" / "corpus", Path.cwd() / "shared" / "corpus"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.pages")):
            return c
    return None


def corpus_files(paths: list[str] | None = None) -> list[CorpusFile]:
    """The given files and directories' *.pages; with none given, shared/corpus, else synthetic pages."""
    if paths:
        files = []
        for p in map(Path, paths):
            if p.is_dir():
                files += [CorpusFile(f) for f in sorted(p.glob("*.pages"))]
            elif p.is_file():
                files.append(CorpusFile(p))
            else:
                raise FileNotFoundError(f"no such corpus file or directory: {p}")
        return files
    d = default_corpus_dir()
    if d is None:
        return [CorpusFile(None)]
    return [CorpusFile(f) for f in sorted(d.glob("*.pages"))]


def load_pages(source: CorpusFile, limit: int | None = None) -> list[bytes]:
    """Whole pages of a corpus file (a trailing partial page is dropped)."""
    with source.open() as f:
        data = f.read(limit * PAGE_SIZE if limit else -1)
    n = len(data) // PAGE_SIZE
    return [data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(n)]


def build_image(files: list[CorpusFile], size: int, path: Path) -> dict:
    """`size` bytes of corpus pages (the files one after another, cycled) written to `path`;
    lz4 figures of what was written."""
    compress = get_codec("lz4").compress
    pages = zbytes = zero = poor = 0
    zero_page = bytes(PAGE_SIZE)
    written = 0
    with open(path, "wb") as out:
        while written < size:
            progressed = False
            for f in files:
                with f.open() as src:
                    while written < size:
                        chunk = src.read(min(1 << 20, size - written))
                        chunk = chunk[: len(chunk) // PAGE_SIZE * PAGE_SIZE]
                        if not chunk:
                            break
                        out.write(chunk)
                        written += len(chunk)
                        progressed = True
                        mv = memoryview(chunk)
                        for o in range(0, len(chunk), PAGE_SIZE):
                            p = mv[o : o + PAGE_SIZE]
                            n = len(compress(p))
                            zbytes += min(n, PAGE_SIZE)
                            pages += 1
                            zero += p == zero_page
                            poor += n > PAGE_SIZE // 8 * 7
                if written >= size:
                    break
            if not progressed:
                raise ValueError("the corpus files hold no whole 4 KiB page")
    return {"size": size, "pages": pages, "corpus": [str(f) for f in files], "lz4_ratio": pages * PAGE_SIZE / zbytes,
            "zero_pages": zero, "pages_compressing_worse_than_3584B": poor}
