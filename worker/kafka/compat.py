"""Fixes for kafka-python 3.0 bugs that can stop a worker consuming forever.

1. The group-join bug (``apply_join_fix``)

The bug (kafka-python 3.0.12, ``BaseCoordinator.join_group_async``): a group join runs as a
task on the client's I/O loop while ``consumer.poll(timeout_ms=...)`` waits for it. When the
poll's timeout expires first (a rebalance listener that finishes in-flight work, or a JoinGroup
the broker holds until every member rejoins, easily outlasts a 100 ms poll), the task goes on
and completes, but its result is never applied: the next poll either starts a fresh join
(dropping the completed one) or, when ``need_rejoin()`` has meanwhile become false (the group
leader updates its metadata snapshot while assigning), never looks at it again. The member
then holds no partitions, stays in REBALANCING, and the poll loop spins without consuming.
Seen here with one worker whose rebalance was triggered by a metadata change while its revoke
listener waited for in-flight batches.

The fix: a join task that completed while nobody waited is applied by the next poll (its
assignment installed and the listeners called, exactly as the library does when the waiter is
still there), and ``need_rejoin()`` stays true while such a task exists so that the next poll
gets there. Applied only to kafka-python 3.0.x, whose code it was written against; a test
(tests/integration/worker/test_kafka_compat.py) reproduces the hang without it.

3. Consumers create the topics they read (``forbid_topic_creation``)

kafka-python 3.0.12 builds a client's ``ClusterMetadata`` without the consumer's
``allow_auto_create_topics``, so its metadata requests always allow creation: on a broker with
``auto.create.topics.enable`` (Apache Kafka's default), a worker whose input topic was deleted
created it again within a second, with the broker's default partitions and configs, and the
operator's own create (more partitions, say) then failed with TopicAlreadyExists. Found by
deleting an input topic under a running worker; confluent-kafka honours the setting.

4. Producers never forget a topic (``forget_producer_topics``)

A KafkaProducer refreshes the metadata of every topic it ever sent to, for its whole life, and
those requests allow creation: a deleted result topic came back (worker/kafka/topic_use.py).
The producer's topic set is replaced by one without the idle topics; the next refresh then
leaves them out, and a later send to one of them looks it up again as for a new topic.
``metadata_answered_within`` reads the same metadata's last answered refresh: a send's metadata
timeout with none answered meanwhile is a broker not answering, not a missing topic.

5. Acknowledgements in bulk (``after_each_produce_response``)

Not a bug: kafka-python reports each record's outcome through its own future, on the sender
thread, and has no call that says a produce response's records are all reported. Handing each
acknowledgement to the sink on its own (the offset tracker's lock, a counter, a histogram per
record) cost the sender thread some 3 µs an event. The sender's handler of a produce response is
wrapped so that a hook runs once it has returned: the at-least-once producer queues each
record's acknowledgement and hands the queue to the sink there, in one call, as the confluent
backend does once per poll.

6. A second rebalance at every start (``snapshot_subscribed_metadata``)

The group leader keeps the subscribed topics' partitions it assigned from (the *assignment
snapshot*) and rejoins when the *metadata snapshot* differs. kafka-python builds the metadata
snapshot when the consumer is created, over an empty subscription, and rebuilds it only on the
next metadata response. A worker holds its input topics' metadata before it subscribes (start-up
checks), so its first assignment covers every partition while the snapshot it records is still
empty: the next metadata response, some 100-300 ms later, differs and forces a second rebalance.
Every kafka-python worker was revoked and reassigned once right after it started, its revoke
listener waiting for the batches already in flight (for up to 10 s behind a hung model call).
The snapshot is rebuilt from the metadata the client already holds right after subscribing,
which is what the next metadata response would do. Found comparing the workers' logs in a
benchmark: confluent-kafka assigned once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kafka
from kafka import errors as kafka_errors
from kafka.consumer.fetcher import Fetcher
from kafka.coordinator.base import BaseCoordinator
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.structs import MemberState

from worker.events import INVALID_HEADERS_MARKER  # the first header of a record re-read by (a)

_PATCHED_ATTR = "_tagstream_join_fix"


def needs_fix(version: str = kafka.__version__) -> bool:
    return version.startswith("3.0.")


def forbid_topic_creation(client: Any) -> bool:
    """Make a KafkaConsumer's metadata requests say what its ``allow_auto_create_topics=False``
    says (section 3); call before it subscribes. Returns whether the setting is now in force."""
    cluster = getattr(client, "_cluster", None)
    config = getattr(cluster, "config", None)
    if not isinstance(config, dict) or "allow_auto_create_topics" not in config:
        return False  # another layout: nothing known to mend
    config["allow_auto_create_topics"] = False
    return True


def forget_producer_topics(producer: Any, topics: list[str]) -> bool:
    """Stop refreshing these topics' metadata (section 4); returns False on an unknown layout."""
    metadata: Any = getattr(producer, "_metadata", None)
    tracked = getattr(metadata, "_topics", None)
    if not isinstance(tracked, set):
        return False
    gone = set(topics)
    # New objects, not changes in place: the sender thread may be reading the old ones. Without
    # their cached partitions, a later send to one of these topics adds it back and waits for its
    # metadata, as for a new topic; with them, its records could wait for a leader that no refresh
    # asks for any more.
    metadata._topics = tracked - gone
    partitions = getattr(metadata, "_partitions", None)
    if isinstance(partitions, dict):
        metadata._partitions = {topic: p for topic, p in partitions.items() if topic not in gone}
    return True


