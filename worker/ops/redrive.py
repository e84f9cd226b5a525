"""``tagstream-worker dlq redrive``: re-publishing dead letters once their cause is fixed.

``redrive`` re-publishes dead letters: the original key, value bytes and headers, minus the
headers tagstream added when dead-lettering (``worker.events.DEAD_LETTER_HEADERS``), plus
``tagstream.redriven_from: <dlq topic>/<partition>/<offset>``, to ``--to`` or else to the topic
each came from. It reads up to the dead-letter topic's end as it was at the start (a record
that fails again and is dead-lettered anew is not redriven again in the same run) and tracks
its position in a consumer group of its own: after each re-published record is acknowledged by
the broker, the position past it is committed, so an interrupted redrive run again resumes where
it stopped, repeating nothing (at most the one record in flight at the moment of a crash).
The group's name is derived from the dead-letter topic and the selection (``--to``,
``--reason``, ``--since``, ``--force``), so a redrive of other reasons later starts from the
beginning instead of behind records it never considered.

Skipped, each with a count:
- records outside the selection (``--reason``, ``--since``);
- records that would fail again for the same kind of reason: the worker's own ``parse_record``
  with the worker's settings still turns them into a dead letter (invalid UTF-8, invalid JSON,
  a missing text field, ...); ``--force`` redrives them anyway;
- bounded copies of oversized inputs (``tagstream.truncated: true``): never redriven, not even
  with ``--force``, since they are not the input;
- records without ``tagstream.reason``: not written by tagstream; and, without ``--to``, records
  that do not say which topic they came from.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from worker.errors import DEAD_LETTER_REASONS, BrokerError, Failure
from worker.events import (
    REASON_HEADER,
    SOURCE_TOPIC_HEADER,
    DeadLetter,
    Header,
    ParseConfig,
    parse_record,
)
from worker.ops.dlq import DeadLetterRecord, progress_bar, scan, topic_bounds
from worker.ops.errors import UsageError
from worker.ops.kafka import (
    ACK_TIMEOUT_S,
    admin_client,
    consumer,
    kafka_call,
    producer,
    require_topic,
)
from worker.settings import WorkerSettings

REDRIVEN_FROM_HEADER = "tagstream.redriven_from"
GROUP_PREFIX = "tagstream-redrive"
# Positions past skipped records are committed at least this often (and with every re-published
# record): a crash then re-considers at most this many skips, which is harmless.
SKIP_COMMIT_EVERY = 500

REASON_LABELS = tuple(f.label for f in DEAD_LETTER_REASONS)


@dataclass(frozen=True)
class Selection:
    """Which dead letters to re-publish, and where."""

    dlq_topic: str
    to_topic: str | None = None  # None: each record's source topic
    reasons: frozenset[str] = frozenset()  # empty: every reason
    since: str | None = None  # as typed (part of the group name)
    since_ms: int | None = None
    force: bool = False

    def group(self) -> str:
        """The consumer group that keeps this selection's progress."""
        key = json.dumps(
            {"to": self.to_topic, "reasons": sorted(self.reasons), "since": self.since, "force": self.force},
            sort_keys=True,
        )
        return f"{GROUP_PREFIX}.{self.dlq_topic}.{hashlib.sha256(key.encode()).hexdigest()[:10]}"


