"""Compressors behind one interface, chosen by name (SPEC §4.2).

Each codec is a pair of plain callables so the hot paths call the library
directly: `compress(page) -> bytes` and `decompress(buffer) -> bytes` where the
buffer is the exact compressed payload and the result must be PAGE_SIZE bytes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable
from .units import PAGE_SIZE

DEFAULT = "lz4"


@dataclass(frozen=True)
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes | memoryview], bytes]


def _lz4() -> Codec:
    import lz4.block as blk
    from functools import partial

    return Codec(
        "lz4",
        partial(blk.compress, store_size=False),
        partial(blk.decompress, uncompressed_size=PAGE_SIZE),
    )


# Compressors whose library is an optional extra: the one line a user sees when it is missing.
_EXTRAS = {"lzo": "python-lzo is not installed: pip install 'ramster[lzo]', or run scripts/bootstrap.sh --lzo"}


def _lzo() -> Codec:
    import lzo

    def compress(page, _c=lzo.compress):
        return _c(bytes(page), 1, False)

    def decompress(buf, _d=lzo.decompress):
        # python-lzo wants read-only bytes, not a view into the arena.
        return _d(bytes(buf), False, PAGE_SIZE)

    return Codec("lzo", compress, decompress)


def _zstd() -> Codec:
    import zstandard

    c = zstandard.ZstdCompressor(level=1, write_content_size=False, write_checksum=False, write_dict_id=False)
    d = zstandard.ZstdDecompressor()
    from functools import partial

    return Codec("zstd", c.compress, partial(d.decompress, max_output_size=PAGE_SIZE))


def _zlib() -> Codec:
    # Raw deflate (no zlib header or checksum): the frame stores the length already.
    def compress(page, _c=zlib.compressobj):
        c = _c(1, zlib.DEFLATED, -15)
        return c.compress(page) + c.flush()

    def decompress(buf, _d=zlib.decompress):
        return _d(buf, -15, PAGE_SIZE)

    return Codec("zlib", compress, decompress)


_FACTORIES: dict[str, Callable[[], Codec]] = {"lz4": _lz4, "lzo": _lzo, "zstd": _zstd, "zlib": _zlib}
NAMES = tuple(_FACTORIES)


def get_codec(name: str) -> Codec:
    """The codec called `name`; ValueError naming the choices for anything else."""
    if not isinstance(name, str):
        raise TypeError(f"compressor must be a str, not {type(name).__name__}")
    factory = _FACTORIES.get(name.lower())
    if factory is None:
        raise ValueError(f"unknown compressor {name!r}; choose one of: {', '.join(NAMES)}")
    try:
        return factory()
    except ImportError as e:
        why = _EXTRAS.get(name.lower(), f"{e.name} is not installed")
        raise ValueError(f"compressor {name.lower()!r} is not available: {why}") from None


def available() -> tuple[str, ...]:
    """The compressors this installation can run (lzo is an optional extra)."""
    out = []
    for name in NAMES:
        try:
            get_codec(name)
        except ValueError:
            continue
        out.append(name)
    return tuple(out)
