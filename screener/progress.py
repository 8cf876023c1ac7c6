"""Progress for long scans: a rich bar with rate and ETA on a terminal, periodic plain log lines under cron."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("screener.scan")


class Progress:
    def __init__(self, total: int, bar: bool = True, interval_s: float = 30.0) -> None:
        self.total = total
        self.done = 0
        self.interval_s = interval_s
        self._start = time.monotonic()
        self._last_log = self._start
        self._bar = None
        if bar and sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(
                TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.0f} msg/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("scan", total=total, rate=0.0)
            self._bar.start()
        else:
            log.info("scoring %d messages", total)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        rate = self.done / max(now - self._start, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=rate)
        elif now - self._last_log >= self.interval_s:
            self._last_log = now
            remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("scored %d/%d messages, %.0f msg/s, about %.0f s left", self.done, self.total, rate, remaining)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            log.info("scored %d messages in %.1f s", self.done, time.monotonic() - self._start)
