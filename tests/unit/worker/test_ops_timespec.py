"""Times and durations of the ops commands (--since, --to, --by), and redrive's group per selection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.ops.errors import UsageError
from worker.ops.redrive import Selection, check_reasons
from worker.ops.timespec import from_ms, parse_datetime, parse_duration, parse_since, to_ms


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("24h", 86400), ("1h30m", 5400), ("7d", 604800), ("1w", 604800), ("0.5h", 1800), ("45s", 45)],
)
def test_durations(text: str, seconds: int) -> None:
    """A number and a unit (s, m, h, d, w), chainable, reads as that many seconds."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["24", "h", "24 hours", "-1h", "0m", "1h-30m"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    """Anything else is a UsageError naming the accepted form."""
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


def test_datetimes_are_utc_unless_a_zone_is_given() -> None:
    """ISO 8601 without a zone is UTC; with a zone or Z it is honoured; a date alone is midnight UTC."""
    assert parse_datetime("2026-11-24T08:00") == datetime(2026, 11, 24, 8, tzinfo=UTC)
    assert parse_datetime("2026-11-24T08:00:00Z") == datetime(2026, 11, 24, 8, tzinfo=UTC)
    assert parse_datetime("2026-11-24T09:00+01:00") == datetime(2026, 11, 24, 8, tzinfo=UTC)
    assert parse_datetime("2026-11-24") == datetime(2026, 11, 24, tzinfo=UTC)
    with pytest.raises(UsageError, match="ISO 8601"):
        parse_datetime("yesterday")


def test_since_takes_a_time_or_a_duration_back_from_now() -> None:
    """--since accepts both forms and refuses others with both named."""
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert parse_since("24h", now) == datetime(2026, 11, 24, 12, tzinfo=UTC)
    assert parse_since("2026-11-20", now) == datetime(2026, 11, 20, tzinfo=UTC)
    with pytest.raises(UsageError, match="neither"):
        parse_since("soon", now)


def test_kafka_timestamps_round_trip() -> None:
    """Milliseconds since the epoch and the printed UTC time agree."""
    when = datetime(2026, 11, 24, 8, 0, 1, tzinfo=UTC)
    assert to_ms(when) == 1_795_507_201_000
    assert from_ms(to_ms(when)) == "2026-11-24T08:00:01Z"


def test_redrive_group_follows_the_selection_not_the_limit() -> None:
    """The same selection resumes in the same group; another reason, target or --force gets its own."""
    base = Selection("events.dlq", reasons=frozenset({"inference_failed"}))
    assert base.group() == Selection("events.dlq", reasons=frozenset({"inference_failed"})).group()
    assert base.group().startswith("tagstream-redrive.events.dlq.")
    others = {
        Selection("events.dlq").group(),
        Selection("events.dlq", reasons=frozenset({"invalid_json"})).group(),
        Selection("events.dlq", to_topic="retry", reasons=frozenset({"inference_failed"})).group(),
        Selection("events.dlq", reasons=frozenset({"inference_failed"}), force=True).group(),
    }
    assert base.group() not in others and len(others) == 4


def test_reasons_must_be_dead_letter_reasons() -> None:
    """--reason takes the labels of worker/errors.py's dead-letter failures only."""
    assert check_reasons(["invalid_utf8", "inference_failed"]) == {"invalid_utf8", "inference_failed"}
    with pytest.raises(UsageError, match="batch_failed"):
        check_reasons(["batch_failed"])
