"""The node's background recompression: Zcache.recompress at a bounded share of one CPU.

Everything in a node runs on one loop, so time spent recompressing is time
no NBD request or peer is served. The task keeps to its share with a duty
cycle: in each period (PERIOD, 100 ms) it runs small batches (BATCH pages,
well under a millisecond each: a decompression, a zstd compression and a
check per page) until it has worked `share` of the period, then sleeps long
enough that work / (work + sleep) stays at or below the share, even when the
last batch ran over. A batch is one synchronous call, so no put or get can
meet a page half moved.

What is cold comes from idle marks (zcache_reclaim.py). Until an operator
marks pages idle (`ramster ctl mark-idle`) the task marks them itself, AGE
seconds after its last pass began, so a page untouched for about AGE
seconds is recompressed; from the operator's first mark on, the marks are
the operator's (a mark of the task's would change what "idle" means to the
operator's `writeback idle`) and the task works through each one. Huge
pages are candidates in every pass, and new ones start a pass of their
own. Between passes it only checks, once a period, whether a new mark or
a new huge page has come (Zcache.recompress_waiting, no walk).

It is off unless `recompress_cpu` is above 0: recompression spends CPU on
memory, and whether that trade is wanted is the operator's to say (zram too
leaves its second algorithm unset). `ramster ctl recompress` works either way.
"""
from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("ramster.recompress")

PERIOD = 0.1  # seconds per duty cycle
BATCH = 8  # pages per Zcache.recompress call
AGE = 60.0  # seconds between the task's own marks, until the operator marks


class RecompressTask:
    """Recompresses `zc`'s cold pages in the background at `share` (0 < share <= 1) of one CPU."""

    def __init__(self, zc, share: float, *, period: float = PERIOD, age: float = AGE, clock=time.monotonic):
        if not 0 < share <= 1:
            raise ValueError(f"recompress share must be in (0, 1], not {share}")
        self.zc = zc
        self.share = share
        self.period = period
        self.age = age
        self.clock = clock
        self.busy = 0.0  # seconds spent recompressing, all told
        self._marks = zc.idle_marks  # the marks seen so far
        self._own_marks = True  # until the operator marks
        self._pass_began = None
        self._task: asyncio.Task | None = None

    def cycle(self) -> float:
        """One period's work; returns the seconds spent (0: nothing to do now)."""
        zc = self.zc
        now = self.clock()
        marks = zc.idle_marks
        if marks != self._marks:  # not the task's own mark (it counts those as it makes them)
            self._marks = marks
            self._own_marks = False
            self._pass_began = None  # a new mark: a new pass
        if not zc.recompress_pending():
            # the pass is over: another one when there is something new (a mark, huge pages),
            # or when the task's own marks are due
            if self._pass_began is not None and not zc.recompress_waiting():
                if not self._own_marks or now - self._pass_began < self.age:
                    return 0.0
                zc.mark_idle()
                self._marks = zc.idle_marks
            self._pass_began = now
        t0 = self.clock()
        deadline = t0 + self.share * self.period
        while True:
            zc.recompress(BATCH)
            t = self.clock()
            if t >= deadline or not zc.recompress_pending():
                break
        self.busy += t - t0
        return t - t0

    async def run(self) -> None:
        while True:
            try:
                work = self.cycle()
            except Exception:  # a bug: logged, and the node keeps serving without it
                log.exception("background recompression failed; it stops")
                return
            rest = max(self.period - work, work * (1 - self.share) / self.share)
            await asyncio.sleep(rest)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())
        log.info("recompressing cold pages with %s in the background, at most %.0f%% of a CPU",
                 self.zc.recompressor, 100 * self.share)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
