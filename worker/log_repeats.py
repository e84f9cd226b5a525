"""One line per kind of Kafka client complaint per window, with a count, instead of a flood.

While a broker is away, librdkafka logs a failed connection every ~50 ms for each client (its
sparse reconnects to the bootstrap servers), and kafka-python a few lines a second: a worker wrote
1,282 error lines a minute of outage with the confluent client and 122 with kafka-python (README,
"Metrics and health"), burying what the worker itself said, on every pod at once.

``RepeatFilter`` sits on the log handler and looks only at the Kafka clients' loggers (``kafka``
and below: kafka-python's, and librdkafka's ``kafka.librdkafka``). Lines are alike when their
logger, level and text agree once digits are blanked (ports, timings and ids differ from one
attempt to the next). The first line of a kind passes at once; the next ones within ``window_s``
are held back and counted, and when the window ends one line says how many there were: the
latest of them, with ``repeated`` (how many were held back) and ``repeated_over_s`` as fields.
A kind that recurs after a quiet window passes at once again; at exit, open windows are counted
too (a worker that exits 4 after an outage says what it held back). Nothing else is held back: the
worker's own lines are few by design. At DEBUG every line passes (``telemetry.configure_logging``
does not install the filter).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 30.0
MAX_KINDS = 512  # kinds tracked at once; past it, new kinds pass untracked (never lost)
_DIGITS = re.compile(r"\d+")
_SUMMARY = "_tagstream_repeat_summary"  # marks the filter's own count lines, which always pass
REPEAT_FIELDS = ("repeated", "repeated_over_s")  # what a count line adds, for the log renderer


@dataclass
class _Kind:
    opened: float  # when this kind's current window began
    held: int = 0  # lines held back in it
    latest: logging.LogRecord | None = None  # the last one held back: the count line repeats it


class RepeatFilter(logging.Filter):
    """See the module docstring. ``emit`` writes a count line (the handler's ``handle``)."""

    def __init__(
        self, emit: Callable[[logging.LogRecord], object], *, window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic, prefix: str = "kafka",
    ) -> None:
        super().__init__()
        self._emit = emit
        self.window_s = window_s
        self._clock = clock
        self._prefix = prefix
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False) or not self._watched(record.name):
            return True
        key = (record.name, record.levelno, _DIGITS.sub("#", record.getMessage()))  # librdkafka logs "%s [%s] %s"
        now = self._clock()
        count: logging.LogRecord | None = None
        with self._lock:
            kind = self._kinds.get(key)
            if kind is not None and now - kind.opened < self.window_s:
                kind.held += 1
                kind.latest = record
                self._start_sweeper()
                return False
            if kind is not None and kind.held:
                count = self._summary(kind, now)
            if kind is not None or len(self._kinds) < MAX_KINDS or self._forget_quiet(now):
                self._kinds[key] = _Kind(opened=now)
        if count is not None:
            self._emit(count)  # the ended window's count first, then this line
        return True

    def sweep(self, *, all_windows: bool = False) -> int:
        """Write the count line of every window that has ended with lines held back (with
        ``all_windows``, of every window holding lines: at exit); returns how many were written.
        Runs every few seconds on a thread of its own once a line is held."""
        now = self._clock()
        with self._lock:
            ended = [k for k in self._kinds.values() if k.held and (all_windows or now - k.opened >= self.window_s)]
            lines = [self._summary(kind, now) for kind in ended]
        for line in lines:
            self._emit(line)
        return len(lines)

    def flush(self) -> int:
        """The count lines of every window still holding lines (at exit: ``telemetry`` registers it)."""
        return self.sweep(all_windows=True)

    # -- helpers -------------------------------------------------------------------------------------
    def _watched(self, name: str) -> bool:
        return name == self._prefix or name.startswith(self._prefix + ".")

    def _summary(self, kind: _Kind, now: float) -> logging.LogRecord:
        """The count line for ``kind``'s window (called with the lock held); opens the next window."""
        latest = kind.latest
        assert latest is not None
        line = logging.makeLogRecord(latest.__dict__)
        line.repeated = kind.held  # type: ignore[attr-defined]
        line.repeated_over_s = round(now - kind.opened, 1)  # type: ignore[attr-defined]
        setattr(line, _SUMMARY, True)
        kind.opened, kind.held, kind.latest = now, 0, None
        return line

    def _forget_quiet(self, now: float) -> bool:
        """Drop kinds whose window ended with nothing held; whether there is room now."""
        for key in [k for k, kind in self._kinds.items() if not kind.held and now - kind.opened >= self.window_s]:
            del self._kinds[key]
        return len(self._kinds) < MAX_KINDS

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_forever, name="tagstream-log-repeats", daemon=True)
            self._sweeper.start()

    def _sweep_forever(self) -> None:
        while True:
            time.sleep(max(0.5, self.window_s / 6))
            self.sweep()