@dataclass
class RedriveReport:
    """What a redrive did (or, dry, would do)."""

    selection: Selection
    group: str
    dry_run: bool
    resumed_from: dict[int, int] = field(default_factory=dict)  # partition -> offset started at
    end: dict[int, int] = field(default_factory=dict)  # partition -> end offset at the start
    considered: int = 0
    redriven: Counter[str] = field(default_factory=Counter)  # by target topic
    redriven_by_reason: Counter[str] = field(default_factory=Counter)
    would_fail_again: Counter[str] = field(default_factory=Counter)  # by the reason parsing gives now
    truncated: int = 0
    filtered: int = 0
    foreign: int = 0
    no_target: int = 0
    stopped_by_limit: bool = False
    interrupted: bool = False

    @property
    def total_redriven(self) -> int:
        return sum(self.redriven.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.selection.dlq_topic,
            "to": self.selection.to_topic,
            "group": self.group,
            "dry_run": self.dry_run,
            "considered": self.considered,
            "redriven": dict(self.redriven),
            "redriven_by_reason": dict(self.redriven_by_reason),
            "skipped": {
                "would_fail_again": dict(self.would_fail_again),
                "truncated": self.truncated,
                "outside_selection": self.filtered,
                "not_from_tagstream": self.foreign,
                "no_source_topic": self.no_target,
            },
            "resumed_from": {str(p): o for p, o in sorted(self.resumed_from.items())},
            "stopped_by_limit": self.stopped_by_limit,
            "interrupted": self.interrupted,
        }

    def render(self) -> str:
        verb = "would redrive" if self.dry_run else "redriven"
        s = self.selection
        where = s.to_topic or "each record's source topic"
        start = ", ".join(f"{p}: {o}/{self.end.get(p, '?')}" for p, o in sorted(self.resumed_from.items()))
        lines = [
            f"redrive {s.dlq_topic} -> {where}{' (dry run: nothing sent, nothing committed)' if self.dry_run else ''}",
            f"  progress group {self.group}; started at partition: offset/end {start or '(nothing to read)'}",
            f"  considered {self.considered}, {verb} {self.total_redriven}",
        ]
        for topic, n in sorted(self.redriven.items()):
            lines.append(f"    to {topic}: {n}")
        for reason, n in self.redriven_by_reason.most_common():
            lines.append(f"    dead-lettered as {reason}: {n}")
        skipped = sum(self.would_fail_again.values())
        if skipped:
            detail = ", ".join(f"{r}: {n}" for r, n in self.would_fail_again.most_common())
            lines.append(f"  skipped, would fail again ({detail}): {skipped} (--force sends them anyway)")
        if self.truncated:
            lines.append(f"  skipped, truncated copies of oversized inputs (never redriven): {self.truncated}")
        if self.filtered:
            lines.append(f"  skipped, outside --reason/--since: {self.filtered}")
        if self.foreign:
            lines.append(f"  skipped, no {REASON_HEADER} header (not written by tagstream): {self.foreign}")
        if self.no_target:
            lines.append(f"  skipped, no {SOURCE_TOPIC_HEADER} header and no --to: {self.no_target}")
        if self.stopped_by_limit:
            lines.append("  stopped at --limit: run the same command again to continue")
        elif self.interrupted:
            lines.append("  interrupted: run the same command again to resume (nothing is sent twice)")
        elif not self.dry_run:
            lines.append("  done: the group's position is at the end offsets read at the start")
        return "\n".join(lines)


class _RedrivenRecord:
    """The dead letter as the worker would read it again, for ``parse_record``."""

    def __init__(self, record: DeadLetterRecord) -> None:
        source = record.source
        self.topic = source[0] if source else record.topic
        self.partition = source[1] if source else record.partition
        self.offset = source[2] if source else record.offset
        self.timestamp = record.timestamp
        self.key = record.key
        self.value = record.value
        self.headers = record.original_headers()


def redrive(
    settings: WorkerSettings,
    selection: Selection,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    group: str | None = None,
    progress: bool = False,
    on_record: Callable[[RedriveReport], None] | None = None,
) -> RedriveReport:
    """Re-publish the selected dead letters (module docstring); returns what was done.

    ``on_record`` is called after each record is fully handled (sent, acknowledged and
    committed, or skipped); a KeyboardInterrupt from it or from the user stops the run cleanly
    with ``report.interrupted`` set.
    """
    group = group or selection.group()
    report = RedriveReport(selection, group, dry_run)
    parse_config = ParseConfig(settings.input_format, settings.text_field, settings.id_field, settings.max_payload_bytes)
    with consumer(settings, group_id=group) as client, _sender(settings, dry_run) as send:
        begin, end = topic_bounds(client, selection.dlq_topic)
        if selection.to_topic is not None:
            if selection.to_topic == selection.dlq_topic:
                raise BrokerError(f"--to {selection.to_topic} is the dead-letter topic itself: that would loop",
                                  Failure.SETTINGS_INVALID)
            require_topic(client, selection.to_topic, "--to")
        start = _start_offsets(settings, client, group, selection, begin, end)
        report.resumed_from = {tp.partition: o for tp, o in start.items()}
        report.end = {tp.partition: o for tp, o in end.items()}
        known_targets: set[str] = set()
        pending: dict[TopicPartition, int] = {}  # positions past skipped records, not committed yet

        def commit() -> None:
            if pending and not dry_run:
                offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in pending.items()}
                kafka_call(f"committing the redrive's position (group {group})", lambda: client.commit(offsets))
            pending.clear()

        total = sum(max(0, end[tp] - start[tp]) for tp in start)
        try:
            with progress_bar(total, f"redriving {selection.dlq_topic}", progress) as bar:
                for record in scan(client, start, end):
                    if limit is not None and report.total_redriven >= limit:
                        report.stopped_by_limit = True
                        break
                    tp = TopicPartition(record.topic, record.partition)
                    report.considered += 1
                    target = _judge(record, selection, parse_config, report)
                    if target is not None:
                        if target not in known_targets:
                            require_topic(client, target, "the source topic (tagstream.source.topic)")
                            known_targets.add(target)
                        headers = [*record.original_headers(),
                                   (REDRIVEN_FROM_HEADER, f"{record.topic}/{record.partition}/{record.offset}".encode())]
                        send(target, record, headers)
                        report.redriven[target] += 1
                        report.redriven_by_reason[record.reason or "?"] += 1
                        pending[tp] = record.offset + 1
                        commit()  # after the broker acknowledged the record: never sent twice
                    else:
                        pending[tp] = record.offset + 1
                        if report.considered % SKIP_COMMIT_EVERY == 0:
                            commit()
                    bar.update(1)
                    if on_record is not None:
                        on_record(report)
        except KeyboardInterrupt:
            report.interrupted = True
        commit()
    return report


