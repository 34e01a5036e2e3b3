"""Helpers of the guest tests: what to do when a tool is missing, and `ramster node` processes."""
from __future__ import annotations

from pathlib import Path

import support


def require(*extra: str) -> None:
    """Skip when something the guest needs is missing; in CI, fail and name the Debian package instead."""
    support.need_guest(*extra)


def Node(tmp: Path, name: str, memory: str, *exports: str, config: Path | None = None,
         flags: tuple[str, ...] = ()) -> support.NodeProcess:
    """A `ramster node` in tmp/name serving NBD on a Unix socket, with /stats on a free port;
    with `config`, node `name` of that cluster file; `flags` are more of its options."""
    args = ["--memory", memory, "--log-level", "info", *flags]
    if config is not None:
        args += ["--config", str(config), "--name", name]
    for e in exports:
        args += ["--export", e]
    return support.NodeProcess(tmp / name, *args, name=name)
