"""Boot the guest under QEMU with one disk, and read the hog's verdict off the serial console.

The guest has no network and no shared folder: its only way to report is
ttyS0, which QEMU writes to our pipe. /init (guest/initramfs.py) and the hog
print one marked line per fact, and this file reads the console as it comes:

    GUEST SWAPON ...     swapon on /dev/vda worked (MemTotal, SwapTotal)
    HOG START            the hog begins filling memory (host clock starts)
    HOG PASS | HOG FAIL  every page read back twice, in two orders, matched (or did not)
    HOG TIME ...         the guest's own timings of fill / verify / total (host clock stops)
    GUEST HOG EXIT n     the hog's exit status
    GUEST VMSTAT ...     pswpin / pswpout: proof that the guest really swapped
    GUEST FAIL ...       /init gave up (no disk, mkswap or swapon failed)

A run passes only with HOG PASS, no kernel I/O error line on the swap device
(IO_ERRORS) and a clean QEMU exit: a hog that "passes" on a disk that
returned errors would mean the kernel retried around a wrong answer. With
stop_on_io_error the run ends STOP_GRACE seconds after the first such line,
so a broken export fails in seconds, not at the timeout.

The disk is a -blockdev given as JSON (an NBD export on a Unix socket, or a
raw file for the baseline), so any socket path reaches QEMU unmangled.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tools import QEMU, Kernel, which

GUEST_MEMORY_MIB = 160
HOG_MIB = 400
SEED = 1
# the guest's lines that mean the kernel saw an I/O error on its swap device
IO_ERRORS = ("I/O error", "Write-error on swap-device", "Read-error on swap-device", "Buffer I/O error",
             "blk_update_request")
STOP_GRACE = 2.0  # seconds of console kept after the first I/O error
# lines that mean the guest did not get as far as judging its memory
GUEST_TROUBLE = ("Kernel panic", "Out of memory", "oom-kill", "GUEST FAIL", "BUG:", "Oops")


def nbd_unix(socket: Path, export: str) -> dict:
    """A QEMU -blockdev file node for an NBD export on a Unix socket (QEMU's own NBD client)."""
    return {"driver": "nbd", "server": {"type": "unix", "path": str(socket)}, "export": export}


def raw_file(path: Path) -> dict:
    """A -blockdev file node for a raw file, through the host's page cache (the cheapest path QEMU has)."""
    return {"driver": "file", "filename": str(path)}


@dataclass
class GuestRun:
    returncode: int | None
    wall_seconds: float
    console: str
    timed_out: bool = False
    stopped: bool = False                       # ended early on an I/O error
    # fill, verify1, verify2, total: seconds by the guest's clock; host: HOG START to HOG TIME by the host's
    hog: dict = field(default_factory=dict)
    vmstat: dict = field(default_factory=dict)  # pswpin, pswpout (pages)

    @property
    def passed(self) -> bool:
        """The hog passed, the kernel saw no I/O error, and the guest powered itself off."""
        return "HOG PASS" in self.console and not self.io_errors and self.returncode == 0

    @property
    def io_errors(self) -> list[str]:
        return [ln for ln in self.console.splitlines() if any(p in ln for p in IO_ERRORS)]

    @property
    def trouble(self) -> list[str]:
        return [ln for ln in self.console.splitlines() if any(p in ln for p in GUEST_TROUBLE)]

    def verdict(self) -> str:
        """One line for a test failure or a benchmark row: what went wrong, or PASS."""
        for ln in self.console.splitlines():
            if ln.startswith(("HOG PASS", "HOG FAIL")):
                hog = ln.strip()
                break
        else:
            hog = "no HOG verdict"
        parts = [hog]
        if self.timed_out:
            parts.append(f"timed out after {self.wall_seconds:.0f} s")
        elif self.stopped:
            parts.append("stopped on an I/O error")
        elif self.returncode not in (0, None):
            parts.append(f"QEMU exited with {self.returncode}")
        errs = self.io_errors
        if errs:
            parts.append(f"{len(errs)} I/O error line(s), first: {errs[0].strip()}")
        trouble = self.trouble
        if trouble:
            parts.append(f"guest trouble: {trouble[0].strip()}")
        return "; ".join(parts)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-n:])

    def summary(self) -> str:
        """The verdict, and the console's last lines when the guest had trouble or the hog never timed itself."""
        verdict = self.verdict()
        if not self.passed and (self.trouble or not self.hog):
            verdict += f" | console: {' / '.join(self.tail(6).splitlines())}"
        return verdict


