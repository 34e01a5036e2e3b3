"""What the guest needs from the host, where to find it, and which Debian package provides it."""
from __future__ import annotations

import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
PACKAGES = {
    QEMU: "qemu-system-x86",
    "kernel": "linux-image-cloud-amd64",
    "busybox": "busybox-static",
    "musl-gcc": "musl-tools",
    "x86_64-linux-gnu-gcc": "gcc",  # the compiler musl-gcc runs
    "nbdkit": "nbdkit",
    "taskset": "util-linux",
}
# every Debian package the guest tests need (scripts/test.sh installs these)
DEBIAN_PACKAGES = ("qemu-system-x86", "linux-image-cloud-amd64", "busybox-static", "musl-tools", "gcc")
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


class MissingTool(RuntimeError):
    """Something the guest needs is not installed; `package` is the Debian package that provides it."""

    def __init__(self, what: str, package: str, detail: str = ""):
        self.what, self.package = what, package
        super().__init__(f"{what} is missing{': ' + detail if detail else ''} "
                         f"(Debian package {package}: apt-get install {package}, or run scripts/test.sh as root)")


@dataclass(frozen=True)
class Kernel:
    version: str
    image: Path          # /boot/vmlinuz-VERSION
    modules: Path        # /lib/modules/VERSION


def find_kernel(boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> Kernel:
    """The newest installed kernel that has its modules, a cloud kernel first (it boots in ~2 s under TCG)."""
    found = []
    for image in boot.glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if (modules_root / version / "modules.dep").is_file():
            found.append((version.endswith("-cloud-amd64"), _version_key(version), Kernel(version, image,
                                                                                            modules_root / version)))
    if not found:
        raise MissingTool("a Linux kernel (/boot/vmlinuz-* with its /lib/modules)", PACKAGES["kernel"])
    kernel = max(found, key=lambda f: f[:2])[2]
    if not os.access(kernel.image, os.R_OK):
        raise MissingTool(f"read access to {kernel.image}", PACKAGES["kernel"], "run as root or make it readable")
    return kernel


def _version_key(version: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (no dynamic loader needed)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only: the guest is x86_64
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


def find_busybox() -> Path:
    for p in BUSYBOX_PATHS:
        path = Path(p)
        if path.is_file():
            if is_static_elf(path):
                return path
            raise MissingTool("a static busybox", PACKAGES["busybox"], f"{path} is dynamically linked")
    raise MissingTool("busybox", PACKAGES["busybox"])


def which(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingTool(tool, PACKAGES.get(tool, tool))
    return path


def check_all(extra: tuple[str, ...] = ()) -> list[MissingTool]:
    """Everything missing for booting the guest (and for the `extra` tools), as a list."""
    missing = []
    for check in (lambda: which(QEMU), lambda: which("musl-gcc"), lambda: which("x86_64-linux-gnu-gcc"),
                  find_busybox, find_kernel,
                  *(lambda t=t: which(t) for t in extra)):
        try:
            check()
        except MissingTool as e:
            missing.append(e)
    return missing
