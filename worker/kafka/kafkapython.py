"""The kafka-python backend (the default client): consumer, producer, error translation.

``failure_for_error`` is the one table from kafka-python's exceptions to ``Failure`` kinds;
every call into the library that can raise goes through ``_translated`` (or ``connect_call`` at
start-up), so the pipeline only ever sees ``BrokerError``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka import codec as kafka_codec
from kafka import errors as ke
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from worker.errors import BrokerError, Failure
from worker.kafka import diagnose
from worker.kafka.base import (
    SILENT_BROKER_S,
    DeliveryHandler,
    RebalanceHandler,
    Record,
    TopicPartition,
    UnreadableRecord,
    run_bounded,
    take_all,
)
from worker.kafka.compat import (
    UNREADABLE_AT,
    after_each_produce_response,
    apply_join_fix,
    apply_unreadable_fix,
    brokers_silent_for,
    forbid_topic_creation,
    forget_producer_topics,
    metadata_answered_within,
    snapshot_subscribed_metadata,
)
from worker.kafka.diagnose import CONNECT_HINTS, bootstrap_timeout_error
from worker.kafka.topic_use import TopicUse

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = structlog.get_logger("tagstream.worker.kafka")

# How long removing a static member at a stop waits to connect: a broker that answers connects in
# milliseconds, and the session timeout moves the partitions if the removal fails
LEAVE_CONNECT_S = 3.0
SEND_MAX_BLOCK_MS = 15_000  # how long send() may block on topic metadata or a full buffer
PRODUCER_LINGER_MS = 5  # results of one batch leave in a few produce requests, not one each
PRODUCER_BATCH_BYTES = 256 * 1024
MAX_POLL_RECORDS = 500
RECONNECT_BACKOFF_MAX_MS = 5_000
END_OFFSETS_TIMEOUT_MS = 1_000  # the lag refresh blocks the poll loop at most this long
# kafka-python's send_offsets_to_transaction, commit_transaction and abort_transaction wait without
# a limit; a request lost in a broker restart can leave that wait unanswered for ever (seen in the
# fault suite). A healthy call takes milliseconds, a slow broker seconds.
TXN_CALL_LIMIT_S = 45.0
# kafka-python's close() waits for every request in flight, a metadata refresh too: to a frozen broker,
# until its 30 s timeout, which held a worker's exit for the rest of its drain (15 s) with every
# result acknowledged. Past a flush, nothing in flight is a delivery the worker waits for.
CLOSE_AFTER_FLUSH_S = 1.0

# Refusals that concern one record, not the connection: the sink handles that record alone.
_RECORD_ERRORS = (ke.MessageSizeTooLargeError, ke.RecordListTooLargeError, ke.InvalidRecordError)


def failure_for_error(exc: BaseException) -> Failure:
    """Map a kafka-python exception to its Failure kind (the one translation table for this client)."""
    if isinstance(exc, _RECORD_ERRORS):
        return Failure.RECORD_REJECTED
    if isinstance(exc, ke.TransactionAbortedError):
        return Failure.TRANSACTION_ABORTED
    if isinstance(exc, ke.SaslAuthenticationFailedError | ke.UnsupportedSaslMechanismError):
        return Failure.AUTHENTICATION_FAILED
    if isinstance(exc, ke.AuthorizationError):
        return Failure.AUTHORIZATION_FAILED
    if isinstance(exc, ke.UnknownTopicOrPartitionError | ke.InvalidTopicError):
        return Failure.TOPIC_MISSING
    if isinstance(exc, ke.FencedInstanceIdError):
        return Failure.INSTANCE_FENCED
    if isinstance(exc, ke.ProducerFencedError | ke.InvalidProducerEpochError | ke.TransactionCoordinatorFencedError):
        return Failure.PRODUCER_FENCED
    if isinstance(
        exc, ke.CommitFailedError | ke.RebalanceInProgressError | ke.IllegalGenerationError | ke.UnknownMemberIdError
    ):
        return Failure.COMMIT_FAILED
    if isinstance(exc, ke.KafkaConnectionError):
        return Failure.BROKER_UNREACHABLE
    if isinstance(exc, ke.KafkaError) and getattr(exc, "retriable", False):
        return Failure.KAFKA_TRANSIENT
    if isinstance(exc, ke.KafkaError):
        return Failure.KAFKA_FATAL
    return Failure.INTERNAL


def translate(exc: BaseException, what: str) -> BrokerError:
    return BrokerError(f"{what}: {exc}", failure_for_error(exc))


# The codecs other producers compress record batches with, and the package each needs (the
# kafka-python extras pyproject.toml installs). gzip is in the standard library.
CODECS = {"snappy": ("has_snappy", "python-snappy"), "lz4": ("has_lz4", "lz4"), "zstd": ("has_zstd", "zstandard")}


def check_codecs() -> None:
    """Refuse to start without a codec: kafka-python raises on the first batch compressed with it,
    which stopped the worker mid-stream and again after every restart (a producer using snappy,
    as kcat -z snappy does, kept it from ever getting past that batch)."""
    missing = [(name, package) for name, (probe, package) in CODECS.items() if not getattr(kafka_codec, probe)()]
    if missing:
        raise BrokerError(
            f"kafka-python cannot read record batches compressed with {', '.join(n for n, _ in missing)}: the"
            f" package(s) {', '.join(p for _, p in missing)} are not installed. Install"
            " kafka-python[lz4,snappy,zstd] (tagstream's own install does), or set TAGSTREAM_KAFKA_CLIENT=confluent",
            Failure.KAFKA_FATAL,
        )


def connect_call(settings: WorkerSettings, call: Callable[[], Any]) -> Any:
    """Run a start-up call, translating its errors into BrokerErrors that say what to fix."""
    try:
        return call()
    except ke.KafkaTimeoutError as exc:
        raise bootstrap_timeout_error(settings, exc) from exc
    except ke.KafkaError as exc:
        failure = failure_for_error(exc)
        raise BrokerError(f"Kafka refused the connection: {exc}{CONNECT_HINTS.get(failure, '')}", failure) from exc


def common_config(settings: WorkerSettings) -> dict[str, Any]:
    """Connection settings shared by every kafka-python client we create."""
    return {
        "bootstrap_servers": [x.strip() for x in settings.bootstrap_servers.split(",")],
        "client_id": f"tagstream-{socket.gethostname()}-{os.getpid()}",
        "bootstrap_timeout_ms": diagnose.BOOTSTRAP_TIMEOUT_MS,
        "metrics_enabled": False,  # kafka-python's own sensors cost CPU per record; we count ourselves
        # A broker that comes back is noticed within seconds (the library's default backs off to 30 s).
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        **settings.kafka_security(),
    }


def open_clients(
    settings: WorkerSettings, *, transactional_id: str | None = None
) -> tuple[KafkaPythonConsumer, KafkaPythonProducer]:
    apply_join_fix()  # kafka-python 3.0 can drop a completed group join: see compat.py
    apply_unreadable_fix()  # ...and get stuck on a record it cannot decode
    check_codecs()  # ...and stop at a compressed batch it has no codec for
    # Both clients: partitions added to a topic are seen within this (the library default is 5 min).
    common = {**common_config(settings), "metadata_max_age_ms": int(settings.metadata_refresh_s * 1000)}
    producer_config: dict[str, Any] = {
        "acks": "all",
        "linger_ms": PRODUCER_LINGER_MS,
        "batch_size": PRODUCER_BATCH_BYTES,
        "max_block_ms": SEND_MAX_BLOCK_MS,
        "max_request_size": settings.producer_max_request_bytes(),
        # A record keeps being retried this long (broker down, leader moving) before its delivery
        # fails, which is fatal: as long as the broker outage the worker waits out.
        "delivery_timeout_ms": int(settings.broker_outage_s * 1000) + 30_000,
        **common,
    }
    if transactional_id is not None:
        producer_config["transactional_id"] = transactional_id
        producer_config["transaction_timeout_ms"] = settings.transaction_timeout_ms
    else:
        # kafka-python 3.0.12 puts an idempotent, non-transactional producer into a fatal state when
        # the broker refuses one batch as too large (MESSAGE_TOO_LARGE), after which every later
        # send fails: one oversized record would stop the worker for good. Without idempotence the
        # refusal fails that batch alone (the library first splits multi-record batches), and a
        # retry after a timeout may write a result twice, which at-least-once allows anyway.
        producer_config["enable_idempotence"] = False
    producer = KafkaPythonProducer(
        connect_call(settings, lambda: KafkaProducer(**producer_config)),
        make=(lambda: KafkaProducer(**producer_config)) if transactional_id is not None else None,
        topic_idle_s=settings.output_topic_idle_s,
    )
    consumer_config: dict[str, Any] = {
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "allow_auto_create_topics": False,
        "max_poll_records": MAX_POLL_RECORDS,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "isolation_level": settings.isolation_level,  # read_committed for exactly-once (settings check it)
        **common,
    }
    if settings.group_instance_id:
        consumer_config["group_instance_id"] = settings.group_instance_id
    try:
        client = connect_call(settings, lambda: KafkaConsumer(**consumer_config))
        forbid_topic_creation(client)  # a deleted input topic is not created again (compat.py)
        consumer = KafkaPythonConsumer(client, settings)
    except BaseException:
        producer.close(2)
        raise
    return consumer, producer


class KafkaPythonConsumer:
    """``ConsumerClient`` over ``kafka.KafkaConsumer``."""

    def __init__(self, consumer: KafkaConsumer, settings: WorkerSettings) -> None:
        self._consumer = consumer
        self._settings = settings  # start-up lookups explain their failures in its terms

    def subscribe(self, *, topics: list[str] | None, pattern: str | None, handler: RebalanceHandler) -> None:
        listener = _Listener(handler, getattr(getattr(self._consumer, "_net", None), "sleep", None))
        try:
            if pattern is not None:
                self._consumer.subscribe(pattern=pattern, listener=listener)
            else:
                self._consumer.subscribe(topics=topics, listener=listener)
        except ke.KafkaError as exc:
            raise translate(exc, "cannot subscribe") from exc
        snapshot_subscribed_metadata(self._consumer)  # else a second rebalance at start (compat.py)

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        try:
            return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)  # type: ignore[no-any-return]
        except ke.CorruptRecordError as exc:
            where = getattr(exc, UNREADABLE_AT, None)
            if where is None:
                raise translate(exc, "the consumer failed") from exc
            # Hand the offset over as an unreadable record (it is dead-lettered), read on after it.
            # Never behind the fetch position: a batch refetched from inside itself fails at the
            # same record again, and each round must move on by one.
            tp, reported = where
            position = self.position(tp)
            offset = reported if position is None else max(reported, position)
            self._consumer.seek(tp, offset + 1)
            return {TopicPartition(tp.topic, tp.partition): [UnreadableRecord(tp.topic, tp.partition, offset, str(exc))]}
        except ke.KafkaError as exc:
            raise translate(exc, "the consumer failed") from exc

    def assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment()  # type: ignore[no-any-return]

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.pause(*_kafka_tps(partitions))

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._consumer.resume(*_kafka_tps(partitions))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(KafkaTopicPartition(*tp), offset)

    def commit_async(
        self, positions: dict[TopicPartition, int], on_done: Callable[[BaseException | None], None],
        metadata: dict[TopicPartition, str] | None = None,
    ) -> None:
        def done(_offsets: Any, response: Any) -> None:
            if isinstance(response, BaseException):
                on_done(translate(response, "the offset commit failed"))
            else:
                on_done(None)

        try:
            self._consumer.commit_async(offsets=_to_kafka(positions, metadata), callback=done)
        except ke.KafkaError as exc:
            on_done(translate(exc, "the offset commit failed"))

    def commit(
        self, positions: dict[TopicPartition, int], timeout_s: float, metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        try:
            self._consumer.commit(offsets=_to_kafka(positions, metadata), timeout_ms=int(timeout_s * 1000))
        except ke.KafkaError as exc:
            raise translate(exc, "the offset commit failed") from exc

    async def commit_in_rebalance(
        self, positions: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        # The listener runs on kafka-python's I/O loop, where the blocking commit may not be
        # called; the asynchronous commit's future is awaited instead.
        try:
            await self._consumer.commit_async(offsets=_to_kafka(positions, metadata))
        except ke.KafkaError as exc:
            raise translate(exc, "the offset commit failed") from exc

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._log_offsets(self._consumer.end_offsets, partitions, "cannot read the end offsets")

    def start_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._log_offsets(self._consumer.beginning_offsets, partitions, "cannot read the log start offsets")

    @staticmethod
    def _log_offsets(
        call: Callable[..., dict[Any, int]], partitions: Iterable[TopicPartition], what: str
    ) -> dict[TopicPartition, int]:
        """One ListOffsets lookup (``end_offsets`` or ``beginning_offsets``) for all of ``partitions``;
        partitions of a topic that no longer exists are left out of the answer."""
        tps = _kafka_tps(partitions)
        found: dict[Any, int] = {}
        while tps:
            try:
                found = call(tps, timeout_ms=END_OFFSETS_TIMEOUT_MS)
                break
            except KeyError as exc:
                # kafka-python 3.0.12 raises KeyError for a partition it got no offset for, which is
                # one whose topic was deleted: an input topic in the seconds before the rebalance that
                # revokes it. The source stage crashed on it (seen from outside: bench/outsider/churn.sh).
                # Asked again without that topic's partitions.
                gone = getattr(exc.args[0], "topic", None) if exc.args else None
                left = [tp for tp in tps if tp.topic != gone]
                if gone is None or len(left) == len(tps):
                    raise BrokerError(f"{what}: no offset for {exc.args!r}", Failure.KAFKA_TRANSIENT) from exc
                tps = left
            except ke.KafkaError as exc:
                raise translate(exc, what) from exc
        return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in found.items()}

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """One OffsetFetch request for all of ``partitions``: ``KafkaConsumer.committed`` asks for one
        partition at a time, and the lag refresh asks for every partition not read from yet, every
        5 s. With 100 idle partitions that was 100 round trips blocking the poll loop (86 ms on a
        local broker, seconds across zones); it is one now. The coordinator's
        ``fetch_committed_offsets`` is what ``committed`` itself calls, with a list of one."""
        tps = _kafka_tps(partitions)
        if not tps:
            return {}
        if getattr(self._consumer, "_coordinator", None) is None:  # another kafka-python layout: one request per partition
            try:
                return {TopicPartition(*tp): self._consumer.committed(tp, timeout_ms=END_OFFSETS_TIMEOUT_MS) for tp in tps}
            except ke.KafkaError as exc:
                raise translate(exc, "cannot read the committed offsets") from exc
        found = self._fetch_committed(tps)
        return {TopicPartition(*tp): (found[tp].offset if tp in found else None) for tp in tps}

    def committed_metadata(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        tps = _kafka_tps(partitions)
        if not tps or getattr(self._consumer, "_coordinator", None) is None:
            return {}  # no hints read: inputs delivered past the commit are labelled again
        return {TopicPartition(*tp): (om.offset, om.metadata or "") for tp, om in self._fetch_committed(tps).items()
                if om is not None and om.offset >= 0}

    def _fetch_committed(self, tps: list[KafkaTopicPartition]) -> dict[KafkaTopicPartition, OffsetAndMetadata]:
        """The group's commits of ``tps`` in one OffsetFetch, through the coordinator (see committed)."""
        try:
            return self._consumer._coordinator.fetch_committed_offsets(tps, timeout_ms=END_OFFSETS_TIMEOUT_MS)
        except ke.KafkaError as exc:
            raise translate(exc, "cannot read the committed offsets") from exc

    def position(self, tp: TopicPartition) -> int | None:
        try:
            position = int(self._consumer.position(KafkaTopicPartition(*tp), timeout_ms=END_OFFSETS_TIMEOUT_MS))
        except Exception:
            return None
        return position if position >= 0 else None

    def group_metadata(self) -> Any:
        return self._consumer.group_metadata()

    def coordinator_known(self) -> bool:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None:
            return True
        try:
            known = not coordinator.coordinator_unknown()
        except Exception:
            return False
        # A frozen broker keeps the coordinator "known" until requests time out (30 s): see SILENT_BROKER_S
        return known and not self.silent_for()

    def silent_for(self) -> float:
        return brokers_silent_for(self._consumer, SILENT_BROKER_S)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return connect_call(self._settings, lambda: self._consumer.partitions_for_topic(topic))  # type: ignore[no-any-return]

    def topics(self) -> set[str]:
        return connect_call(self._settings, self._consumer.topics)  # type: ignore[no-any-return]

    def close(self, timeout_s: float, leave_group: bool = True) -> None:
        self._consumer.close(autocommit=False, timeout_ms=int(1000 * timeout_s))
        if self._settings.group_instance_id and leave_group:
            remove_static_member(self._settings, timeout_s)