def _judge(record: DeadLetterRecord, selection: Selection, config: ParseConfig, report: RedriveReport) -> str | None:
    """The topic to re-publish ``record`` to, or None (the skip is counted in ``report``)."""
    reason = record.reason
    if reason is None:
        report.foreign += 1
        return None
    if (selection.reasons and reason not in selection.reasons) or (
        selection.since_ms is not None and record.timestamp < selection.since_ms
    ):
        report.filtered += 1
        return None
    if record.truncated:
        report.truncated += 1
        return None
    if not selection.force:
        again = parse_record(_RedrivenRecord(record), config, received=0.0)
        if isinstance(again, DeadLetter):
            report.would_fail_again[again.reason.label] += 1
            return None
    source = record.source
    target = selection.to_topic or (source[0] if source else None)
    if target is None:
        report.no_target += 1
    return target


def _start_offsets(
    settings: WorkerSettings,
    client: KafkaConsumer,
    group: str,
    selection: Selection,
    begin: dict[TopicPartition, int],
    end: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """The group's committed position, else --since's first offset, else the start."""
    with admin_client(settings) as admin:
        committed = kafka_call(f"reading group {group}'s offsets", lambda: admin.list_group_offsets(group)).get(group, {})
    start: dict[TopicPartition, int] = {}
    fresh = [tp for tp in begin if tp not in committed or committed[tp].offset < 0]
    by_time: dict[TopicPartition, Any] = {}
    if fresh and selection.since_ms is not None:
        since_ms = selection.since_ms
        by_time = kafka_call("finding --since's offsets", lambda: client.offsets_for_times({tp: since_ms for tp in fresh}))
    for tp in begin:
        if tp in committed and committed[tp].offset >= 0:
            start[tp] = max(begin[tp], min(committed[tp].offset, end[tp]))
        elif by_time.get(tp) is not None:
            start[tp] = by_time[tp].offset
        elif selection.since_ms is not None:
            start[tp] = end[tp]  # nothing dead-lettered since then
        else:
            start[tp] = begin[tp]
    return start


class _Sender:
    def __init__(self, client: Any) -> None:
        self._client = client

    def __call__(self, topic: str, record: DeadLetterRecord, headers: list[Header]) -> None:
        client = self._client
        if client is None:  # dry run
            return
        future = kafka_call(
            f"sending to {topic}", lambda: client.send(topic, key=record.key, value=record.value, headers=headers)
        )
        try:
            future.get(timeout=ACK_TIMEOUT_S)
        except Exception as exc:
            raise BrokerError(
                f"{topic} did not acknowledge the redrive of {record.topic}/{record.partition}/{record.offset}:"
                f" {exc}; nothing past it was committed, run the command again to retry",
                Failure.DELIVERY_FAILED,
            ) from exc


@contextmanager
def _sender(settings: WorkerSettings, dry_run: bool) -> Iterator[_Sender]:
    """A sender on a producer for a real run; one that sends nothing for a dry run."""
    if dry_run:
        yield _Sender(None)
        return
    with producer(settings) as client:
        yield _Sender(client)


def check_reasons(reasons: Iterable[str]) -> frozenset[str]:
    """The --reason values, each a dead-letter reason label (UsageError listing them if not)."""
    chosen = frozenset(reasons)
    unknown = sorted(chosen - set(REASON_LABELS))
    if unknown:
        raise UsageError(f"--reason {', '.join(unknown)}: not a dead-letter reason; use one of {', '.join(REASON_LABELS)}")
    return chosen
