"""Real 4 KiB pages for benchmarks and tests (shared/corpus beside the repository)."""
from __future__ import annotations

import os
from pathlib import Path
from ..units import PAGE_SIZE



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


def corpus_files(paths: list[str] | None = None) -> list[Path]:
    if paths:
        files = []
        for p in map(Path, paths):
            if p.is_dir():
                files += sorted(p.glob("*.pages"))
            elif p.is_file():
                files.append(p)
            else:
                raise FileNotFoundError(f"no such corpus file or directory: {p}")
        return files
    d = default_corpus_dir()
    if d is None:
        raise FileNotFoundError("corpus not found: pass --corpus PATH or set RAMSTER_CORPUS")
    return sorted(d.glob("*.pages"))


def load_pages(path: Path, limit: int | None = None) -> list[bytes]:
    """Whole pages of a file (a trailing partial page is dropped)."""
    with open(path, "rb") as f:
        data = f.read(limit * PAGE_SIZE if limit else -1)
    n = len(data) // PAGE_SIZE
    return [data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(n)]