def metadata_answered_within(producer: Any, window_ms: float) -> bool:
    """Whether a KafkaProducer's last answered metadata request is at most ``window_ms`` old (True
    when that cannot be told: another layout)."""
    last = getattr(getattr(producer, "_metadata", None), "_last_successful_refresh_ms", None)
    if not isinstance(last, int | float):
        return True
    return time.monotonic() * 1000 - last <= window_ms


def brokers_silent_for(client: Any, silent_s: float, now: float | None = None) -> float:
    """Seconds since a KafkaConsumer's brokers last answered anything, when they keep their
    connections but answer nothing; 0 otherwise (and when that cannot be told: another layout).

    Silent: a request has waited ``silent_s`` on a connection that heard nothing meanwhile, and no
    connection has heard anything for ``silent_s``. Idle connections (nothing asked) only say when
    a broker last answered, and a connection whose oldest request is one the broker may hold on
    purpose says nothing: a JoinGroup, whose own deadline (the rebalance timeout) is longer than
    ``request_timeout_ms``. A broker answers a connection's requests in order, so its oldest request
    is the one to go by. Not every waiting connection must have waited ``silent_s``: the group
    coordinator's connection waits only from its next heartbeat, up to 3 s after the broker froze,
    and waiting for it too turned /readyz 503 13-14 s into a freeze instead of 10 s."""
    manager = getattr(client, "_manager", None)
    conns = getattr(manager, "_conns", None)
    held_s = getattr(manager, "config", {}).get("request_timeout_ms", 30_000) / 1000
    if not isinstance(conns, dict):
        return 0.0
    now = time.monotonic() if now is None else now
    waited = 0.0  # the longest a request has waited on a connection that heard nothing meanwhile
    heard = []  # when each connected connection last read anything
    try:
        for conn in list(conns.values()):  # the client's I/O loop adds and drops connections
            heard_at = getattr(conn.transport, "last_read", None)  # no transport: not connected yet
            if heard_at is not None:
                heard.append(heard_at)
            requests = conn.in_flight_requests
            if not requests:
                continue
            _, _, sent_at, deadline, _ = requests[0]
            if deadline - sent_at > held_s + 1:  # a JoinGroup: max(request timeout, rebalance timeout + 5 s)
                continue
            waited = max(waited, now - max(sent_at, sent_at if heard_at is None else heard_at))
    except (AttributeError, IndexError, TypeError, ValueError, RuntimeError):
        return 0.0  # a request answered while we looked, or another layout
    quiet = now - max(heard) if heard else waited
    return quiet if waited > silent_s and quiet > silent_s else 0.0


def after_each_produce_response(producer: Any, hook: Callable[[], None]) -> bool:
    """Run ``hook`` on a KafkaProducer's sender thread after each produce response it handles
    (section 5), its records' futures all completed by then; call before the first send. Returns
    False on an unknown layout (nothing changed)."""
    sender = getattr(producer, "_sender", None)
    handle = getattr(sender, "_handle_produce_response", None)
    if not callable(handle):
        return False

    def handled(*args: Any, **kwargs: Any) -> Any:
        try:
            return handle(*args, **kwargs)
        finally:
            hook()

    sender._handle_produce_response = handled  # type: ignore[union-attr]  # read per request (add_callback)
    return True


def snapshot_subscribed_metadata(consumer: Any) -> bool:
    """Rebuild a subscribed KafkaConsumer's metadata snapshot from the metadata its client holds
    (section 6); returns False on an unknown layout (nothing changed)."""
    coordinator = getattr(consumer, "_coordinator", None)
    subscription = getattr(consumer, "_subscription", None)
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    build = getattr(coordinator, "_build_metadata_snapshot", None)
    if not callable(build) or subscription is None or cluster is None or not hasattr(coordinator, "_metadata_snapshot"):
        return False
    coordinator._metadata_snapshot = build(subscription, cluster)  # type: ignore[union-attr]
    return True


