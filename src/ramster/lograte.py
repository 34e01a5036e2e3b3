"""Log lines for errors that can repeat once per page: the first at once, then one summary per interval.

A full disk fails every page written to it; one ERROR line per page would bury
the log (thousands a minute) and cost more than the failed write.
"""
from __future__ import annotations

import logging
import time


class Throttled:
    """Logs the first call at once, then at most one line per `interval` seconds
    saying how many more calls there were since the last line."""

    def __init__(self, logger: logging.Logger, level: int = logging.ERROR, interval: float = 10.0):
        self.logger = logger
        self.level = level
        self.interval = interval
        self.count = 0  # every call, logged or not
        self._suppressed = 0
        self._next = 0.0

    def __call__(self, msg: str, *args) -> None:
        self.count += 1
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d more like it in the last %.0f s)"
            args = (*args, self._suppressed, self.interval)
            self._suppressed = 0
        self._next = now + self.interval
        self.logger.log(self.level, msg, *args)
