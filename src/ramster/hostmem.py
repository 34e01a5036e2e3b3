"""How much memory this process can have: the machine's RAM, or less if its cgroup says so.

A node's budget is memory it means to fill. The frame arena reserves it as
address space only (frames.py), so nothing fails at start when the budget is
larger than the machine; the node would start, fill up, and then swap or be
killed by the OOM killer while holding other programs' swap pages. So a budget
is checked against two numbers before anything is allocated:

    MemTotal in /proc/meminfo          the RAM the kernel manages
    memory.max of the cgroup (v2),     what the service manager lets this
    or memory.limit_in_bytes (v1),     process use (systemd's MemoryMax=, a
    of this process's cgroup and       container's --memory); "max" or a
    every ancestor                     huge v1 number means no limit

A budget above the smaller of the two is refused; one above LIMIT_WARN of it
is allowed with a warning, since the process itself, the exports' page maps
and every other program need some of it.
"""
from __future__ import annotations

from pathlib import Path

from .units import format_size

LIMIT_WARN = 0.9

# cgroup v1 reports "no limit" as a page-aligned LONG_MAX
_V1_UNLIMITED = 1 << 62


def mem_total(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemTotal in bytes, or None when it cannot be read."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    value, unit = line.split()[1:3]
                    return int(value) * (1024 if unit == "kB" else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit():
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def cgroup_limit(proc_cgroup: str | Path = "/proc/self/cgroup",
                 root: str | Path = "/sys/fs/cgroup") -> int | None:
    """The smallest memory limit of this process's cgroup and its ancestors, or None."""
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            base, name = root, "memory.max"  # the unified (v2) hierarchy
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        d = Path(path.lstrip("/"))
        for part in (d, *d.parents):
            limit = _read_limit(base / part / name)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def limit(meminfo: str | Path = "/proc/meminfo", proc_cgroup: str | Path = "/proc/self/cgroup",
          cgroup_root: str | Path = "/sys/fs/cgroup") -> tuple[int, str] | None:
    """The most memory this process may use, and a phrase saying where that number comes
    from ("this machine's 23.5 GiB of RAM (MemTotal)"); None if neither is known."""
    found = []
    total = mem_total(meminfo)
    if total is not None:
        found.append((total, f"this machine's {format_size(total)} of RAM (MemTotal)"))
    cg = cgroup_limit(proc_cgroup, cgroup_root)
    if cg is not None:
        found.append((cg, f"the {format_size(cg)} this process's cgroup may use (memory.max)"))
    return min(found) if found else None


def check_budget(memory: int, what: str = "memory", found: tuple[int, str] | None = None) -> str | None:
    """ValueError (one line) for a budget above `found` (default: limit()); a warning (one
    line) for one above LIMIT_WARN of it; None when it fits or nothing is known."""
    if found is None:
        found = limit()
        if found is None:
            return None
    most, where = found
    if memory > most:
        raise ValueError(f"{what} {format_size(memory)} is more than {where}")
    if memory > most * LIMIT_WARN:
        return (f"{what} {format_size(memory)} is {100 * memory // most}% of {where}: "
                f"little is left for the node itself and other programs")
    return None
