"""lzo is an optional extra: without python-lzo the other compressors run, and choosing
lzo fails with one line that names the extra (never a traceback)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ramster import compress
from support import IN_CI

# `import lzo` fails in this interpreter as it does where python-lzo is not installed
WITHOUT_LZO = "import sys; sys.modules['lzo'] = None\n"


def test_missing_lzo_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lzo", None)
    with pytest.raises(ValueError, match=r"compressor 'lzo' is not available: .*ramster\[lzo\].*bootstrap.sh --lzo"):
        compress.get_codec("lzo")
    assert compress.available() == ("lz4", "zstd", "zlib")


def test_installed_lzo_is_available():
    try:
        import lzo  # noqa: F401
    except ImportError:
        # scripts/bootstrap.sh --test installs it: CI runs every codec
        (pytest.fail if IN_CI else pytest.skip)("python-lzo is not installed (pip install 'ramster[lzo]')")
    assert "lzo" in compress.available()


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_LZO + code], capture_output=True, text=True, timeout=60)


def test_node_with_lzo_missing_fails_in_one_line():
    r = _run("from ramster.cli.main import main; sys.exit(main(['node', '--compressor', 'lzo', '--metrics', 'off']))")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "ramster node: compressor 'lzo' is not available: python-lzo is not installed: "
        "pip install 'ramster[lzo]', or run scripts/bootstrap.sh --lzo"]


def test_bench_engine_runs_the_installed_compressors():
    r = _run("from ramster.cli.main import main; "
             "sys.exit(main(['bench', 'engine', '--pages', '32', '--repeat', '1', '--json']))")
    assert r.returncode == 0, r.stderr
    import json
    assert {row["compressor"] for row in json.loads(r.stdout)["results"]} == {"lz4", "zstd", "zlib"}
