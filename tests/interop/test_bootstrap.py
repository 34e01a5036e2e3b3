"""`bash scripts/bootstrap.sh` without flags, in a fresh clone, makes a venv that runs a node
and holds nothing else: no test, benchmark or optional packages, and no warnings from the
build. Needs the network (or a pip cache) for pip, as bootstrap does."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import fresh_environment, make_clone

# what only `--test`, `--bench` or `--lzo` may install (pip's names, lower case)
NOT_AT_RUNTIME = {"pytest", "hypothesis", "matplotlib", "numpy", "redis", "python-lzo", "pillow", "fonttools"}
RUNTIME = {"ramster", "lz4", "zstandard", "xxhash", "prometheus-client", "rich", "cryptography"}


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    fresh_clone = make_clone(tmp_path_factory.mktemp("bootstrap") / "clone")
    r = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=fresh_clone, env=fresh_environment(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"bootstrap failed:\n{r.stdout}\n{r.stderr}"
    return fresh_clone, r.stdout, r.stderr


def test_fresh_bootstrap_installs_the_runtime_only(bootstrapped):
    clone, out, err = bootstrapped
    log = out + err
    r = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "list", "--format=json"],
                       capture_output=True, text=True, check=True, env=fresh_environment())
    names = {p["name"].lower().replace("_", "-") for p in json.loads(r.stdout)}
    assert RUNTIME <= names, f"missing runtime packages: {RUNTIME - names}"
    assert not names & NOT_AT_RUNTIME, f"a node's venv holds {sorted(names & NOT_AT_RUNTIME)}"
    # setuptools' deprecation warnings (the license table) and any other from the build
    noisy = [ln for ln in log.splitlines() if re.search(r"license|Deprecat|BuildBackendWarning|SetuptoolsWarning", ln,
                                                        re.IGNORECASE)]
    assert not noisy, "bootstrap printed build warnings:\n" + "\n".join(noisy)
    assert ".venv/bin/ramster" in out.splitlines()[-1], "bootstrap no longer says how to run ramster"
    v = subprocess.run([str(clone / ".venv/bin/ramster"), "--version"], capture_output=True, text=True,
                       env=fresh_environment())
    assert v.returncode == 0 and v.stdout.startswith("ramster "), v


def test_runtime_venv_says_what_is_missing_and_installs_nothing(bootstrapped, tmp_path):
    """lzo and `bench cluster` need what bootstrap did not install: each says so in one line,
    and nothing runs apt-get (an apt-get first on PATH records any call)."""
    clone, _, _ = bootstrapped
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "apt-calls"
    for tool in ("apt-get", "apt"):
        (fake / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {calls}\nexit 1\n")
        (fake / tool).chmod(0o755)
    env = fresh_environment()
    env["PATH"] = f"{fake}:{env['PATH']}"
    ramster = str(clone / ".venv/bin/ramster")
    r = subprocess.run([ramster, "node", "--compressor", "lzo", "--metrics", "off"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "ramster node: compressor 'lzo' is not available: python-lzo is not installed: "
        "pip install 'ramster[lzo]', or run scripts/bootstrap.sh --lzo"]
    r = subprocess.run([ramster, "bench", "cluster", "--pages", "64", "--repeat", "1"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2, r
    assert "ramster[bench]" in r.stderr and "bootstrap.sh --bench" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not calls.exists(), f"something ran apt: {calls.read_text()}"
