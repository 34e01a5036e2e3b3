"""The guest tests' fixtures: the kernel and initramfs (built once), and `ramster node` processes."""
from __future__ import annotations

from pathlib import Path

import pytest
from guest_support import Node, require

from ramster.guest import initramfs, tools
from ramster.guest.tools import Kernel


@pytest.fixture(scope="session")
def guest_image(tmp_path_factory) -> tuple[Kernel, Path]:
    """(kernel, initramfs): the installed Debian kernel and an initramfs built for it."""
    require()
    kernel = tools.find_kernel()
    work = tmp_path_factory.mktemp("guest")
    return kernel, initramfs.build(kernel, work / "initramfs.gz")


@pytest.fixture
def nodes():
    """Start nodes with nodes(tmp, name, memory, *exports, config=...); all are stopped at the end."""
    started: list[Node] = []

    def start(*args, **kwargs) -> Node:
        n = Node(*args, **kwargs)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()
