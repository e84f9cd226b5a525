"""Replay: move the worker group's committed offsets back to a point in time.

After a new bundle is promoted, ``tagstream-worker rewind --by 24h`` makes the workers read the
last day again, so the results of that day are published anew by the new model (they carry its
``model_version``; consumers keep the newest result per ``source`` topic/partition/offset).

For each partition of the input topics, the broker's ``offsets_for_times`` gives the first offset
whose record timestamp is at or after the time; a partition with no such record goes to its end
offset. Offsets only ever move back: a partition whose committed offset is already before that
point, or that has no committed offset, is left as it is (moving it forward would skip records
never classified). Committed only while the group has no active members: a running worker
would overwrite the new offsets with its next commit, so the command refuses and says which
members to stop (the broker also rejects a commit from outside while members are active).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from worker.errors import BrokerError, Failure
from worker.ops.errors import GroupActiveError
from worker.ops.kafka import admin_client, consumer, kafka_call, require_topic
from worker.ops.timespec import from_ms
from worker.settings import WorkerSettings

# Group states in which no member holds partitions (the classic protocol's names).
INACTIVE_STATES = ("Empty", "Dead")


@dataclass(frozen=True)
class PartitionMove:
    """One partition's committed offset before and after, and why."""

    topic: str
    partition: int
    before: int | None  # committed offset (None: the group has none)
    after: int | None  # the offset to commit (None: left as it is)
    target: int | None  # the offset at the time (first record at or after it, else the end)
    note: str

    @property
    def replayed(self) -> int:
        """Records the group will read again."""
        return 0 if self.after is None or self.before is None else self.before - self.after


