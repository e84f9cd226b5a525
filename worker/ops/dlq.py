"""Dead-letter topics: reading their records back, and ``tagstream-worker dlq stats``.

``scan`` reads a topic's partitions from given offsets up to end offsets taken before (so it
stops, even while new dead letters arrive). ``DeadLetterRecord`` reads the headers the worker
wrote (``worker/events.py``): reason, source topic/partition/offset, truncation.

``dlq_stats`` reads a dead-letter topic from its start to its end at the time of the call,
without a consumer group (nothing changes), and counts by reason, by source topic and
partition, oldest and newest. Re-publishing is ``worker/ops/redrive.py``.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from worker.errors import BrokerError, Failure
from worker.events import (
    DEAD_LETTER_HEADERS,
    REASON_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    TRUNCATED_HEADER,
    Header,
)
from worker.ops.kafka import consumer, kafka_call, require_topic
from worker.ops.timespec import from_ms
from worker.settings import WorkerSettings

# A scan that receives nothing for this long while records remain below the end offsets has
# lost the broker (a healthy one answers a fetch in well under a second).
STALL_S = 30.0


@dataclass(frozen=True)
class DeadLetterRecord:
    """One record of a dead-letter topic, read back."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[Header]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return (value or b"").decode("utf-8", "replace")
        return None

    @property
    def reason(self) -> str | None:
        return self.header(REASON_HEADER)

    @property
    def truncated(self) -> bool:
        return (self.header(TRUNCATED_HEADER) or "").strip().lower() == "true"

    @property
    def source(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) it was read from, when the headers say."""
        topic = self.header(SOURCE_TOPIC_HEADER)
        try:
            partition = int(self.header(SOURCE_PARTITION_HEADER) or "")
            offset = int(self.header(SOURCE_OFFSET_HEADER) or "")
        except ValueError:
            return None
        return (topic, partition, offset) if topic else None

    def original_headers(self) -> list[Header]:
        """The input's own headers: everything but tagstream's dead-letter headers."""
        return [(k, v) for k, v in self.headers if k not in DEAD_LETTER_HEADERS]


def scan(client: KafkaConsumer, start: dict[TopicPartition, int], end: dict[TopicPartition, int]) -> Iterator[DeadLetterRecord]:
    """Every record from ``start`` up to (not including) ``end``, per partition, then stop."""
    todo = {tp for tp in start if start[tp] < end[tp]}
    if not todo:
        return
    client.assign(sorted(todo))
    for tp in todo:
        client.seek(tp, start[tp])
    quiet_since = time.monotonic()
    while todo:
        batches = kafka_call("reading", lambda: client.poll(timeout_ms=500, max_records=500))
        for tp, records in batches.items():
            for r in records:
                if r.offset >= end[tp]:
                    break
                yield DeadLetterRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, list(r.headers or ()))
        if batches:
            quiet_since = time.monotonic()
        for tp in list(todo):
            if client.position(tp) >= end[tp]:
                todo.discard(tp)
                client.pause(tp)
        if todo and time.monotonic() - quiet_since > STALL_S:
            left = ", ".join(f"{tp.topic}/{tp.partition} at {client.position(tp)} of {end[tp]}" for tp in sorted(todo))
            raise BrokerError(f"no records received for {STALL_S:.0f} s with some still to read ({left})",
                              Failure.KAFKA_TRANSIENT)


def topic_bounds(client: KafkaConsumer, topic: str) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    tps = [TopicPartition(topic, p) for p in require_topic(client, topic, "--from")]
    begin = kafka_call("reading the start offsets", lambda: client.beginning_offsets(tps))
    end = kafka_call("reading the end offsets", lambda: client.end_offsets(tps))
    return begin, end


# -- stats ------------------------------------------------------------------------------------


@dataclass
class DlqStats:
    """What a dead-letter topic holds (record timestamps are when each was dead-lettered)."""

    topic: str
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (start, end)
    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_source: Counter[tuple[str, int]] = field(default_factory=Counter)
    truncated: int = 0
    foreign: int = 0  # records without tagstream.reason
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, record: DeadLetterRecord) -> None:
        self.total += 1
        reason = record.reason
        if reason is None:
            self.foreign += 1
        else:
            self.by_reason[reason] += 1
        source = record.source
        if source is not None:
            self.by_source[(source[0], source[1])] += 1
        if record.truncated:
            self.truncated += 1
        if record.timestamp >= 0:
            self.oldest_ms = record.timestamp if self.oldest_ms is None else min(self.oldest_ms, record.timestamp)
            self.newest_ms = record.timestamp if self.newest_ms is None else max(self.newest_ms, record.timestamp)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "total": self.total,
            "partitions": {str(p): {"start": s, "end": e} for p, (s, e) in sorted(self.offsets.items())},
            "by_reason": dict(self.by_reason.most_common()),
            "by_source": [{"topic": t, "partition": p, "count": n} for (t, p), n in sorted(self.by_source.items())],
            "truncated": self.truncated,
            "not_from_tagstream": self.foreign,
            "oldest": from_ms(self.oldest_ms) if self.oldest_ms is not None else None,
            "newest": from_ms(self.newest_ms) if self.newest_ms is not None else None,
        }

    def render(self) -> str:
        spans = ", ".join(f"{p}: {s}-{e}" for p, (s, e) in sorted(self.offsets.items()))
        lines = [f"{self.topic}: {self.total} dead letter(s) in {len(self.offsets)} partition(s) (offsets {spans})"]
        if self.total == 0:
            return lines[0]
        lines.append(f"  oldest {from_ms(self.oldest_ms or 0)}, newest {from_ms(self.newest_ms or 0)} (when dead-lettered)")
        lines.append("  by reason:")
        width = max(len(r) for r in self.by_reason) if self.by_reason else 0
        lines += [f"    {reason:<{width}}  {n:>8}" for reason, n in self.by_reason.most_common()]
        if self.by_source:
            lines.append("  by source topic/partition:")
            names = {f"{t}/{p}": n for (t, p), n in sorted(self.by_source.items())}
            width = max(len(k) for k in names)
            lines += [f"    {name:<{width}}  {n:>8}" for name, n in names.items()]
        lines.append(f"  truncated copies of oversized inputs: {self.truncated} (never redriven)")
        if self.foreign:
            lines.append(f"  records without {REASON_HEADER} (not written by tagstream): {self.foreign}")
        return "\n".join(lines)


def dlq_stats(settings: WorkerSettings, topic: str, progress: bool = False) -> DlqStats:
    """Count what ``topic`` holds from its start to its current end."""
    stats = DlqStats(topic)
    with consumer(settings) as client:
        begin, end = topic_bounds(client, topic)
        stats.offsets = {tp.partition: (begin[tp], end[tp]) for tp in sorted(begin)}
        total = sum(end[tp] - begin[tp] for tp in begin)
        with progress_bar(total, f"reading {topic}", progress) as bar:
            for record in scan(client, begin, end):
                stats.add(record)
                bar.update(1)
    return stats


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int, what: str, enabled: bool) -> Any:
    """A progress bar on stderr for long reads (only on a terminal)."""
    if not enabled or total < 1000 or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="rec", file=sys.stderr, leave=False)
