"""A small disk of its own for a backing file: a tmpfs the test mounts, and can fill."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from support import need

from .env import require


class SmallDisk:
    """`mount -t tmpfs -o size=SIZE` on `path`; fill() leaves no free block, unfill() gives them back."""

    def __init__(self, path: Path, size: str = "24m"):
        require(os.geteuid() == 0, "mounting a tmpfs needs root")
        need("mount", "umount")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(self.path)],
                           capture_output=True, text=True, timeout=30)
        require(r.returncode == 0, f"cannot mount a tmpfs on {self.path}: {r.stderr.strip()}")
        self.mounted = True
        self.ballast = self.path / "ballast"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Take every free block; the bytes taken. Writes, not fallocate: a tmpfs must really be full."""
        taken = 0
        chunk = bytes(1 << 20)
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 12):
                buf = chunk[:size]
                while True:
                    try:
                        n = os.write(fd, buf)
                    except OSError as e:
                        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        break
                    taken += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        return taken

    def unfill(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def close(self) -> None:
        if not self.mounted:
            return
        r = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            # a node that did not exit yet may still hold its backing file open
            r = subprocess.run(["umount", "-l", str(self.path)], capture_output=True, text=True, timeout=30)
        self.mounted = r.returncode != 0
