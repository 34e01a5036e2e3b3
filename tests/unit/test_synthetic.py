"""The synthetic page generator: deterministic, with the corpus' mix of page kinds and about its lz4 ratio."""
from __future__ import annotations

import pytest

from ramster.bench import synthetic
from ramster.bench.corpus import CorpusFile, load_pages
from ramster.units import PAGE_SIZE


def test_same_seed_same_pages_other_seed_other_pages():
    a = synthetic.pages(300, seed=5)
    assert a == synthetic.pages(300, seed=5)
    assert all(len(p) == PAGE_SIZE and isinstance(p, bytes) for p in a)
    b = synthetic.pages(300, seed=6)
    assert sum(x == y for x, y in zip(a, b)) < 10  # only zero pages may coincide
    assert synthetic.image(5 * PAGE_SIZE + 100, seed=5) == b"".join(a[:6])[: 5 * PAGE_SIZE + 100]


def test_every_kind_is_present_in_the_corpus_proportions():
    shares, ratio, mean_size = synthetic.measure(synthetic.pages(8192, seed=1))
    assert set(mean_size) == set(synthetic.KINDS)
    for kind, share in synthetic.MIX.items():
        # binomial spread of 8192 draws: 4 sigma, and at least one page of the rarest kinds
        sigma = (share * (1 - share) / 8192) ** 0.5
        assert abs(shares[kind] - share) <= 4 * sigma + 1e-9, (kind, shares[kind], share)
    assert ratio == pytest.approx(synthetic.CORPUS_LZ4_RATIO, rel=0.05)


@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_each_kind_classifies_as_itself(kind):
    g = synthetic.PageGenerator(seed=3)
    make = getattr(g, kind)
    assert {synthetic.classify(make()) for _ in range(50)} == {kind}


def test_a_mix_without_a_kind_never_makes_it():
    mix = {k: v for k, v in synthetic.MIX.items() if k != "random"}
    kinds = {synthetic.classify(p) for p in synthetic.PageGenerator(2, mix).pages(2000)}
    assert "random" not in kinds and {"text", "pointer", "binary"} <= kinds


def test_synthetic_corpus_file_reads_as_the_generators_pages():
    f = CorpusFile(None)
    assert f.name == "synthetic.pages"
    pages = load_pages(f, limit=64)
    assert pages == synthetic.pages(64, seed=0)
    assert len(load_pages(f)) == 4096
