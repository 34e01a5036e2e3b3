"""The servers and devices `ramster bench nbd` measures, behind one interface.

Each target has start()/stop(), an NBD URI or a device for fio (fio_target()),
seqwrite()/seqread() of the benchmark's image, and snapshot(): the memory it
uses for what it holds. A server's memory is its VmRSS minus that of the same
server serving BASELINE_SIZE (started and stopped first: nbdkit's malloc
allocator touches its whole buffer at start, so growth after starting would
miss it), plus for ramster its backing file's allocated bytes; zram's is its
mm_stat mem_used_total.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

from .. import __version__
from ..units import PAGE_SIZE
from . import common, runners, synthetic
from .runners import Measure

BASELINE_SIZE = 64 << 10
REQUEST_SIZE = 256 << 10  # nbdcopy's default request size; dd uses the same block size for zram


class NbdTarget:
    """A server on a Unix socket, measured with nbdcopy and fio's nbd engine."""

    export = ""

    def __init__(self, name: str, tmp: Path, procs: common.Procs, cpus: dict, size: int):
        self.name, self.tmp, self.procs, self.cpus, self.size = name, tmp, procs, cpus, size
        self.sock = tmp / f"{name}.sock"
        self.log = tmp / f"{name}.log"
        self.proc = None
        self.idle_rss = self.baseline_rss = 0

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.export}?socket={self.sock}"

    def command(self, size: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.baseline_rss = self._idle_rss(BASELINE_SIZE)
        self.proc, self.idle_rss = self._launch(self.size)

    def _launch(self, size: int):
        proc = self.procs.start(self.command(size), self.log, self.tmp, cpu=self.cpus["server"])
        common.wait_unix_socket(self.sock, proc, self.log)
        return proc, common.rss_bytes(proc.pid)

    def _idle_rss(self, size: int) -> int:
        """RSS of the same server with a tiny store, filled: what it costs before holding data.

        nbdkit's malloc allocator touches its whole buffer at start, so RSS growth
        after starting would miss it; RSS above this baseline does not. The tiny
        store is filled with synthetic pages (bench/synthetic.py) so that the code
        a write runs (the codecs' pages of the shared libraries) is resident in
        both and only what the data costs is counted."""
        self.proc, _ = self._launch(size)
        try:
            tiny = self.tmp / "baseline.raw"
            tiny.write_bytes(synthetic.image(size))
            self.seqwrite(tiny)
            tiny.unlink()
            self._settle_tiny()
            return self._quiet_rss()
        finally:
            self.procs.stop(self.proc)
            self.proc = None
            self.sock.unlink(missing_ok=True)
            self._discard_state()

    def _settle_tiny(self) -> None:
        """What the measured server does after the write, done to the tiny one too."""

    def _quiet_rss(self) -> int:
        return common.rss_bytes(self.proc.pid)

    def _discard_state(self) -> None:
        pass

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None

    def fio_target(self) -> list[str]:
        return ["--ioengine=nbd", f"--uri={self.uri}"]

    def seqwrite(self, image: Path) -> Measure:
        return runners.timed(self.cpus["client"], ["nbdcopy", str(image), self.uri], self.size, "nbdcopy")

    def seqread(self) -> Measure:
        return runners.timed(self.cpus["client"], ["nbdcopy", "--no-extents", self.uri, "null:"], self.size,
                             "nbdcopy to null:")

    def snapshot(self) -> dict:
        rss = common.rss_bytes(self.proc.pid)
        used = rss - self.baseline_rss
        return {"memory_bytes": used, "memory_per_original_byte": used / self.size, "rss_bytes": rss,
                "idle_rss_bytes": self.idle_rss, "baseline_rss_bytes": self.baseline_rss, "compression_ratio": None,
                "memory_source": f"server VmRSS minus that of the same server holding {BASELINE_SIZE >> 10} KiB"}


class NbdkitTarget(NbdTarget):
    def __init__(self, allocator: str, *a):
        super().__init__(f"nbdkit-{allocator}", *a)
        self.allocator = allocator

    def command(self, size: int) -> list[str]:
        return ["nbdkit", "--exit-with-parent", "-f", "-U", str(self.sock), "memory", str(size),
                f"allocator={self.allocator}"]

    def describe(self) -> str:
        return f"nbdkit memory {self.size} allocator={self.allocator} (-U SOCKET -f)"


class RamsterTarget(NbdTarget):
    export = "swap"

    def __init__(self, memory: int, *a):
        super().__init__("ramster", *a)
        self.memory = memory
        self.backing = self.tmp / "ramster-swap.backing"
        self.port = common.free_port()

    def command(self, size: int) -> list[str]:
        memory = self.memory if size == self.size else size
        return [sys.executable, "-m", "ramster.cli", "node", "--memory", str(memory),
                "--listen", f"unix:{self.sock}", "--export", f"swap:swap:{size}:{self.backing}",
                "--metrics", f"127.0.0.1:{self.port}", "--log-level", "warning"]

    def _discard_state(self) -> None:
        self.backing.unlink(missing_ok=True)

    def _quiet_rss(self) -> int:
        common.wait_quiet_heap(f"http://127.0.0.1:{self.port}/stats", self.proc)
        return common.rss_bytes(self.proc.pid)

    def describe(self) -> str:
        return (f"ramster node --memory {self.memory} --export swap:swap:{self.size}:BACKING "
                f"(ramster {__version__}, {sys.executable})")

    def snapshot(self) -> dict:
        st = common.wait_quiet_heap(f"http://127.0.0.1:{self.port}/stats", self.proc)
        rss = common.rss_bytes(self.proc.pid)
        c = st["counters"]
        backing = common.allocated_bytes(self.backing)
        frames = c["zcache.pers_pageframes"] + c["zcache.eph_pageframes"]
        used = rss - self.baseline_rss + backing
        zpages, zbytes = c["zcache.pers_zpages"], c["zcache.pers_zbytes"]
        counters = st["exports"]["swap"]["counters"]
        return {
            "memory_bytes": used, "memory_per_original_byte": used / self.size, "rss_bytes": rss,
            "idle_rss_bytes": self.idle_rss, "baseline_rss_bytes": self.baseline_rss,
            "frames_bytes": frames * PAGE_SIZE,
            "rss_beyond_frames_bytes": rss - self.baseline_rss - frames * PAGE_SIZE,
            "backing_file_bytes": backing,
            "memory_source": f"node VmRSS once it trimmed its heap (the lazily backed arena's frames included) minus "
                             f"that of a node holding {BASELINE_SIZE >> 10} KiB, + backing file bytes",
            "compression_ratio": (zpages * PAGE_SIZE + backing) / (zbytes + backing) if zbytes + backing else None,
            "compression_ratio_in_memory": zpages * PAGE_SIZE / zbytes if zbytes else None,
            "pers_zpages": zpages, "pers_zbytes": zbytes, "pers_pageframes": c["zcache.pers_pageframes"],
            "same_filled_pages": c["zcache.same_filled_pages"] + c["zcache.zero_filled_pages"],
            "compress_poor": c.get("zcache.compress_poor"), "mean_compress_poor": c.get("zcache.mean_compress_poor"),
            "writtenback_pages": c.get("zcache.writtenback_pages"),
            "backing_writes": counters.get("backing_writes"), "failed_writes": counters.get("failed_writes"),
            "nbd_errors": counters.get("errors"), "compressor": st["node"]["compressor"],
        }


class ZramTarget:
    def __init__(self, tmp: Path, procs: common.Procs, cpus: dict, size: int):
        self.name, self.tmp, self.cpus, self.size = "zram", tmp, cpus, size
        self.dev: runners.ZramDevice | None = None

    def start(self) -> None:
        self.dev = runners.ZramDevice(self.size, "lz4")

    def stop(self) -> None:
        if self.dev is not None:
            self.dev.remove()
            self.dev = None

    def describe(self) -> str:
        return f"kernel zram (lz4), {platform.release()}, hot_add + disksize {self.size}"

    def fio_target(self) -> list[str]:
        return ["--ioengine=libaio", "--direct=1", f"--filename={self.dev.path}"]

    def seqwrite(self, image: Path) -> Measure:
        return runners.timed(self.cpus["client"], ["dd", f"if={image}", f"of={self.dev.path}",
                                                   f"bs={REQUEST_SIZE}", "oflag=direct", "status=none"],
                             self.size, "dd direct")

    def seqread(self) -> Measure:
        return runners.timed(self.cpus["client"], ["dd", f"if={self.dev.path}", "of=/dev/null",
                                                   f"bs={REQUEST_SIZE}", "iflag=direct", "status=none"],
                             self.size, "dd direct to /dev/null")

    def snapshot(self) -> dict:
        mm = self.dev.mm_stat()
        used = mm["mem_used_total"]
        return {"memory_bytes": used, "memory_per_original_byte": used / self.size, "device": self.dev.path.name,
                "memory_source": "mm_stat mem_used_total",
                "compression_ratio": mm["orig_data_size"] / mm["compr_data_size"] if mm["compr_data_size"] else None,
                "mm_stat": mm}