def apply_join_fix() -> bool:
    """Patch the coordinator once per process; returns whether the fix is in place."""
    if getattr(BaseCoordinator, _PATCHED_ATTR, False):
        return True
    if not needs_fix():
        return False
    original_join = BaseCoordinator.join_group_async
    original_need_rejoin = ConsumerCoordinator.need_rejoin

    async def join_group_async(self: Any, timeout_ms: Any = None) -> Any:
        task = self._join_task
        if task is not None and task.is_done and self.rejoining:
            # A join completed after its waiter gave up: apply it now instead of dropping it.
            self._join_task = None
            if task.succeeded():
                with self._lock:
                    self.rejoining = False
                    self.rejoin_needed = False
                    self.state = MemberState.STABLE
                    self._enable_heartbeat()
                await self._on_join_complete_async(
                    self._generation.generation_id,
                    self._generation.member_id,
                    self._generation.protocol,
                    task.value,
                )
                if not self.need_rejoin():
                    return True
            # A failed join: its response handler already requested a rejoin; retry as usual.
        return await original_join(self, timeout_ms)

    def need_rejoin(self: Any) -> bool:
        if getattr(self, "_join_task", None) is not None and getattr(self, "rejoining", False):
            return True  # a join is in flight or completed unapplied: poll must finish it
        return original_need_rejoin(self)

    BaseCoordinator.join_group_async = join_group_async  # type: ignore[method-assign]
    ConsumerCoordinator.need_rejoin = need_rejoin  # type: ignore[method-assign]
    setattr(BaseCoordinator, _PATCHED_ATTR, True)
    return True


# 2. Records the client cannot decode (``apply_unreadable_fix``)
#
# kafka-python decodes header keys as UTF-8 and, when one is not (other clients send such keys
# happily), raises CorruptRecordError from every poll() at that position, without saying which
# partition or offset: a poison pill inside the client, and the rest of that record batch with it.
# Two patches:
#
# a. ``DefaultRecordBatch.__next__``: a record whose header keys are not UTF-8 is read again with
#    the keys it cannot decode left out, and a first header ``INVALID_HEADERS_MARKER`` saying how
#    many; the worker dead-letters it (reason invalid_header) with its key and value intact.
# b. ``PartitionRecords.take``: any other CorruptRecordError (a batch failing its CRC) gets the
#    partition and offset it happened at (``UNREADABLE_AT``), so the backend can dead-letter that
#    offset by location and seek past it.

UNREADABLE_AT = "tagstream_unreadable_at"  # (TopicPartition, offset) set on CorruptRecordError
_UNREADABLE_PATCHED_ATTR = "_tagstream_unreadable_fix"


def apply_unreadable_fix() -> bool:
    """Patch the record batch reader and the fetcher once per process; returns whether they are in place."""
    from kafka.record.default_records import DefaultRecord, DefaultRecordBatch

    records_class = Fetcher.PartitionRecords
    if getattr(records_class, _UNREADABLE_PATCHED_ATTR, False):
        return True
    if not needs_fix():
        return False
    original_next = DefaultRecordBatch.__next__
    original_take = records_class.take

    def next_record(self: Any) -> Any:
        try:
            return original_next(self)
        except kafka_errors.CorruptRecordError as exc:
            if not isinstance(exc.__context__, UnicodeDecodeError):
                raise
            record = _read_record_keeping_utf8_headers(self, DefaultRecord)
            self._next_record_index += 1
            return record

    def take(self: Any, n: Any = None) -> Any:
        try:
            return original_take(self, n)
        except kafka_errors.CorruptRecordError as exc:
            setattr(exc, UNREADABLE_AT, (self.topic_partition, self.next_fetch_offset))
            raise

    DefaultRecordBatch.__next__ = next_record  # type: ignore[method-assign]
    DefaultRecordBatch.next = next_record  # type: ignore[attr-defined]
    records_class.take = take  # type: ignore[method-assign]
    setattr(records_class, _UNREADABLE_PATCHED_ATTR, True)
    return True


def _read_record_keeping_utf8_headers(batch: Any, record_class: Any) -> Any:
    """One v2 record (the layout kafka-python's _read_msg reads), header keys that are not UTF-8
    left out and counted in a first INVALID_HEADERS_MARKER header."""
    from kafka.record.util import decode_varint

    buffer, pos = batch._buffer, batch._pos
    length, pos = decode_varint(buffer, pos)
    end = pos + length
    _, pos = decode_varint(buffer, pos)  # attributes
    ts_delta, pos = decode_varint(buffer, pos)
    timestamp = batch.max_timestamp if batch.timestamp_type == batch.LOG_APPEND_TIME else batch.first_timestamp + ts_delta
    offset_delta, pos = decode_varint(buffer, pos)

    def nullable_bytes(pos: int) -> tuple[bytes | None, int]:
        size, pos = decode_varint(buffer, pos)
        if size < 0:
            return None, pos
        return bytes(buffer[pos: pos + size]), pos + size

    key, pos = nullable_bytes(pos)
    value, pos = nullable_bytes(pos)
    count, pos = decode_varint(buffer, pos)
    headers: list[tuple[str, bytes | None]] = []
    invalid = 0
    for _ in range(max(0, count)):
        raw_key, pos = nullable_bytes(pos)
        header_value, pos = nullable_bytes(pos)
        try:
            headers.append(((raw_key or b"").decode("utf-8"), header_value))
        except UnicodeDecodeError:
            invalid += 1
    if pos != end:
        raise kafka_errors.CorruptRecordError(f"Invalid record size: expected {length} bytes, read {pos - end + length}")
    batch._pos = end
    headers.insert(0, (INVALID_HEADERS_MARKER, str(invalid).encode()))
    return record_class(length, batch.base_offset + offset_delta, timestamp, batch.timestamp_type, key, value, headers)