def remove_static_member(settings: WorkerSettings, timeout_s: float) -> None:
    """Take this worker's static member (group_instance_id) out of the group, best effort.

    A static member's close() does not leave the group (KIP-345), with either client: ask the
    coordinator to remove it, so its partitions move now rather than after session_timeout_ms.
    The confluent backend uses this too (confluent-kafka's admin client cannot remove members).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import MemberToRemove

    instance = settings.group_instance_id
    try:
        config = {k: v for k, v in common_config(settings).items() if k != "metrics_enabled"}
        bound_ms = int(1000 * max(1.0, timeout_s))
        # Its bootstrap had waited the start-up's 15 s on a broker stopped just before (the stop's own
        # look had not seen it yet: a confluent worker's statistics come once a second)
        config["bootstrap_timeout_ms"] = min(int(1000 * LEAVE_CONNECT_S), bound_ms)
        admin = KafkaAdminClient(**config, request_timeout_ms=bound_ms)
        try:
            admin.remove_group_members(
                settings.group_id, [MemberToRemove(group_instance_id=instance, reason="tagstream stopped")]
            )
        finally:
            admin.close()
    except Exception as exc:  # best effort: the session timeout moves them otherwise
        log.warning("leave_group_failed", group_instance_id=instance, error=str(exc))


class KafkaPythonProducer:
    """``ProducerClient`` over ``kafka.KafkaProducer`` (futures with callbacks per record; their
    acknowledgements handed to the sink once per produce response, at-least-once)."""

    def __init__(
        self, producer: KafkaProducer, make: Callable[[], KafkaProducer] | None = None, *, topic_idle_s: float = 300.0
    ) -> None:
        self._producer = producer
        self._make = make  # a new producer with the same settings (transactional id): see _replace
        self._delivered: Callable[[Any], None] = _unset
        self._delivered_many: Callable[[list[Any]], None] = _unset
        self._failed: Callable[[Any, BrokerError], None] = _unset
        self._wedged: str | None = None  # why this producer cannot go on (see _bounded)
        self._use = TopicUse(topic_idle_s)
        # At-least-once, the acknowledgements of one produce response reach the sink in one call
        # (compat.py, section 5). None: each at once, as a transactional producer's must (the
        # transaction's commit counts them next) and as on an unknown kafka-python layout.
        self._acked: deque[Any] | None = None
        if make is None and after_each_produce_response(producer, self._hand_over):
            self._acked = deque()

    def set_handler(self, handler: DeliveryHandler) -> None:
        self._delivered, self._failed = handler.delivered, handler.failed
        self._delivered_many = handler.delivered_many

    def _outcome(self, producer: KafkaProducer, token: Any, result: Any) -> None:
        """One callback for both outcomes (a future calls it with metadata, or with the exception)."""
        if producer is not self._producer:
            return  # a replaced producer's record: its transaction was aborted by fencing, inputs re-read
        if isinstance(result, BaseException):
            self._failed(token, translate(result, "the broker did not acknowledge a record"))
        elif self._acked is not None:
            self._acked.append(token)  # to the sink when the produce response is handled
        else:
            self._delivered(token)

    def _hand_over(self) -> None:
        """The acknowledgements queued so far, to the sink in one call: on the sender thread after
        each produce response, and after a flush (its wait ends as the last futures complete,
        possibly before the sender's hand-over). A deque: both threads may take from it at once."""
        if self._acked:  # most calls: skip building an empty list
            tokens = take_all(self._acked)
            if tokens:  # another thread may have taken them meanwhile
                self._delivered_many(tokens)

    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes | None]], token: Any
    ) -> None:
        self._use.used.add(topic)
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers)
        except ke.KafkaTimeoutError as exc:
            # send() blocks up to max_block_ms for the topic's metadata or for buffer space.
            missing = "metadata" in str(exc).lower()
            if missing and not metadata_answered_within(self._producer, SEND_MAX_BLOCK_MS):
                # No broker answered any metadata request meanwhile (a broker frozen or away whose
                # connections kafka-python still counts up): the topic may well exist. Taken for a
                # missing topic, this stopped a worker (exit 4) whose first dead letter fell in a
                # 15 s broker freeze (bench/outsider/single.sh); the sink waits for the broker instead.
                raise BrokerError(
                    f"cannot send to topic {topic!r}: no broker answered a metadata request for"
                    f" {SEND_MAX_BLOCK_MS / 1000:g} s ({exc})", Failure.BROKER_UNREACHABLE,
                ) from exc
            raise BrokerError(
                f"cannot send to topic {topic!r}: {exc}"
                + (" (does it exist? create it or enable auto-creation on the broker)" if missing else ""),
                Failure.TOPIC_MISSING if missing else Failure.DELIVERY_FAILED,
            ) from exc
        except ke.KafkaError as exc:
            raise translate(exc, f"cannot send to topic {topic!r}") from exc
        outcome = partial(self._outcome, self._producer, token)  # one partial per record, for either outcome
        future.add_callback(outcome)
        future.add_errback(outcome)

    def flush(self, timeout_s: float) -> bool:
        try:
            self._producer.flush(timeout=timeout_s)
        except ke.KafkaTimeoutError:
            return False
        finally:
            self._hand_over()
        return True

    def forget_idle_topics(self) -> list[str]:
        idle = self._use.idle()
        if not idle:
            return []
        if not forget_producer_topics(self._producer, idle):
            log.warning("producer_topics_kept", topics=idle, why="an unknown kafka-python layout")
            return []
        log.info("producer_topics_forgotten", topics=idle, idle_s=self._use.idle_s)
        return idle

    def init_transactions(self) -> None:
        self._transactional(self._producer.init_transactions, "cannot initialise transactions")

    def _bounded(self, call: Callable[[], Any], what: str) -> None:
        """A transactional call that waits without a limit, waited for at most TXN_CALL_LIMIT_S.

        A call left unanswered wedges this producer (its transaction manager keeps the pending
        request): every later transactional call is refused at once, and the committer's abort
        replaces the producer (``abort_transaction``), which fences this one and aborts its open
        transaction. Nothing is lost: the inputs of that transaction were never committed and
        are read again."""
        if self._wedged is not None:
            raise BrokerError(f"{what}: {self._wedged}", Failure.DELIVERY_FAILED)
        finished, _ = run_bounded(lambda: self._transactional(call, what), TXN_CALL_LIMIT_S, "tagstream-kafka-txn")
        if not finished:
            self._wedged = (f"a transactional request got no answer within {TXN_CALL_LIMIT_S:g} s"
                            " (lost in a broker restart?); this producer cannot go on")
            log.error("transaction_call_stuck", call=what, limit_s=TXN_CALL_LIMIT_S)
            raise BrokerError(f"{what}: {self._wedged}", Failure.DELIVERY_FAILED)

    def begin_transaction(self) -> None:
        self._transactional(self._producer.begin_transaction, "cannot begin a transaction")

    def send_offsets_to_transaction(
        self, positions: dict[TopicPartition, int], group_metadata: Any, metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        self._bounded(
            lambda: self._producer.send_offsets_to_transaction(_to_kafka(positions, metadata), group_metadata),
            "cannot add the offsets to the transaction",
        )

    def commit_transaction(self) -> None:
        self._bounded(self._producer.commit_transaction, "cannot commit the transaction")

    def abort_transaction(self) -> None:
        """Abort the open transaction; when this producer is wedged (a transactional request left
        unanswered), replace it instead: the new producer's init_transactions, under the same
        transactional id, fences this one and aborts its open transaction at the coordinator."""
        if self._wedged is None:
            try:
                self._bounded(self._producer.abort_transaction, "cannot abort the transaction")
                return
            except BrokerError:
                if self._wedged is None or self._make is None:
                    raise
        if self._make is None:
            raise BrokerError(f"cannot abort the transaction: {self._wedged}", Failure.DELIVERY_FAILED)
        self._replace()

    def _replace(self) -> None:
        assert self._make is not None
        old = self._producer
        log.warning("producer_replacing", reason=self._wedged)
        new = self._make()
        deadline = time.monotonic() + TXN_CALL_LIMIT_S
        while True:
            try:
                new.init_transactions()  # waits up to max_block_ms; the coordinator may still be loading
                break
            except ke.KafkaTimeoutError as exc:
                if time.monotonic() >= deadline:
                    raise BrokerError(f"a new producer could not initialise transactions: {exc}",
                                      Failure.DELIVERY_FAILED) from exc
            except ke.KafkaError as exc:
                raise translate(exc, "a new producer could not initialise transactions") from exc
        self._producer, self._wedged = new, None
        # Closing the wedged producer may block on its pending request: off this thread.
        threading.Thread(target=lambda: old.close(timeout=1), name="tagstream-kafka-close", daemon=True).start()
        log.warning("producer_replaced", note="the stuck producer is fenced; its open transaction was aborted")

    def close(self, timeout_s: float) -> None:
        """Deliver what is pending within ``timeout_s``, then stop. Once everything is acknowledged, the
        sender thread waits only on requests nobody waits for (CLOSE_AFTER_FLUSH_S)."""
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(timeout_s)  # False: what is left was never acknowledged, read again after the restart
        left = max(0.0, deadline - time.monotonic())
        try:
            self._producer.close(timeout=min(left, CLOSE_AFTER_FLUSH_S) if flushed else left)
        finally:
            self._hand_over()

    @staticmethod
    def _transactional(call: Callable[[], Any], what: str) -> None:
        try:
            result = call()
            wait = getattr(result, "wait", None)  # some calls return a TransactionalRequestResult
            if callable(wait):
                wait()
        except ke.KafkaError as exc:
            raise translate(exc, what) from exc


class _Listener(AsyncConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks (run on its I/O loop) to the handler."""

    def __init__(self, handler: RebalanceHandler, sleep: Any) -> None:
        self._handler = handler
        # kafka-python 3.0's event-loop sleep: awaiting it lets heartbeats run while we wait
        # for in-flight work. Without it (another client version) revocation drops and
        # redelivers instead of waiting, which is equally safe.
        self._sleep = sleep

    async def on_partitions_revoked(self, revoked: set[KafkaTopicPartition]) -> None:
        await self._handler.on_revoked(_ours(revoked), self._sleep)

    async def on_partitions_assigned(self, assigned: set[KafkaTopicPartition]) -> None:
        self._handler.on_assigned(_ours(assigned))

    async def on_partitions_lost(self, lost: set[KafkaTopicPartition]) -> None:
        self._handler.on_lost(_ours(lost))


def _ours(tps: Iterable[Any]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in tps}


def _kafka_tps(tps: Iterable[TopicPartition]) -> list[KafkaTopicPartition]:
    return [tp if isinstance(tp, KafkaTopicPartition) else KafkaTopicPartition(*tp) for tp in tps]


def _to_kafka(
    positions: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None
) -> dict[KafkaTopicPartition, OffsetAndMetadata]:
    meta = metadata or {}
    return {KafkaTopicPartition(*tp): OffsetAndMetadata(position, meta.get(tp, ""), -1)
            for tp, position in positions.items()}


def _unset(*_args: Any) -> None:
    raise RuntimeError("set_handler() was not called before send()")
