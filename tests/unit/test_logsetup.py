"""Log formats: every record one line, parseable as JSON or logfmt, with the extra fields."""
from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime

import pytest

from ramster import logsetup


@pytest.fixture
def root():
    """The root logger's handlers and level, restored afterwards (configure() replaces them)."""
    r = logging.getLogger()
    saved = r.handlers[:], r.level
    yield r
    for h in r.handlers[:]:
        r.removeHandler(h)
    for h in saved[0]:
        r.addHandler(h)
    r.setLevel(saved[1])


def emit(root, fmt: str, level: str = "debug") -> list[str]:
    out = io.StringIO()
    logsetup.configure(fmt, level, stream=out)
    log = logging.getLogger("ramster.test")
    log.info("node started: %s memory", "256 MiB", extra={"export": "swap", "pages": 3})
    log.debug('quote " and\nnewline')
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")
    return out.getvalue().splitlines()


def test_json_one_object_per_line(root):
    lines = emit(root, "json")
    assert len(lines) == 3
    first, second, third = map(json.loads, lines)
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert first["level"] == "info" and first["logger"] == "ramster.test"
    assert first["msg"] == "node started: 256 MiB memory"
    assert first["export"] == "swap" and first["pages"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert second["msg"] == 'quote " and\nnewline' and second["level"] == "debug"
    assert third["level"] == "error" and "RuntimeError: boom" in third["exc"]


def parse_logfmt(line: str) -> dict:
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r'\\(.)', lambda e: {"n": "\n", "t": "\t", "r": "\r"}.get(e.group(1), e.group(1)), v[1:-1])
        out[m.group(1)] = v
    return out


def test_logfmt(root):
    lines = emit(root, "logfmt")
    assert len(lines) == 3
    first, second, third = map(parse_logfmt, lines)
    assert lines[0].startswith("ts=") and " level=info logger=ramster.test " in lines[0]
    assert first["msg"] == "node started: 256 MiB memory"
    assert first["export"] == "swap" and first["pages"] == "3"
    assert second["msg"] == 'quote " and\nnewline'
    assert "RuntimeError: boom" in third["exc"]


def test_text_keeps_the_familiar_line_and_adds_extras(root):
    lines = emit(root, "text", "info")
    assert re.fullmatch(r"\S+ \S+ INFO ramster.test: node started: 256 MiB memory export=swap pages=3", lines[0])
    assert "ERROR ramster.test: it failed" in lines[1]
    assert any("RuntimeError: boom" in line for line in lines)  # text keeps the traceback readable


def test_set_level_changes_what_is_logged(root):
    out = io.StringIO()
    logsetup.configure("json", "warning", stream=out)
    log = logging.getLogger("ramster.test")
    log.info("hidden")
    assert logsetup.set_level("info") == "warning"
    assert logsetup.level() == "info"
    log.info("shown")
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["shown"]
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        logsetup.set_level("loud")
    assert logsetup.level() == "info"


def test_unknown_format(root):
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logsetup.configure("xml", "info")
