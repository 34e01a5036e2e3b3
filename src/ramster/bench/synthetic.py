"""Synthetic memory pages with the corpus' mix, made from a seed.

shared/corpus holds 4 KiB pages dumped from real processes (node, python,
redis) and from files. Where it is absent (a fresh checkout, CI), benchmarks
and tests need pages that compress the way memory does, and that are the same
on every run and every machine: this generator. Each page is one of six kinds,
drawn with the corpus' frequencies (MIX, measured with classify() over the
16384 pages of shared/corpus):

    kind      corpus share  what it looks like                           lz4 bytes (corpus mean)
    zero          0.5 %     all zero                                      26
    same          0.3 %     one 8-byte word repeated (zcache keeps no frame)  33
    text         15.7 %     printable words, spaces and newlines          2231
    pointer      54.9 %     8-byte words: addresses sharing their high    1365
                            bits, small integers, zeros (heap objects)
    binary       25.0 %     code and packed records: bytes with zero runs 2029
    random        3.6 %     incompressible                                4068

The corpus compresses 2.34x with lz4 over all its pages; the generator's kinds
are tuned to the same per-kind sizes, so its pages land near that too (the
unit test checks the ratio and that every kind appears).

Speed matters (tests build images of tens of MiB): a page is assembled with
C-speed operations only, no per-byte or per-word Python. A pointer page is
built column by column (byte 0 of every word, then byte 1, ...) with
extended-slice assignment, and the word kinds are mixed by masking whole
pages as big integers. Text pages are slices of one word-salad buffer made
once per generator.
"""
from __future__ import annotations

import collections
import random
import struct

import lz4.block

from ..units import PAGE_SIZE

WORDS = PAGE_SIZE // 8
KINDS = ("zero", "same", "text", "pointer", "binary", "random")
# shares of shared/corpus (16384 pages) by classify()
MIX = {"zero": 0.005, "same": 0.003, "text": 0.157, "pointer": 0.549, "binary": 0.250, "random": 0.036}
CORPUS_LZ4_RATIO = 2.34

_PRINTABLE = bytes(range(32, 127)) + b"\t\n\r"
_ALIGN = bytes(b & 0xF8 for b in range(256))        # an address is 8-byte aligned
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))   # objects of one page lie within 1 MiB


def _threshold(share: float) -> bytes:
    """A translate table: byte values below share*256 -> 0xFF, the rest -> 0 (a per-word mask)."""
    cut = round(share * 256)
    return bytes(0xFF if b < cut else 0 for b in range(256))


def _band(lo: float, hi: float) -> bytes:
    a, b = round(lo * 256), round(hi * 256)
    return bytes(0xFF if a <= v < b else 0 for v in range(256))


# A pointer page's words: addresses, small integers (lengths, flags, refcounts), the rest zero.
_POINTER_WORDS, _SMALL_WORDS = 0.27, 0.17
_PTR_MASK = _threshold(_POINTER_WORDS)
_SMALL_MASK = _band(_POINTER_WORDS, _POINTER_WORDS + _SMALL_WORDS)
# A binary page's 16-byte slots: this share are one of 16 tokens of the page (instruction
# sequences, records a file repeats), the rest random bytes of which a quarter are zero.
_SLOT, _TOKEN_SLOTS = 16, 0.69
_TOKEN_MASK = _threshold(_TOKEN_SLOTS)
_ALL_ONES = (1 << (8 * PAGE_SIZE)) - 1
_ZERO_SOME = bytes(0 if b < 64 else b for b in range(256))
# Text: words drawn from a vocabulary of this many made-up words.
_VOCABULARY = 125


