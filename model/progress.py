"""A progress line in the log at a steady interval, whether or not a progress bar is shown.

Long epochs (minutes on a CPU, on long texts) otherwise log nothing between the ``training``
line and the end of the first epoch: with ``--no-progress``, in a container or a CI log, a
person cannot tell a slow run from a stuck one. ``ProgressLog.step`` logs, at most every
``interval_s`` seconds: epoch, step, examples/s, mean loss so far, and the time left in this
epoch and in the run (training steps only: validation adds a little).
"""

from __future__ import annotations

import time
from typing import Any

# Often enough to show a run is alive, rarely enough not to flood a log: ~100 lines an hour.
DEFAULT_INTERVAL_S = 30.0


class ProgressLog:
    def __init__(
        self, log: Any, *, interval_s: float, steps_per_epoch: int, epochs: int,
        clock: Any = time.monotonic,
    ) -> None:
        self.log = log
        self.interval_s = interval_s
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.clock = clock
        self._epoch = 0
        self._started = 0.0
        self._last = 0.0

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._started = self._last = self.clock()

    def step(self, step: int, examples: int, loss: float) -> bool:
        """Called after each training step (``step`` from 1); logs when the interval is up."""
        now = self.clock()
        if self.interval_s <= 0 or now - self._last < self.interval_s:
            return False
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        per_step = elapsed / step
        left_epoch = (self.steps_per_epoch - step) * per_step
        left_run = left_epoch + (self.epochs - self._epoch) * self.steps_per_epoch * per_step
        self.log.info(
            "progress", epoch=f"{self._epoch}/{self.epochs}", step=f"{step}/{self.steps_per_epoch}",
            examples_per_s=round(examples / elapsed, 1), loss=round(loss, 4),
            eta_epoch=_duration(left_epoch), eta_run=_duration(left_run),
        )
        return True


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