@dataclass
class RewindReport:
    group: str
    to_ms: int
    dry_run: bool
    moves: list[PartitionMove] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "topic/partition" -> error
    active: list[dict[str, Any]] = field(default_factory=list)  # members seen by a dry run

    @property
    def replayed(self) -> int:
        return sum(m.replayed for m in self.moves)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "to": from_ms(self.to_ms),
            "dry_run": self.dry_run,
            "replayed": self.replayed,
            "partitions": [
                {"topic": m.topic, "partition": m.partition, "before": m.before, "after": m.after,
                 "target": m.target, "note": m.note}
                for m in self.moves
            ],
            "errors": self.errors,
            "active_members": len(self.active),
        }

    def render(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        moved = [m for m in self.moves if m.after is not None]
        lines = [
            f"rewind group {self.group} to {from_ms(self.to_ms)}"
            f"{' (dry run: nothing committed)' if self.dry_run else ''}",
        ]
        rows = [("partition", "committed", "new", "re-read", "")]
        for m in self.moves:
            rows.append((
                f"{m.topic}/{m.partition}",
                "-" if m.before is None else str(m.before),
                "(unchanged)" if m.after is None else str(m.after),
                str(m.replayed) if m.after is not None else "0",
                m.note,
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append("  " + "  ".join(r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(4))
                         + (f"  {r[4]}" if r[4] else ""))
        lines.append(f"{verb} {len(moved)} of {len(self.moves)} partition(s); {self.replayed} record(s) to read again")
        if self.active:
            lines.append(f"the group has {len(self.active)} active member(s) now: a real run would be refused until they stop")
        for where, error in sorted(self.errors.items()):
            lines.append(f"  FAILED {where}: {error}")
        if moved and not self.dry_run and not self.errors:
            lines.append("start the workers again: they resume from the new offsets and publish new results")
        return "\n".join(lines)


def active_members(admin: Any, group: str) -> list[dict[str, Any]]:
    """The group's members (empty when it has none or does not exist)."""
    described = kafka_call(f"describing group {group}", lambda: admin.describe_groups([group])).get(group, {})
    if described.get("group_state") in INACTIVE_STATES:
        return []
    return list(described.get("members") or [])


def rewind(
    settings: WorkerSettings,
    *,
    to_ms: int,
    group: str | None = None,
    topics: list[str] | None = None,
    dry_run: bool = False,
) -> RewindReport:
    """Move ``group``'s committed offsets on ``topics`` back to ``to_ms`` (module docstring).

    Raises GroupActiveError (nothing changed) while the group has members, unless ``dry_run``
    (which only reads, so it may preview the plan while the workers run); BrokerError when
    Kafka refuses or a topic does not exist.
    """
    group = group or settings.group_id
    report = RewindReport(group, to_ms, dry_run)
    with admin_client(settings) as admin, consumer(settings) as client:
        members = active_members(admin, group)
        if members and not dry_run:
            raise GroupActiveError(group, members, _active_message(group, members))
        report.active = members  # a dry run may preview while the workers run
        committed = kafka_call(f"reading group {group}'s offsets", lambda: admin.list_group_offsets(group)).get(group, {})
        chosen = _topics(settings, topics, committed)
        tps = [TopicPartition(t, p) for t in chosen for p in require_topic(client, t, "--topic")]
        by_time = kafka_call("finding the offsets at that time", lambda: client.offsets_for_times({tp: to_ms for tp in tps}))
        ends = kafka_call("reading the end offsets", lambda: client.end_offsets(tps))
        starts = kafka_call("reading the start offsets", lambda: client.beginning_offsets(tps))
        for tp in tps:
            before = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None
            report.moves.append(_move(tp, before, by_time.get(tp), ends[tp], starts[tp], to_ms))
        changes = {TopicPartition(m.topic, m.partition): m.after for m in report.moves if m.after is not None}
        if changes and not dry_run:
            # A member that joined since the check makes the broker refuse (UNKNOWN_MEMBER_ID).
            joined = active_members(admin, group)
            if joined:
                raise GroupActiveError(group, joined, _active_message(group, joined))
            offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in changes.items()}
            results = kafka_call(f"committing group {group}'s new offsets", lambda: admin.alter_group_offsets(group, offsets))
            for tp, error in results.items():
                if getattr(error, "errno", 0):
                    report.errors[f"{tp.topic}/{tp.partition}"] = f"{error.__name__} (a worker may have joined the group meanwhile)"
    return report


def _topics(settings: WorkerSettings, topics: list[str] | None, committed: dict[TopicPartition, Any]) -> list[str]:
    if topics:
        return list(dict.fromkeys(topics))
    if settings.input_topics:
        return list(settings.input_topics)
    import re

    pattern = re.compile(settings.subscription_pattern() or "")
    matched = sorted({tp.topic for tp in committed if pattern.match(tp.topic)})
    if not matched:
        raise BrokerError(
            f"the group has no committed offsets on topics matching TAGSTREAM_INPUT_PATTERN={settings.input_pattern!r}:"
            " nothing to rewind (name the topics with --topic)",
            Failure.TOPIC_MISSING,
        )
    return matched


def _move(tp: TopicPartition, before: int | None, at_time: Any, end: int, start: int, to_ms: int) -> PartitionMove:
    when = from_ms(to_ms)
    if at_time is None:
        target, note = end, f"no record at or after {when}: the end offset"
    else:
        target = at_time.offset
        note = f"first record at or after {when} ({from_ms(at_time.timestamp)})"
        if target == start and at_time.timestamp > to_ms:
            note = (f"the partition's oldest record ({from_ms(at_time.timestamp)}) is after {when}:"
                    " from the start (older records, if any, are past retention)")
    if before is None:
        return PartitionMove(tp.topic, tp.partition, None, None, target,
                             "no committed offset: the group starts at TAGSTREAM_AUTO_OFFSET_RESET; left as it is")
    if target >= before:
        return PartitionMove(tp.topic, tp.partition, before, None, target,
                             f"{note} is not before the committed offset; left as it is (never moved forward)")
    return PartitionMove(tp.topic, tp.partition, before, target, target, note)


def _active_message(group: str, members: list[dict[str, Any]]) -> str:
    lines = [
        f"group {group} has {len(members)} active member(s); stop them first, or the workers would overwrite the new"
        " offsets with their next commit:"
    ]
    for m in members:
        parts = []
        for a in (m.get("member_assignment") or {}).get("assigned_partitions") or []:
            parts += [f"{a['topic']}/{p}" for p in a.get("partitions") or []]
        lines.append(
            f"  {m.get('client_id', '?')} on {str(m.get('client_host', '?')).lstrip('/')}"
            f" (member {m.get('member_id', '?')}): {', '.join(parts) or 'no partitions'}"
        )
    lines += [
        "On Kubernetes with KEDA, pause the workers at zero replicas, wait until their pods are gone, rewind, resume:",
        '  kubectl -n tagstream annotate scaledobject tagstream-worker autoscaling.keda.sh/paused-replicas="0" --overwrite',
        "  kubectl -n tagstream wait --for=delete pod -l app.kubernetes.io/name=tagstream-worker --timeout=120s",
        "  ... tagstream-worker rewind ...",
        "  kubectl -n tagstream annotate scaledobject tagstream-worker autoscaling.keda.sh/paused-replicas-",
        "Without KEDA: kubectl -n tagstream scale deploy/tagstream-worker --replicas 0 (and back afterwards);"
        " elsewhere, stop every tagstream-worker run of this group (SIGTERM drains and commits).",
    ]
    return "\n".join(lines)