class PageGenerator:
    """Pages from a seed: the same seed gives the same pages, in the same order."""

    def __init__(self, seed: int = 0, mix: dict[str, float] | None = None):
        self.rnd = random.Random(seed)
        mix = MIX if mix is None else mix
        self.kinds = [k for k in KINDS if mix.get(k, 0) > 0]
        self.weights = [mix[k] for k in self.kinds]
        self._text = self._word_salad(1 << 17)
        self._make = {"zero": self.zero, "same": self.same, "text": self.text, "pointer": self.pointer,
                      "binary": self.binary, "random": self.random}

    def page(self) -> bytes:
        kind = self.rnd.choices(self.kinds, self.weights)[0]
        return self._make[kind]()

    def pages(self, count: int) -> list[bytes]:
        return [self.page() for _ in range(count)]

    # ---- one page of each kind ------------------------------------------------------------

    def zero(self) -> bytes:
        return bytes(PAGE_SIZE)

    def same(self) -> bytes:
        word = self.rnd.randbytes(8) if self.rnd.random() < 0.5 else bytes([self.rnd.randrange(1, 256)]) * 8
        return word * WORDS

    def text(self) -> bytes:
        start = self.rnd.randrange(len(self._text) - PAGE_SIZE)
        return self._text[start:start + PAGE_SIZE]

    def pointer(self) -> bytes:
        rb = self.rnd.randbytes
        kinds = rb(WORDS)
        # every address of the page shares bytes 3..5 (a heap of one process), 6..7 are zero
        high = rb(3)
        ptr = bytearray(PAGE_SIZE)
        ptr[0::8] = rb(WORDS).translate(_ALIGN)
        ptr[1::8] = rb(WORDS)
        ptr[2::8] = rb(WORDS).translate(_LOW_NIBBLE)
        for col in range(3):
            ptr[3 + col::8] = high[col:col + 1] * WORDS
        small = bytearray(PAGE_SIZE)
        small[0::8] = rb(WORDS)
        pmask, smask = bytearray(PAGE_SIZE), bytearray(PAGE_SIZE)
        pm, sm = kinds.translate(_PTR_MASK), kinds.translate(_SMALL_MASK)
        for col in range(8):
            pmask[col::8] = pm
            smask[col::8] = sm
        n = ((int.from_bytes(ptr, "little") & int.from_bytes(pmask, "little"))
             | (int.from_bytes(small, "little") & int.from_bytes(smask, "little")))
        return n.to_bytes(PAGE_SIZE, "little")

    def binary(self) -> bytes:
        rb = self.rnd.randbytes
        slots = PAGE_SIZE // _SLOT
        tokens = rb(16 * _SLOT)  # 16 tokens; byte j of token i is tokens[_SLOT * i + j]
        which, m = rb(slots), rb(slots).translate(_TOKEN_MASK)
        tok, mask = bytearray(PAGE_SIZE), bytearray(PAGE_SIZE)
        for col in range(_SLOT):
            tok[col::_SLOT] = which.translate(bytes(tokens[_SLOT * (i & 15) + col] for i in range(256)))
            mask[col::_SLOT] = m
        t, mk = int.from_bytes(tok, "little"), int.from_bytes(mask, "little")
        noise = int.from_bytes(rb(PAGE_SIZE).translate(_ZERO_SOME), "little")
        return ((t & mk) | (noise & ~mk & _ALL_ONES)).to_bytes(PAGE_SIZE, "little")

    def random(self) -> bytes:
        return self.rnd.randbytes(PAGE_SIZE)

    def _word_salad(self, size: int) -> bytes:
        rnd = self.rnd
        letters = "etaoinshrdlucmfwypvbgkqjxz"
        weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
        vocab = ["".join(rnd.choices(letters, weights, k=rnd.randint(2, 10))) for _ in range(_VOCABULARY)]
        out, n = [], 0
        while n < size:
            line = " ".join(rnd.choices(vocab, k=rnd.randint(4, 14))) + rnd.choice((".\n", ",\n", "\n", ": "))
            out.append(line)
            n += len(line)
        return "".join(out).encode()[:size]


def pages(count: int, seed: int = 0) -> list[bytes]:
    """`count` pages with the corpus' mix, the same for the same seed."""
    return PageGenerator(seed).pages(count)


def image(size: int, seed: int = 0) -> bytes:
    """`size` bytes of such pages (the last one cut if size is not a multiple of PAGE_SIZE)."""
    return b"".join(pages(-(-size // PAGE_SIZE), seed))[:size]


def classify(page: bytes) -> str:
    """Which of KINDS a page is (how MIX was measured on shared/corpus)."""
    if page.count(0) == PAGE_SIZE:
        return "zero"
    if page == page[:8] * WORDS:
        return "same"
    if len(lz4.block.compress(page, store_size=False)) > 3600:
        return "random"
    if len(page.translate(None, _PRINTABLE)) < 0.3 * PAGE_SIZE:
        return "text"
    # addresses of one heap share their bits above 16 MiB; 64 of 512 words make a pointer page
    highs = collections.Counter(w >> 24 for w in struct.unpack(f"<{WORDS}Q", page) if 1 << 20 <= w < 1 << 48)
    if highs and highs.most_common(1)[0][1] >= WORDS // 8:
        return "pointer"
    return "binary"


def measure(page_list) -> tuple[dict[str, float], float, dict[str, int]]:
    """(share of each kind, lz4 ratio over all pages, mean lz4 bytes per kind) of some pages."""
    count: collections.Counter = collections.Counter()
    size: collections.Counter = collections.Counter()
    for p in page_list:
        k = classify(p)
        count[k] += 1
        size[k] += len(lz4.block.compress(p, store_size=False))
    n = sum(count.values())
    return ({k: count[k] / n for k in KINDS}, n * PAGE_SIZE / sum(size.values()),
            {k: size[k] // count[k] for k in KINDS if count[k]})
