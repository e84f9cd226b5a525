"""Times and durations on the command line: ``2026-11-24T08:00``, ``2026-11-24``, ``90m``, ``24h``.

A datetime without a zone is UTC (the broker's timestamps are UTC milliseconds; a pod's local
zone is rarely what an operator means). Durations are a number and a unit: s, m, h, d, w, and
may be chained (``1h30m``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from worker.ops.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``90m``, ``24h``, ``1h30m``, ``7d`` -> a positive timedelta."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise UsageError(f"{text!r} is not a duration: use a number and a unit (s, m, h, d, w), e.g. 90m, 24h, 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"{text!r}: the duration must be positive")
    return timedelta(seconds=seconds)


def parse_datetime(text: str) -> datetime:
    """ISO 8601 (``2026-11-24T08:00:00+01:00``, ``2026-11-24 08:00``, ``2026-11-24``); UTC if no zone."""
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise UsageError(
            f"{text!r} is not a date and time: use ISO 8601, e.g. 2026-11-24T08:00 (UTC) or 2026-11-24T08:00+01:00"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time given either as a datetime or as a duration back from ``now``."""
    try:
        return parse_datetime(text)
    except UsageError:
        pass
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except UsageError:
        raise UsageError(
            f"{text!r} is neither a date and time (2026-11-24T08:00, UTC unless a zone is given)"
            " nor a duration back from now (90m, 24h, 7d)"
        ) from None


def to_ms(when: datetime) -> int:
    """Milliseconds since the epoch, as Kafka timestamps are."""
    return int(when.timestamp() * 1000)


def from_ms(ms: int) -> str:
    """A Kafka timestamp as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
