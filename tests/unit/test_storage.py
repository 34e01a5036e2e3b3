"""storage/: backing-file locks and the page-state map that says what a restart may trust."""
from __future__ import annotations

import logging
import os

import pytest

from ramster.lograte import Throttled
from ramster.storage import BackingFile, BackingFileBusy, PageMapError, PageStateMap
from ramster.storage.pagemap import FILE, LOST, MEMORY

PAGE = 4096


def test_lock_refuses_a_second_open_also_through_a_hard_link(tmp_path):
    path = tmp_path / "swap.img"
    f = BackingFile(path, 16 * PAGE)
    os.link(path, tmp_path / "link.img")
    for other in (path, tmp_path / "link.img"):
        with pytest.raises(BackingFileBusy, match="in use by another running ramster node"):
            BackingFile(other, 16 * PAGE)
    f.close()
    BackingFile(tmp_path / "link.img", 16 * PAGE).close()  # free again once closed


def test_map_survives_reopen_and_lives_after_the_data(tmp_path):
    path = tmp_path / "swap.img"
    f = BackingFile(path, 100 * PAGE, grow=False)
    m = PageStateMap(f, 100 * PAGE)
    assert m.created and m.map_off == 100 * PAGE and m.not_current() == []
    m.states[3] = MEMORY
    m.states[99] = LOST
    f.pwrite(5 * PAGE, b"x" * PAGE)
    m.close()
    f.close()
    assert path.stat().st_size == 100 * PAGE + PAGE + PAGE  # data, one page of map, the trailer
    f = BackingFile(path, 100 * PAGE, grow=False)
    m = PageStateMap(f, 100 * PAGE)
    assert not m.created and m.not_current() == [3, 99]
    assert f.pread(5 * PAGE, PAGE) == b"x" * PAGE
    m.set_range(0, 100, FILE)
    assert m.not_current() == []
    m.close()
    f.close()


def test_map_of_another_size_is_refused(tmp_path):
    path = tmp_path / "swap.img"
    f = BackingFile(path, 8 * PAGE, grow=False)
    PageStateMap(f, 8 * PAGE).close()
    f.close()
    f = BackingFile(path, 16 * PAGE, grow=False)
    with pytest.raises(PageMapError, match="swap export of 32768 bytes"):
        PageStateMap(f, 16 * PAGE)
    f.close()


def test_plain_data_file_keeps_its_bytes_and_counts_as_current(tmp_path):
    path = tmp_path / "old.img"
    data = os.urandom(10 * PAGE + 100)  # longer than the export, not page-aligned
    path.write_bytes(data)
    f = BackingFile(path, 4 * PAGE, grow=False)
    m = PageStateMap(f, 4 * PAGE)
    assert m.map_off == 11 * PAGE and m.not_current() == []
    assert path.read_bytes()[:len(data)] == data
    m.close()
    f.close()


def test_damaged_trailer_is_an_error(tmp_path):
    path = tmp_path / "swap.img"
    f = BackingFile(path, 8 * PAGE, grow=False)
    PageStateMap(f, 8 * PAGE).close()
    f.close()
    with open(path, "ab") as out:
        out.write(b"\0" * PAGE)  # the file grew behind the map's back: no trailer at the end
    with open(path, "r+b") as out:  # and one that lies about where its map is
        out.seek(-2 * PAGE, os.SEEK_END)
        trailer = out.read(PAGE)
        out.seek(-PAGE, os.SEEK_END)
        out.write(trailer[:24] + (12345).to_bytes(8, "little") + trailer[32:])
    f = BackingFile(path, 8 * PAGE, grow=False)
    with pytest.raises(PageMapError, match="damaged"):
        PageStateMap(f, 8 * PAGE)
    f.close()


def test_throttled_log_says_how_many_it_held_back(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("ramster.lograte.time.monotonic", lambda: clock[0])
    log = Throttled(logging.getLogger("t"), interval=10)
    with caplog.at_level(logging.ERROR):
        for i in range(1000):
            log("page %d failed", i)
        clock[0] += 11
        log("page %d failed", 1000)
    assert [r.getMessage() for r in caplog.records] == [
        "page 0 failed", "page 1000 failed (999 more like it in the last 10 s)"]
    assert log.count == 1001


def test_storage_calls_nothing_above_it():
    """Storage sits under the exports and under Zcache's writeback: it imports neither them
    nor the front-ends (the writeback sink is handed frontswap's handle encoding instead)."""
    import ast
    import pathlib

    import ramster.storage

    above = ("nbd", "frontends", "zcache", "remote", "node", "tmem")
    for path in pathlib.Path(ramster.storage.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                top = (node.module or "").split(".")[0]
                assert top not in above, f"{path.name} imports ..{node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("ramster."), f"{path.name} imports {alias.name}"
