"""The pieces of the guest, checked on the host: the hog's checker, the module order, the install script."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from guest_support import require

from ramster.guest import initramfs, tools

pytestmark = pytest.mark.guest
REPO = Path(__file__).resolve().parents[2]


def test_hog_passes_intact_memory_and_catches_one_flipped_bit(tmp_path):
    require()
    hog = initramfs.compile_hog(tmp_path / "hog")
    ok = subprocess.run([str(hog), "4", "3"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "HOG PASS pages=1024" in ok.stdout
    assert re.search(r"HOG TIME fill=[\d.]+ verify1=[\d.]+ verify2=[\d.]+ total=[\d.]+", ok.stdout)
    counts = dict(re.findall(r"(random|same|structured|half-random)=(\d+)", ok.stdout))
    assert set(counts) == {"random", "same", "structured", "half-random"} and all(int(v) > 0 for v in counts.values())

    bad = subprocess.run([str(hog), "4", "3"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOG_FLIP": "777"})
    assert bad.returncode == 1, bad.stdout + bad.stderr
    # the bad page is seen by both passes
    assert "HOG FAIL bad=2 first=777 pass1=1 pass2=1" in bad.stdout and "HOG PASS" not in bad.stdout


def test_modules_load_after_what_they_depend_on():
    require()
    kernel = tools.find_kernel()
    names = [initramfs._module_name(p.name) for p in initramfs.module_chain(kernel)]
    deps = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[initramfs._module_name(path)] = [initramfs._module_name(d) for d in rest.split()]
    for i, name in enumerate(names):
        assert set(deps[name]) <= set(names[:i]), f"{name} is loaded before {deps[name]}: {names}"
    assert names[-2:] == ["virtio_pci", "virtio_blk"] or "virtio_blk" not in deps


def test_the_test_command_installs_every_package_the_guest_needs():
    script = (REPO / "scripts" / "bootstrap.sh").read_text()
    listed = re.search(r"test_debs=\(([^)]*)\)\s", script.split("if ((with_tests)); then", 1)[1]).group(1).split()
    assert set(tools.DEBIAN_PACKAGES) <= set(listed), listed
    assert "bootstrap.sh --test" in (REPO / "scripts" / "test.sh").read_text()
    assert "--test" not in (REPO / "scripts" / "run.sh").read_text()
