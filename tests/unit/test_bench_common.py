"""bench/common.py: a benchmark's workspace leaves no process and no file behind; tables render once for both outputs."""
from __future__ import annotations

import os

import pytest

from ramster.bench import common


def test_workspace_stops_children_and_removes_its_directory_on_error():
    with pytest.raises(RuntimeError, match="half-way"):
        with common.workspace("ramster-test-bench-") as (tmp, procs):
            p = procs.start(["sleep", "60"], tmp / "sleep.log", tmp)
            (tmp / "left.txt").write_text("x")
            raise RuntimeError("half-way")
    assert p.poll() is not None  # reaped: stopped, not orphaned
    assert not tmp.exists()


def test_workspace_restores_this_process_affinity():
    before = os.sched_getaffinity(0)
    cpu = min(before)
    with common.workspace("ramster-test-bench-", cpu=cpu):
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before


def test_require_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed
    with pytest.raises(common.ToolError, match=r"redis-server is not installed \(Debian package redis-server"):
        common.require("redis-server")


def test_table_markdown_aligns_words_left_and_numbers_right():
    t = common.Table("t", ["target", "IOPS", "result"], [["a", common.fmt(1234.5, ",.0f"), "PASS"],
                                                       ["b", common.fmt(None, ".1f"), "FAIL"]],
                     left=("target", "result"))
    assert t.markdown() == ["| target | IOPS | result |", "|---|---:|---|", "| a | 1,234 | PASS |",
                            "| b | – | FAIL |"]
    text = common.markdown(["note."], [t], ["verdict"])
    assert text.splitlines() == ["note.", "", *t.markdown(), "", "- verdict"]