def command(kernel: Kernel, initrd: Path, disk: dict, memory_mib: int = GUEST_MEMORY_MIB,
            hog_mib: int = HOG_MIB, seed: int = SEED) -> list[str]:
    # -blockdev's JSON carries any socket path as it is (a -drive string would split it at commas)
    blockdev = {"driver": "raw", "node-name": "swap0", "file": disk}
    append = (f"console=ttyS0 panic=-1 loglevel=4 mitigations=off rdinit=/init "
              f"ramster_hog={hog_mib} ramster_seed={seed}")
    return [which(QEMU), "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", f"{memory_mib}M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio",
            "-kernel", str(kernel.image), "-initrd", str(initrd), "-append", append,
            "-blockdev", json.dumps(blockdev),
            # report errors to the guest: QEMU's default stops the whole VM on ENOSPC
            "-device", "virtio-blk-pci,drive=swap0,werror=report,rerror=report"]


def run(kernel: Kernel, initrd: Path, disk: dict, console: Path, timeout: float, *, prefix: tuple[str, ...] = (),
        memory_mib: int = GUEST_MEMORY_MIB, hog_mib: int = HOG_MIB, seed: int = SEED,
        stop_on_io_error: bool = True) -> GuestRun:
    """Boot, let the guest run its hog and power itself off; kill QEMU if it is still running after `timeout` s.

    The console is read as it comes (and copied to `console`): with `stop_on_io_error`, the first
    I/O error line ends the run a moment later, since a guest whose swap device fails may retry
    the same pages until the timeout."""
    cmd = [*prefix, *command(kernel, initrd, disk, memory_mib, hog_mib, seed)]
    log = console.with_suffix(".qemu.log")
    t0 = time.monotonic()
    deadline = t0 + timeout
    marks: dict[str, float] = {}
    timed_out = stopped = False
    with open(log, "wb") as err, open(console, "wb") as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                             start_new_session=True)
        try:
            pending = b""
            with selectors.DefaultSelector() as sel:
                sel.register(p.stdout, selectors.EVENT_READ)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not sel.select(left):
                        timed_out = not stopped
                        break
                    chunk = os.read(p.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    out.write(chunk)
                    out.flush()
                    *lines, pending = (pending + chunk).split(b"\n")
                    for ln in lines:
                        for mark in (b"HOG START", b"HOG TIME"):
                            if ln.startswith(mark):
                                marks.setdefault(mark.decode(), time.monotonic() - t0)
                        if stop_on_io_error and not stopped and any(e.encode() in ln for e in IO_ERRORS):
                            stopped = True  # a few more lines may say more; then stop
                            deadline = min(deadline, time.monotonic() + STOP_GRACE)
            if not (timed_out or stopped):
                try:  # the console closed: QEMU is exiting
                    p.wait(timeout=max(deadline - time.monotonic(), 1))
                except subprocess.TimeoutExpired:
                    timed_out = True
            if p.poll() is None:
                p.kill()
            p.wait()
        except BaseException:
            p.kill()
            p.wait()
            raise
        finally:
            p.stdout.close()
    wall = time.monotonic() - t0
    text = console.read_text(errors="replace")
    qemu_out = log.read_text(errors="replace").strip()
    if qemu_out:
        text += "\n[qemu] " + qemu_out.replace("\n", "\n[qemu] ")
    hog = _hog_times(text)
    if "HOG START" in marks and "HOG TIME" in marks:
        hog["host"] = round(marks["HOG TIME"] - marks["HOG START"], 3)
    return GuestRun(returncode=None if timed_out or stopped else p.returncode, wall_seconds=wall, console=text,
                    timed_out=timed_out, stopped=stopped, hog=hog, vmstat=_vmstat(text))


def _hog_times(text: str) -> dict:
    m = re.search(r"HOG TIME (.*)", text)
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(1))} if m else {}


def _vmstat(text: str) -> dict:
    m = re.search(r"GUEST VMSTAT (.*)", text)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))} if m else {}
