"""support.need(): a missing tool skips a test outside CI and fails it, naming the Debian package, with CI=true."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ci, status, word", [("true", 1, "failed"), ("", 0, "skipped")])
def test_missing_tool_fails_in_ci_and_skips_elsewhere(tmp_path, ci, status, word):
    (tmp_path / "test_uses_a_tool.py").write_text(
        "from support import need\n\n"
        "def test_it():\n"
        "    need('nbdcopy')\n")
    (tmp_path / "bin").mkdir()  # the only directory on PATH: nothing is installed
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["PATH"] = str(tmp_path / "bin")
    if ci:
        env["CI"] = ci
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider",
                        str(tmp_path / "test_uses_a_tool.py")], capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    assert r.returncode == status, r.stdout + r.stderr
    assert f"1 {word}" in r.stdout, r.stdout
    assert "not installed: nbdcopy (Debian package libnbd-bin" in r.stdout, r.stdout
