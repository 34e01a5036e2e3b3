"""Reading a guest's swap file for `ramster bench density`: the data extents of a sparse file, as whole pages,
page 0 (the swap header) left out, lowest slots first, at most the cap."""
from __future__ import annotations

from ramster.bench.density_pages import data_extents, written_pages
from ramster.units import PAGE_SIZE

SLOTS = 64


def page(n: int) -> bytes:
    return bytes([n]) * PAGE_SIZE


def swap_file(path, slots: dict[int, bytes]):
    """A sparse file of SLOTS pages with `slots` written at their page numbers (in a scattered order)."""
    with open(path, "wb") as f:
        f.truncate(SLOTS * PAGE_SIZE)
        for n in sorted(slots, key=lambda n: (n * 37) % SLOTS):
            f.seek(n * PAGE_SIZE)
            f.write(slots[n])
    return path


def test_only_written_pages_in_slot_order_without_the_header(tmp_path):
    slots = {0: b"SWAPSPACE2".ljust(PAGE_SIZE, b"\0"), 3: page(3), 4: page(4), 10: page(10), 41: page(41)}
    f = swap_file(tmp_path / "swap.raw", slots)
    assert written_pages(f, 1000) == [page(3), page(4), page(10), page(41)]


def test_the_cap_keeps_the_lowest_slots(tmp_path):
    f = swap_file(tmp_path / "swap.raw", {0: page(0), 3: page(3), 4: page(4), 10: page(10), 41: page(41)})
    assert written_pages(f, 3) == [page(3), page(4), page(10)]
    assert written_pages(f, 1) == [page(3)]
    assert written_pages(f, 0) == []


def test_a_page_written_in_part_is_read_whole(tmp_path):
    f = tmp_path / "swap.raw"
    swap_file(f, {})
    with open(f, "r+b") as out:
        out.seek(20 * PAGE_SIZE + 100)
        out.write(b"x" * 10)
    expect = bytearray(PAGE_SIZE)
    expect[100:110] = b"x" * 10
    assert written_pages(f, 1000) == [bytes(expect)]
    assert list(data_extents(f)) == [(20 * PAGE_SIZE, 21 * PAGE_SIZE)]


def test_a_header_alone_or_nothing_gives_no_page(tmp_path):
    assert written_pages(swap_file(tmp_path / "header.raw", {0: page(0)}), 1000) == []
    assert written_pages(swap_file(tmp_path / "empty.raw", {}), 1000) == []
    assert list(data_extents(tmp_path / "empty.raw")) == []


def test_data_after_the_header_in_one_extent(tmp_path):
    """Slots 0-2 written back to back are one extent: the header is cut from its start, not the whole extent."""
    f = swap_file(tmp_path / "swap.raw", {0: page(0), 1: page(1), 2: page(2), 63: page(63)})
    assert written_pages(f, 1000) == [page(1), page(2), page(63)]
