"""The memory a node may budget: MemTotal and the cgroup's limit, read from real files
(this machine's, or trees the test writes in the same layout)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ramster import config, hostmem
from ramster.config import ConfigError, build

GiB = 1 << 30


def test_mem_total_of_this_machine():
    total = hostmem.mem_total()
    text = Path("/proc/meminfo").read_text()
    kb = int(next(line for line in text.splitlines() if line.startswith("MemTotal:")).split()[1])
    assert total == kb * 1024


def test_mem_total_unreadable(tmp_path):
    assert hostmem.mem_total(tmp_path / "none") is None
    (tmp_path / "meminfo").write_text("MemFree: 10 kB\n")
    assert hostmem.mem_total(tmp_path / "meminfo") is None


def cgroup_tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    (tmp_path / "cgroup").write_text(proc)
    root = tmp_path / "sys"
    for rel, value in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(value + "\n")
    return tmp_path / "cgroup", root


def test_cgroup_v2_smallest_limit_of_the_cgroup_and_its_ancestors(tmp_path):
    proc, root = cgroup_tree(tmp_path, "0::/system.slice/ramster.service\n", {
        "system.slice/ramster.service/memory.max": "max",
        "system.slice/memory.max": str(2 * GiB),
        "memory.max": str(8 * GiB),
    })
    assert hostmem.cgroup_limit(proc, root) == 2 * GiB


def test_cgroup_v2_without_a_limit(tmp_path):
    proc, root = cgroup_tree(tmp_path, "0::/user.slice\n", {"user.slice/memory.max": "max"})
    assert hostmem.cgroup_limit(proc, root) is None
    assert hostmem.cgroup_limit(tmp_path / "no-such-file", root) is None


def test_cgroup_v1_memory_controller(tmp_path):
    proc, root = cgroup_tree(tmp_path, "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n", {
        "memory/docker/abc/memory.limit_in_bytes": str(512 << 20),
        "memory/memory.limit_in_bytes": str(9223372036854771712),  # v1's "no limit"
    })
    assert hostmem.cgroup_limit(proc, root) == 512 << 20


def test_limit_names_where_it_comes_from(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:        4194304 kB\nMemFree: 1 kB\n")
    proc, root = cgroup_tree(tmp_path, "0::/a\n", {"a/memory.max": str(GiB)})
    assert hostmem.limit(tmp_path / "meminfo", proc, root) == (
        GiB, "the 1.0 GiB this process's cgroup may use (memory.max)")
    assert hostmem.limit(tmp_path / "meminfo", tmp_path / "none", root) == (
        4 * GiB, "this machine's 4.0 GiB of RAM (MemTotal)")
    assert hostmem.limit(tmp_path / "none", tmp_path / "none", root) is None


def test_check_budget():
    found = (10 * GiB, "this machine's 10.0 GiB of RAM (MemTotal)")
    assert hostmem.check_budget(9 * GiB, found=found) is None
    warning = hostmem.check_budget(int(9.5 * GiB), found=found)
    assert warning == ("memory 9.5 GiB is 95% of this machine's 10.0 GiB of RAM (MemTotal): "
                       "little is left for the node itself and other programs")
    assert hostmem.check_budget(10 * GiB, found=found) is not None  # all of it: allowed, loudly
    with pytest.raises(ValueError, match=r"^memory 10.0 GiB is more than this machine's 10.0 GiB of RAM"):
        hostmem.check_budget(10 * GiB + 4096, found=found)


def test_config_refuses_a_budget_above_this_machine():
    most, where = hostmem.limit()
    over = (most // 4096 + 1) * 4096
    with pytest.raises(ConfigError) as info:
        build(memory=over)
    assert str(info.value).startswith(f"memory {config.format_size(over)} is more than {where}")
    assert "--memory" in str(info.value) and "\n" not in str(info.value)


def test_config_warns_near_this_machines_memory():
    most, where = hostmem.limit()
    near = most * 19 // 20 // 4096 * 4096
    cfg = build(memory=near)
    assert len(cfg.warnings) == 1 and where in cfg.warnings[0]
    assert build(memory="64M").warnings == []
