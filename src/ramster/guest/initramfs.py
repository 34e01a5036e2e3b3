"""Build the guest's initramfs: busybox, the virtio block modules, the memory hog, and an /init that swaps.

The archive is written here (cpio "newc", gzip) rather than with cpio(1), so
it needs no root (device nodes are only headers) and is the same bytes for
the same inputs (every mtime is 0).
"""
from __future__ import annotations

import gzip
import io
import lzma
import stat
import subprocess
from importlib import resources
from pathlib import Path

from .tools import Kernel, find_busybox, which

# what /dev/vda needs: virtio_pci finds the device, virtio_blk drives it (their dependencies come from modules.dep)
MODULES = ("virtio_pci", "virtio_blk")

INIT = r"""#!/bin/sh
# /init of the ramster test guest: swap onto /dev/vda, run the memory hog, say what happened, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
die() { echo "GUEST FAIL $*"; poweroff -f; echo o > /proc/sysrq-trigger; }
mib=400 seed=1
for a in $(cat /proc/cmdline); do
    case $a in
        ramster_hog=*) mib=${a#*=} ;;
        ramster_seed=*) seed=${a#*=} ;;
    esac
done
for m in @MODULES@; do
    insmod /lib/modules/$m.ko || die "insmod $m"
done
# devtmpfs creates the node as the disk is probed; allow the probe a few seconds
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && die "no /dev/vda"
    sleep 0.05
done
mkswap /dev/vda >/dev/null || die "mkswap /dev/vda"
swapon /dev/vda || die "swapon /dev/vda"
echo "GUEST SWAPON $(grep -E '^(MemTotal|SwapTotal)' /proc/meminfo | tr -s ' \n' ' ')"
/bin/hog $mib $seed
status=$?
echo "GUEST HOG EXIT $status"
echo "GUEST VMSTAT $(grep -E '^(pswpin|pswpout) ' /proc/vmstat | tr ' \n' '= ')"
poweroff -f
echo o > /proc/sysrq-trigger
"""


# ---- cpio newc --------------------------------------------------------------------------------

class Cpio:
    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        raw = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        self.out.write(b"070701" + b"".join(b"%08x" % f for f in fields) + raw)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


# ---- inputs -----------------------------------------------------------------------------------

def module_chain(kernel: Kernel, names: tuple[str, ...] = MODULES) -> list[Path]:
    """The module files to insmod for `names`, dependencies first; none for what is built into the kernel."""
    deps: dict[str, list[str]] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        if ":" in line:
            path, rest = line.split(":", 1)
            deps[path] = rest.split()
    by_name = {_module_name(p): p for p in deps}
    builtin_path = kernel.modules / "modules.builtin"
    builtin = {_module_name(p) for p in builtin_path.read_text().split()} if builtin_path.exists() else set()
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in deps[path]:
            visit(d)
        order.append(path)

    for name in names:
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise FileNotFoundError(f"kernel {kernel.version} has no module {name} (and does not build it in)")
    return [kernel.modules / p for p in order]


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for ext in (".xz", ".zst", ".gz"):
        name = name.removesuffix(ext)
    return name.removesuffix(".ko").replace("-", "_")


def read_module(path: Path) -> bytes:
    """A module's ELF bytes: busybox's insmod loads only uncompressed modules."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def compile_hog(out: Path) -> Path:
    """hog.c built static with musl-gcc: the initramfs has no C library."""
    src = resources.files(__package__).joinpath("hog.c").read_text()
    c_file = out.with_suffix(".c")
    c_file.write_text(src)
    r = subprocess.run([which("musl-gcc"), "-static", "-O2", "-Wall", "-o", str(out), str(c_file)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"musl-gcc could not build the hog: {r.stderr.strip()[-2000:]}")
    return out


def build(kernel: Kernel, out: Path, work: Path | None = None) -> Path:
    """Write the initramfs for `kernel` to `out` (gzip'd cpio); `work` holds the compiled hog (default: beside out)."""
    work = work or out.parent
    hog = compile_hog(work / "hog")
    modules = module_chain(kernel)
    names = [_module_name(p.name) for p in modules]
    a = Cpio()
    for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.file("bin/busybox", find_busybox().read_bytes(), 0o755)
    a.symlink("bin/sh", "busybox")
    a.file("bin/hog", hog.read_bytes(), 0o755)
    for name, path in zip(names, modules):
        a.file(f"lib/modules/{name}.ko", read_module(path))
    a.file("init", INIT.replace("@MODULES@", " ".join(names)).encode(), 0o755)
    out.write_bytes(gzip.compress(a.finish(), compresslevel=6, mtime=0))
    return out
