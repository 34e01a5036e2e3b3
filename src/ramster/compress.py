"""Compressors behind one interface, chosen by name (SPEC §4.2).

Each codec is a pair of plain callables so the hot paths call the library
directly: `compress(page) -> bytes` and `decompress(buffer) -> bytes` where the
buffer is the exact compressed payload and the result must be PAGE_SIZE bytes.

Every codec also comes in a strong variant (`get_codec(name, strong=True)`):
the same format at a slower, denser setting (lz4 HC, zstd level 3, zlib and
lzo level 9), for recompressing cold pages where compression speed matters
less than the bytes kept. A strong payload is read by the ordinary codec's
decompress, so a page carries only which format it is in: CODEC_IDS gives
each format a number that fits the byte zbud keeps for it in a page's handle.
The numbers are part of what a node stores, never reuse one.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable
from .units import PAGE_SIZE

DEFAULT = "lz4"
# the format number a page's handle records (0 there means "the node's own codec")
CODEC_IDS = {"lz4": 1, "lzo": 2, "zstd": 3, "zlib": 4}


@dataclass(frozen=True)
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes | memoryview], bytes]


def _lz4(strong: bool) -> Codec:
    import lz4.block as blk
    from functools import partial

    extra = {"mode": "high_compression", "compression": 9} if strong else {}
    return Codec(
        "lz4",
        partial(blk.compress, store_size=False, **extra),
        partial(blk.decompress, uncompressed_size=PAGE_SIZE),
    )


# Compressors whose library is an optional extra: the one line a user sees when it is missing.
_EXTRAS = {"lzo": "python-lzo is not installed: pip install 'ramster[lzo]', or run scripts/bootstrap.sh --lzo"}


def _lzo(strong: bool) -> Codec:
    import lzo

    level = 9 if strong else 1

    def compress(page, _c=lzo.compress):
        return _c(bytes(page), level, False)

    def decompress(buf, _d=lzo.decompress):
        # python-lzo wants read-only bytes, not a view into the arena.
        return _d(bytes(buf), False, PAGE_SIZE)

    return Codec("lzo", compress, decompress)


def _zstd(strong: bool) -> Codec:
    import zstandard

    # level 3 (zstd's default) keeps ~2% fewer bytes than 1 on a 4 KiB page for 10% more time;
    # 6 and up cost 3x and more for about 2% more
    c = zstandard.ZstdCompressor(level=3 if strong else 1, write_content_size=False, write_checksum=False, write_dict_id=False)
    d = zstandard.ZstdDecompressor()
    from functools import partial

    return Codec("zstd", c.compress, partial(d.decompress, max_output_size=PAGE_SIZE))


def _zlib(strong: bool) -> Codec:
    level = 9 if strong else 1

    # Raw deflate (no zlib header or checksum): the frame stores the length already.
    def compress(page, _c=zlib.compressobj):
        c = _c(level, zlib.DEFLATED, -15)
        return c.compress(page) + c.flush()

    def decompress(buf, _d=zlib.decompress):
        return _d(buf, -15, PAGE_SIZE)

    return Codec("zlib", compress, decompress)


_FACTORIES: dict[str, Callable[[bool], Codec]] = {"lz4": _lz4, "lzo": _lzo, "zstd": _zstd, "zlib": _zlib}
NAMES = tuple(_FACTORIES)


def get_codec(name: str, strong: bool = False) -> Codec:
    """The codec called `name` (its strong variant with strong=True); ValueError
    naming the choices for anything else."""
    if not isinstance(name, str):
        raise TypeError(f"compressor must be a str, not {type(name).__name__}")
    factory = _FACTORIES.get(name.lower())
    if factory is None:
        raise ValueError(f"unknown compressor {name!r}; choose one of: {', '.join(NAMES)}")
    try:
        return factory(strong)
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
