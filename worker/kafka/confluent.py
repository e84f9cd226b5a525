"""The confluent-kafka backend (librdkafka, ``TAGSTREAM_KAFKA_CLIENT=confluent``): consumer, producer.

librdkafka does the network I/O, batching, compression and record decoding in C threads of its
own, so the worker's interpreter pays a few microseconds per record instead of kafka-python's
tens. Same interfaces and guarantees as ``kafkapython.py``; where librdkafka works differently,
this module bridges it:

- Delivery reports and error/log callbacks only run inside ``poll()``/``flush()``: a small
  thread (``tagstream-kafka-dr``) polls the producer, so acknowledgements reach the sink as
  kafka-python's I/O thread delivers them. ``flush`` holds that thread off, so when it returns
  every acknowledgement has been applied (the exactly-once commit reads the tracker next).
  Outside transactions the acknowledgements one poll serves reach the sink together
  (``delivered_many``): its bookkeeping and metrics are then paid per poll, not per record.
- Rebalance callbacks run inside ``consume()`` on the consumer thread. ``on_revoked`` (a
  coroutine) runs to completion there under ``asyncio.run``; librdkafka heartbeats on its own
  threads meanwhile. Seeks made in ``on_assigned`` become the starting offsets of the
  ``assign()`` call (librdkafka refuses a seek before its fetcher has started), and a seek
  refused later is retried before each poll, the partition's records held back until it holds.
- ``consume(n, timeout)`` waits for all ``n`` records; ``poll`` takes what is there at once and
  waits only when nothing is, so a quiet topic costs no batching delay.
- Pattern subscriptions are resolved here (librdkafka's regex has no look-ahead, which the
  pattern that excludes the worker's own topics needs) and re-resolved every
  ``PATTERN_REFRESH_S``.
- A static member's ``close()`` does not leave the group (KIP-345) and confluent's admin client
  cannot remove members: the kafka-python admin client does it, as for the other backend.
- Blocking calls librdkafka does not bound (a synchronous offset commit, ``close``) run in a
  helper thread that is waited for with the caller's timeout.
- Transactional calls (exactly-once) are retried while librdkafka says the same call may be
  retried, and each attempt runs in a helper thread: one that outlives its own timeout (librdkafka
  2.16 can block in ``send_offsets_to_transaction`` forever after a broker restart, see
  ``TXN_STUCK_GRACE_S``) fails the transaction, and the abort that follows replaces the stuck
  client with a new one whose ``init_transactions`` fences it and aborts its open transaction.
  The worker's threads never wait on librdkafka without a bound, so a stuck call cannot hang the
  worker or its exit.
- A record whose header keys are not UTF-8 cannot be decoded by confluent-kafka at all (its
  ``headers()`` raises): it is handed over with the ``INVALID_HEADERS_MARKER`` header alone, and
  dead-lettered (invalid_header) with its key and value but none of its headers.
- A produce request the broker refuses as too large fails every record in it (librdkafka does
  not split batches the way kafka-python does): each is sent again alone, through a second
  producer that makes one-record batches, before its refusal counts (at-least-once only; in a
  transaction the refusal aborts it, as with kafka-python).

``failure_for_error`` is this client's one table from ``KafkaError`` codes to ``Failure`` kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import confluent_kafka as ck
import structlog
from confluent_kafka import KafkaError, KafkaException

from worker.errors import BrokerError, Failure
from worker.events import INVALID_HEADERS_MARKER
from worker.kafka import diagnose
from worker.kafka.base import (
    DeliveryHandler,
    RebalanceHandler,
    Record,
    TopicPartition,
    UnreadableRecord,
    run_bounded,
)
from worker.kafka.diagnose import CONNECT_HINTS, bootstrap_timeout_error
from worker.kafka.topic_use import TopicUse

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = structlog.get_logger("tagstream.worker.kafka")
# librdkafka's own log lines, through stdlib logging like kafka-python's ("kafka" is at WARNING
# in the worker: see telemetry.configure_logging). At DEBUG its debug contexts are turned on.
LIBRDKAFKA_LOGGER = "kafka.librdkafka"
LIBRDKAFKA_DEBUG_CONTEXTS = "generic,broker,security,cgrp,topic"

PRODUCER_LINGER_MS = 5  # results of one batch leave in a few produce requests, not one each
PRODUCER_BATCH_BYTES = 256 * 1024  # as kafka-python's backend; kept under topics' usual 1 MiB limit
PRODUCER_BUFFER_KBYTES = 32 * 1024  # as kafka-python's buffer_memory: a full buffer blocks send
SEND_MAX_BLOCK_S = 15.0  # how long send() waits for buffer space (kafka-python's max_block_ms)
TOPIC_METADATA_WAIT_MS = 15_000  # records for a topic the broker says does not exist fail after this
LOW, HIGH = 0, 1  # get_watermark_offsets answers (log start offset, high watermark)
CONSUMER_QUEUE_KBYTES = 16 * 1024  # records prefetched per consumer: bounds memory, ample for throughput
# Backpressure pauses the whole assignment for tens of milliseconds at a time. librdkafka's pause
# discards what it has prefetched for a partition and its resume fetches it again, which left a
# fast worker idle half a second after each resume (bench/kafka_path_bench.py, null bundle: 3,100
# events/s against 9,300 without pauses). Such a pause first only stops consume() calls: the
# prefetch queue fills to queued.max.messages.kbytes and the fetcher stops by itself. One that lasts
# longer becomes librdkafka's pause, so that polls serve rebalance callbacks and statistics again.
SOFT_PAUSE_S = 1.0
STATS_INTERVAL_MS = 1_000  # how often librdkafka reports the group coordinator's state (coordinator_known)
# A broker that keeps its connections but answers nothing (frozen, or its replies black-holed):
# librdkafka counts it up until each request's own timeout (60 s), the coordinator too. Seen from
# outside (a broker stopped with SIGSTOP for 40 s), /readyz stayed ready throughout. Every
# connection that has requests waiting and has received nothing for this long means the broker
# is not answering (a fetch is answered within fetch.wait.max.ms, 0.5 s, even with no records).
SILENT_BROKER_S = 10.0
END_OFFSETS_TIMEOUT_S = 1.0  # the lag refresh blocks the poll loop at most this long
TRANSACTION_TIMEOUT_S = 60.0  # a transactional call (commit, abort, offsets), retries included, ends within this
TXN_CALL_TIMEOUT_S = 10.0  # librdkafka's own timeout for one attempt (a healthy one takes milliseconds)
# Past its own timeout, an attempt that has not returned is stuck: librdkafka 2.16's
# send_offsets_to_transaction can wait forever for a group coordinator that went away with a
# broker restart (confluentinc/librdkafka#5456, #5511). The client is then replaced.
TXN_STUCK_GRACE_S = 5.0
TXN_RETRY_PAUSE_S = 0.5  # between attempts of a call librdkafka says may be retried
# A static member whose session expired (no coordinator answered for session.timeout.ms, e.g. two
# of three brokers down) gets its member id reset by librdkafka, which then still sends the offset
# commit it was retrying from the expired session: with the instance id and an empty member id, which
# the broker refuses as fenced (FENCED_INSTANCE_ID), and librdkafka makes that fatal (seen with
# librdkafka 2.16.0, bench/outsider/rolling.sh MODE=majority; librdkafka PR #5585 addresses the same
# mechanism, and whether a release with it avoids this is untested). No other worker has the id: the message
# says so, so that nobody hunts for a duplicate pod. The restart that follows is needed all the same
# (the client is unusable) and loses nothing: the commit was refused.
SELF_FENCE_WINDOW_S = 60.0
SELF_FENCED_NOTE = (
    "this worker's own group session expired shortly before (its partitions were lost: no group"
    " coordinator answered for TAGSTREAM_SESSION_TIMEOUT_MS), and librdkafka then sent an offset commit"
    " of the expired session, which the broker refuses as fenced; no other worker uses this"
    " group.instance.id. The worker exits to be restarted; nothing unacknowledged was committed"
)
PATTERN_REFRESH_S = 10.0  # how often a pattern subscription looks for new matching topics
FORGET_FLUSH_S = 1.0  # a client swap (forget_idle_topics) waits this long for acknowledgements, else later
DR_POLL_S = 0.02  # the delivery-report thread's wait: bounds how long flush() waits to take over
CONNECT_PROBE_S = 0.5  # start-up asks for metadata this often until the bootstrap timeout

# -- the error table ------------------------------------------------------------------------------------
E = KafkaError
# Codes whose meaning is fixed; anything else goes by the error's own flags (fatal, retriable,
# txn_requires_abort) in failure_for_error.
ERROR_TABLE: dict[int, Failure] = {
    # this record alone: too large for the producer (produce() raises it at once: librdkafka has
    # no local code of its own for this) or for the topic (the broker's answer), or invalid
    E.MSG_SIZE_TOO_LARGE: Failure.RECORD_REJECTED,
    E.RECORD_LIST_TOO_LARGE: Failure.RECORD_REJECTED,
    E.INVALID_RECORD: Failure.RECORD_REJECTED,
    E.INVALID_MSG: Failure.RECORD_REJECTED,
    E.INVALID_MSG_SIZE: Failure.RECORD_REJECTED,
    E.INVALID_TIMESTAMP: Failure.RECORD_REJECTED,
    # exactly-once: the transaction is being aborted (records purged by abort_transaction)
    E._PURGE_QUEUE: Failure.TRANSACTION_ABORTED,
    E._PURGE_INFLIGHT: Failure.TRANSACTION_ABORTED,
    E.TRANSACTION_ABORTABLE: Failure.TRANSACTION_ABORTED,
    # credentials
    E._AUTHENTICATION: Failure.AUTHENTICATION_FAILED,
    E.SASL_AUTHENTICATION_FAILED: Failure.AUTHENTICATION_FAILED,
    E.UNSUPPORTED_SASL_MECHANISM: Failure.AUTHENTICATION_FAILED,
    E.ILLEGAL_SASL_STATE: Failure.AUTHENTICATION_FAILED,
    E._SSL: Failure.AUTHENTICATION_FAILED,
    # ACLs
    E.TOPIC_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    E.GROUP_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    E.CLUSTER_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    # topics
    E.UNKNOWN_TOPIC_OR_PART: Failure.TOPIC_MISSING,
    E._UNKNOWN_TOPIC: Failure.TOPIC_MISSING,
    E._UNKNOWN_PARTITION: Failure.TOPIC_MISSING,
    E.TOPIC_EXCEPTION: Failure.TOPIC_MISSING,
    # zombies
    E.FENCED_INSTANCE_ID: Failure.INSTANCE_FENCED,
    E.PRODUCER_FENCED: Failure.PRODUCER_FENCED,
    E.INVALID_PRODUCER_EPOCH: Failure.PRODUCER_FENCED,
    E.TRANSACTION_COORDINATOR_FENCED: Failure.PRODUCER_FENCED,
    E._FENCED: Failure.PRODUCER_FENCED,
    # the group moved on: the next commit covers it
    E.REBALANCE_IN_PROGRESS: Failure.COMMIT_FAILED,
    E.ILLEGAL_GENERATION: Failure.COMMIT_FAILED,
    E.UNKNOWN_MEMBER_ID: Failure.COMMIT_FAILED,
    E._ASSIGNMENT_LOST: Failure.COMMIT_FAILED,
    E._MAX_POLL_EXCEEDED: Failure.COMMIT_FAILED,
    E.STALE_MEMBER_EPOCH: Failure.COMMIT_FAILED,
    # no broker answers
    E._ALL_BROKERS_DOWN: Failure.BROKER_UNREACHABLE,
    E._TRANSPORT: Failure.BROKER_UNREACHABLE,
    E._RESOLVE: Failure.BROKER_UNREACHABLE,
    # transient (the client retries; the worker's next turn does too)
    E._TIMED_OUT: Failure.KAFKA_TRANSIENT,
    E._TIMED_OUT_QUEUE: Failure.KAFKA_TRANSIENT,
    E.REQUEST_TIMED_OUT: Failure.KAFKA_TRANSIENT,
    E._WAIT_COORD: Failure.KAFKA_TRANSIENT,
    E.COORDINATOR_NOT_AVAILABLE: Failure.KAFKA_TRANSIENT,
    E.NOT_COORDINATOR: Failure.KAFKA_TRANSIENT,
    E.COORDINATOR_LOAD_IN_PROGRESS: Failure.KAFKA_TRANSIENT,
    E.NOT_LEADER_FOR_PARTITION: Failure.KAFKA_TRANSIENT,
    E.LEADER_NOT_AVAILABLE: Failure.KAFKA_TRANSIENT,
    E.NETWORK_EXCEPTION: Failure.KAFKA_TRANSIENT,
    E.NOT_ENOUGH_REPLICAS: Failure.KAFKA_TRANSIENT,
    E.CONCURRENT_TRANSACTIONS: Failure.KAFKA_TRANSIENT,
    # a record outlived message.timeout.ms (the broker was away longer than broker_outage_s)
    E._MSG_TIMED_OUT: Failure.DELIVERY_FAILED,
    # the client is unusable (its flags do not always say so; see _consumer_failure)
    E._FATAL: Failure.KAFKA_FATAL,
}

# Consumer errors that concern one record: it is dead-lettered by location and read past.
UNREADABLE_CODES = frozenset({E._BAD_MSG, E._BAD_COMPRESSION, E._KEY_DESERIALIZATION, E._VALUE_DESERIALIZATION})
# Consumer errors that are news, not failures.
QUIET_CODES = frozenset({E._PARTITION_EOF, E._NO_OFFSET, E.NO_ERROR})


def failure_for_error(error: BaseException | KafkaError) -> Failure:
    """Map a confluent-kafka error (a KafkaError or the exception carrying one) to its Failure kind."""
    err = _kafka_error(error)
    if err is None:
        return Failure.DELIVERY_FAILED if isinstance(error, BufferError) else Failure.INTERNAL
    mapped = ERROR_TABLE.get(err.code())
    if mapped is not None:
        return mapped
    if err.txn_requires_abort():
        return Failure.TRANSACTION_ABORTED
    if err.fatal():
        return Failure.KAFKA_FATAL
    if err.retriable():
        return Failure.KAFKA_TRANSIENT
    return Failure.KAFKA_FATAL


def translate(error: BaseException | KafkaError, what: str) -> BrokerError:
    err = _kafka_error(error)
    text = err.str() if err is not None else str(error)
    return BrokerError(f"{what}: {text}", failure_for_error(error))


def _kafka_error(error: BaseException | KafkaError) -> KafkaError | None:
    if isinstance(error, KafkaError):
        return error
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


# -- configuration ----------------------------------------------------------------------------------------
def common_config(settings: WorkerSettings) -> dict[str, Any]:
    """librdkafka settings shared by the consumer and the producer: brokers and security."""
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(x.strip() for x in settings.bootstrap_servers.split(",")),
        "client.id": f"tagstream-{socket.gethostname()}-{os.getpid()}",
        "security.protocol": settings.security_protocol.lower(),
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        # Partitions added to a topic are seen within this (librdkafka's default is 5 min).
        "topic.metadata.refresh.interval.ms": int(settings.metadata_refresh_s * 1000),
    }
    if logging.getLogger(LIBRDKAFKA_LOGGER).isEnabledFor(logging.DEBUG):
        config["debug"] = LIBRDKAFKA_DEBUG_CONTEXTS
    if settings.security_protocol.startswith("SASL_"):
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username
        config["sasl.password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                             ("ssl_keyfile", "ssl.key.location")):
            if getattr(settings, ours) is not None:
                config[theirs] = str(getattr(settings, ours))
        config["ssl.endpoint.identification.algorithm"] = "https"  # host names checked, as kafka-python does
    return config


def producer_config(settings: WorkerSettings, transactional_id: str | None) -> dict[str, Any]:
    config = {
        **common_config(settings),
        "acks": "all",
        "linger.ms": PRODUCER_LINGER_MS,
        "batch.size": PRODUCER_BATCH_BYTES,
        "message.max.bytes": settings.producer_max_request_bytes(),
        "queue.buffering.max.kbytes": PRODUCER_BUFFER_KBYTES,
        # A record keeps being retried this long (broker down, leader moving) before its delivery
        # fails, which is fatal: as long as the broker outage the worker waits out.
        "message.timeout.ms": int(settings.broker_outage_s * 1000) + 30_000,
        "topic.metadata.propagation.max.ms": TOPIC_METADATA_WAIT_MS,
        # Idempotence (no duplicates or reordering from retries) is safe here: librdkafka fails a
        # refused record alone and carries on (tests/integration/worker/test_confluent_client.py), unlike
        # kafka-python 3.0's idempotent producer, which a refused batch puts in a fatal state.
        "enable.idempotence": True,
        # Keyed records to the partition Java's producer (and kafka-python's) picks: murmur2 of the
        # key. librdkafka's default hashes with CRC32, so results of one key would land on another
        # partition than under the other client, and a pod fleet mixing the two (a rolling change of
        # TAGSTREAM_KAFKA_CLIENT) would break their per-key order. Keyless records: no promise
        # under either client (librdkafka sticks to one partition a while, kafka-python draws).
        "partitioner": "murmur2_random",
    }
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
        config["transaction.timeout.ms"] = settings.transaction_timeout_ms
        # librdkafka requires it: a record cannot outlive its transaction, which the broker
        # aborts after transaction.timeout.ms anyway.
        config["message.timeout.ms"] = min(config["message.timeout.ms"], settings.transaction_timeout_ms)
    return config


def consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    config = {
        **common_config(settings),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "allow.auto.create.topics": False,
        "session.timeout.ms": settings.session_timeout_ms,
        # librdkafka refuses a poll interval below the session timeout; the worker polls every
        # 100 ms whatever the model does, so the larger of the two changes nothing.
        "max.poll.interval.ms": max(settings.max_poll_interval_ms, settings.session_timeout_ms),
        "isolation.level": settings.isolation_level,  # read_committed for exactly-once (settings check it)
        "queued.max.messages.kbytes": CONSUMER_QUEUE_KBYTES,
        "statistics.interval.ms": STATS_INTERVAL_MS,
    }
    if settings.group_instance_id:
        config["group.instance.id"] = settings.group_instance_id
    return config


# -- start-up ------------------------------------------------------------------------------------------
class _Errors:
    """The error callback's record of what went wrong, for start-up diagnosis and health."""

    def __init__(self, client: str) -> None:
        self._client = client
        self.auth: KafkaError | None = None  # a refused login or TLS handshake, if any
        self.all_down_at: float | None = None  # when librdkafka last said no broker is up
        self.muted = False  # the client was replaced: what it still says is no news

    def __call__(self, err: KafkaError) -> None:
        if self.muted:
            return
        code = err.code()
        if code in (E._AUTHENTICATION, E.SASL_AUTHENTICATION_FAILED, E._SSL, E.UNSUPPORTED_SASL_MECHANISM):
            self.auth = err
        if code == E._ALL_BROKERS_DOWN:
            self.all_down_at = time.monotonic()
        quiet = code in (E._TRANSPORT, E._ALL_BROKERS_DOWN, E._RESOLVE)  # logged by librdkafka already
        (log.debug if quiet else log.warning)(
            "kafka_client_error", client=self._client, code=err.name(), error=err.str(), fatal=err.fatal()
        )


def _connect(settings: WorkerSettings, client: Any, errors: _Errors) -> None:
    """Wait until ``client`` has cluster metadata, or raise a BrokerError saying what to fix.

    librdkafka connects lazily and retries forever; a refused login or TLS handshake reaches the
    error callback within milliseconds, so start-up stops at once instead of timing out.
    """
    deadline = time.monotonic() + diagnose.BOOTSTRAP_TIMEOUT_MS / 1000
    last: BaseException | None = None
    while True:
        if errors.auth is not None:
            failure = failure_for_error(errors.auth)
            raise BrokerError(
                f"Kafka refused the connection: {errors.auth.str()}{CONNECT_HINTS.get(failure, '')}", failure
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise bootstrap_timeout_error(settings, last or TimeoutError("no metadata"))
        try:
            client.list_topics(timeout=min(CONNECT_PROBE_S, left))
            return
        except KafkaException as exc:
            last = exc
            failure = failure_for_error(exc)
            if failure in (Failure.AUTHENTICATION_FAILED, Failure.AUTHORIZATION_FAILED):
                raise BrokerError(
                    f"Kafka refused the connection: {translate(exc, 'metadata')}{CONNECT_HINTS.get(failure, '')}",
                    failure,
                ) from exc


def open_clients(
    settings: WorkerSettings, *, transactional_id: str | None = None
) -> tuple[ConfluentConsumer, ConfluentProducer]:
    producer = ConfluentProducer(settings, transactional_id)
    try:
        _connect(settings, producer.client, producer.errors)
        consumer = ConfluentConsumer(settings)
    except BaseException:
        producer.close(2)
        raise
    try:
        _connect(settings, consumer.client, consumer.errors)
    except BaseException:
        consumer.close(2, leave_group=False)
        producer.close(2)
        raise
    return consumer, producer


def _new(kind: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> Any:
    try:
        return kind(config)
    except KafkaException as exc:  # a setting librdkafka refuses: say which, never the values
        raise BrokerError(f"the Kafka client refused its configuration: {translate(exc, 'config')}",
                          Failure.SETTINGS_INVALID) from exc


def _bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run a blocking librdkafka call that has no timeout of its own, waiting at most ``timeout_s``."""
    finished, value = run_bounded(call, timeout_s, "tagstream-kafka-call")
    if not finished:
        raise BrokerError(f"{what}: no answer within {timeout_s:g} s", Failure.KAFKA_TRANSIENT)
    return value


# -- records ---------------------------------------------------------------------------------------------
class _Record:
    """One consumed record with the attributes ``parse_record`` reads (cheaper than a dataclass)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, key: bytes | None,
                 value: bytes | None, headers: list[tuple[str, bytes | None]]) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = headers


# confluent-kafka cannot decode a record's headers when a key is not UTF-8; parse_record
# dead-letters a record whose first header is this marker (reason invalid_header).
_UNDECODABLE_HEADERS = [(INVALID_HEADERS_MARKER, b"one or more")]
# Message.headers() then returns with the decoding error still set instead of raising it. A call
# the interpreter has specialised (a hot loop's m.headers()) does not check for that, and the
# error surfaces at some later, unrelated call as a SystemError. A call through methodcaller is
# always checked, so the error is raised here, where it belongs.
_headers = operator.methodcaller("headers")


# -- the consumer ------------------------------------------------------------------------------------------
class ConfluentConsumer:
    """``ConsumerClient`` over ``confluent_kafka.Consumer``. Used from the source's thread only."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self.errors = _Errors("consumer")
        self._handler: RebalanceHandler | None = None
        self._closing = False
        self._lost_at: float | None = None  # when the session last expired (partitions lost): see _self_fenced
        self._assigning: dict[TopicPartition, int] | None = None  # seeks made inside on_assigned
        self._pending_seeks: dict[TopicPartition, int] = {}  # seeks librdkafka refused for now
        self._callback_error: BaseException | None = None  # raised by a handler inside consume()
        self._deferred: BaseException | None = None  # raised at the next poll, before reading more
        self._commits: deque[tuple[frozenset[tuple[str, int, int]], Callable[[BaseException | None], None]]] = deque()
        self._coordinator_state: str | None = None  # from the statistics: "up" when it answers
        self._brokers_silent = False  # from the statistics: see SILENT_BROKER_S
        self._pattern: re.Pattern[str] | None = None
        self._pattern_topics: list[str] = []
        self._pattern_at = 0.0
        self._held: set[TopicPartition] = set()  # paused by not consuming (SOFT_PAUSE_S)
        self._held_since = 0.0
        self._paused: set[TopicPartition] = set()  # paused in librdkafka (assigned or not)
        # The assignment as last read from librdkafka; None once a rebalance callback ran (it
        # changes only there). The source asks for it several times a loop turn while paused.
        self._assigned: frozenset[TopicPartition] | None = None
        self._rebalancing = False
        config = consumer_config(settings)
        config.update(error_cb=self.errors, stats_cb=self._on_stats, on_commit=self._on_commit)
        self.client = _new(ck.Consumer, config)

    # -- subscription and rebalances --------------------------------------------------------------------
    def subscribe(self, *, topics: list[str] | None, pattern: str | None, handler: RebalanceHandler) -> None:
        self._handler = handler
        if pattern is not None:
            self._pattern = re.compile(pattern)
            self._refresh_pattern(force=True)
        else:
            self._subscribe(list(topics or ()))

    def _subscribe(self, topics: list[str]) -> None:
        try:
            if topics:
                self.client.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                      on_lost=self._on_lost)
            else:
                self.client.unsubscribe()
        except KafkaException as exc:
            raise translate(exc, "cannot subscribe") from exc

    def _refresh_pattern(self, force: bool = False) -> None:
        """Subscribe to the topics the pattern matches now (librdkafka's regex lacks look-ahead)."""
        now = time.monotonic()
        if not force and now - self._pattern_at < PATTERN_REFRESH_S:
            return
        self._pattern_at = now
        assert self._pattern is not None
        try:
            names = self.client.list_topics(timeout=END_OFFSETS_TIMEOUT_S).topics
        except KafkaException as exc:
            log.debug("pattern_refresh_failed", error=str(exc))
            return
        matching = sorted(t for t in names if not t.startswith("__") and self._pattern.match(t))
        if matching != self._pattern_topics:
            self._pattern_topics = matching
            log.info("pattern_subscription", topics=matching)
            self._subscribe(matching)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._rebalancing, self._assigned = True, None  # read afresh after consume() returns
        ours = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._assigning = {}
        try:
            if self._handler is not None and not self._closing:
                self._handler.on_assigned(ours)
        except BaseException as exc:
            self._callback_error = self._callback_error or exc
        finally:
            seeks, self._assigning = self._assigning, None
        # Start where on_assigned sought, else at the group's committed offset (or the reset point).
        consumer.assign([ck.TopicPartition(p.topic, p.partition, seeks.get(TopicPartition(p.topic, p.partition),
                                                                              ck.OFFSET_INVALID))
                         for p in partitions])
        # librdkafka keeps a partition's pause through unassign and assign: a partition paused when it
        # was revoked would come back paused, and nothing would resume it (the source resumes what it
        # paused since). An assignment starts unpaused, as with kafka-python; a source under
        # backpressure pauses it again.
        retained, self._paused = self._paused & ours, self._paused - ours
        self._held -= ours
        if retained:
            consumer.resume(_theirs(retained))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._run_revoke({TopicPartition(p.topic, p.partition) for p in partitions}, lost=False)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._lost_at = time.monotonic()
        self._run_revoke({TopicPartition(p.topic, p.partition) for p in partitions}, lost=True)

    def _self_fenced(self) -> bool:
        """Whether a fenced static member is this worker's own expired session (see SELF_FENCED_NOTE)."""
        return self._lost_at is not None and time.monotonic() - self._lost_at < SELF_FENCE_WINDOW_S

    def _run_revoke(self, partitions: set[TopicPartition], lost: bool) -> None:
        self._rebalancing, self._assigned = True, None  # confluent-kafka unassigns after this returns
        self._held -= partitions  # (librdkafka's own pauses outlive the assignment: see _on_assign)
        for tp in partitions:
            self._pending_seeks.pop(tp, None)
        if self._handler is None or self._closing:
            return  # close(): kafka-python calls no listener there either
        try:
            if lost:
                self._handler.on_lost(partitions)
            else:
                # Run to completion here; librdkafka heartbeats on its own threads meanwhile.
                asyncio.run(self._handler.on_revoked(partitions, asyncio.sleep))
        except BaseException as exc:
            self._callback_error = self._callback_error or exc

    # -- polling ----------------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        if self._pattern is not None:
            self._refresh_pattern()
        if self._pending_seeks:
            self._apply_pending_seeks()
        if self._held and self._holding():
            time.sleep(timeout_ms / 1000)
            return {}
        consume = self.client.consume
        try:
            messages = consume(max_records, 0)
            if not messages:
                messages = consume(1, timeout_ms / 1000)
                if messages and max_records > 1:
                    messages.extend(consume(max_records - 1, 0))
        except KafkaException as exc:
            raise translate(exc, "the consumer failed") from exc
        finally:
            if self._callback_error is not None:  # a handler raised: after these records, at the next poll
                self._deferred, self._callback_error = self._callback_error, None
            if self._rebalancing:
                self._rebalancing, self._assigned = False, None
        return self._records(messages) if messages else {}

    def _records(self, messages: list[Any]) -> dict[TopicPartition, list[Record]]:
        """Group by partition (offset order is kept within each), decoding each message once."""
        out: dict[TopicPartition, list[Any]] = {}
        batch: list[Any] = []
        last_topic, last_partition = None, -1
        held = self._pending_seeks
        for m in messages:
            if m.error() is not None:
                self._message_error(m, out)
                last_topic = None
                continue
            topic, partition = m.topic(), m.partition()
            if partition != last_partition or topic != last_topic:
                last_topic, last_partition = topic, partition
                tp = TopicPartition(topic, partition)
                # While a seek is pending, records of that partition are from before it: dropped.
                batch = [] if held and tp in held else out.get(tp) or out.setdefault(tp, [])
            try:
                headers = _headers(m) or []
            except (SystemError, UnicodeDecodeError):
                headers = list(_UNDECODABLE_HEADERS)
            batch.append(_Record(topic, partition, m.offset(), m.timestamp()[1], m.key(), m.value(), headers))
        return out

    def _message_error(self, m: Any, out: dict[TopicPartition, list[Any]]) -> None:
        """A consumer error delivered as a message: one unreadable record, or news about the client."""
        err = m.error()
        code = err.code()
        if code in QUIET_CODES:
            return
        partition, offset = m.partition(), m.offset()
        if code in UNREADABLE_CODES and m.topic() and partition is not None and partition >= 0 and offset >= 0:
            # Dead-letter that offset by its location and read on after it (never backwards:
            # a later record of this partition already handed over means the client moved on).
            tp = TopicPartition(m.topic(), partition)
            records = out.setdefault(tp, [])
            if records and records[-1].offset >= offset:
                return
            records.append(UnreadableRecord(tp.topic, partition, offset, err.str()))
            self._pending_seeks[tp] = offset + 1
            return
        error = translate(err, "the consumer failed")
        error.failure = _consumer_failure(err, error.failure)
        if error.failure is Failure.INSTANCE_FENCED and self._self_fenced():
            error = BrokerError(f"{error}: {SELF_FENCED_NOTE}", Failure.INSTANCE_FENCED)
        if self._deferred is None:
            self._deferred = error  # raised at the next poll: the records of this one are handed over first

    def _apply_pending_seeks(self) -> None:
        assigned = self.assignment()
        for tp, offset in list(self._pending_seeks.items()):
            if tp not in assigned:
                del self._pending_seeks[tp]
                continue
            try:
                self.client.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException:
                continue  # the fetcher is not ready yet: next poll
            del self._pending_seeks[tp]

    # -- positions -------------------------------------------------------------------------------------------
    def assignment(self) -> set[TopicPartition]:
        assigned = self._assigned
        if assigned is None:
            try:
                assigned = frozenset(TopicPartition(p.topic, p.partition) for p in self.client.assignment())
            except (KafkaException, RuntimeError):
                return set()
            if not self._rebalancing:  # inside a callback it is about to change
                self._assigned = assigned
        return set(assigned)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        new = {TopicPartition(*tp) for tp in partitions} - self._held - self._paused
        if not new:
            return
        if not self._held:
            self._held_since = time.monotonic()
        self._held |= new  # a pause of part of the assignment becomes librdkafka's at the next poll

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        parts = {TopicPartition(*tp) for tp in partitions}
        self._held -= parts
        paused, self._paused = self._paused & parts, self._paused - parts
        if paused:
            self._call(self.client.resume, _theirs(paused), "cannot resume")

    def _holding(self) -> bool:
        """Whether this poll may skip consume() (SOFT_PAUSE_S); otherwise the held partitions are
        paused in librdkafka now, so that consume() returns none of their records."""
        assigned = self.assignment()
        if assigned and assigned <= self._held | self._paused and time.monotonic() - self._held_since < SOFT_PAUSE_S:
            return True
        held, self._held = self._held & assigned, set()
        if held:
            self._call(self.client.pause, _theirs(held), "cannot pause")
            self._paused |= held
        return False

    def seek(self, tp: TopicPartition, offset: int) -> None:
        tp = TopicPartition(*tp)
        if self._assigning is not None:  # inside on_assigned: becomes the assign() offset
            self._assigning[tp] = offset
            return
        try:
            self.client.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
            self._pending_seeks.pop(tp, None)
        except KafkaException as exc:
            if _kafka_error(exc) is None or exc.args[0].code() != E._STATE:
                raise translate(exc, f"cannot seek {tp.topic}[{tp.partition}]") from exc
            self._pending_seeks[tp] = offset  # fetcher not started yet: retried before each poll

    @staticmethod
    def _call(call: Callable[[Any], Any], arg: Any, what: str) -> None:
        if not arg:
            return
        try:
            call(arg)
        except KafkaException as exc:
            raise translate(exc, what) from exc

    # -- commits ---------------------------------------------------------------------------------------------
    def commit_async(
        self, positions: dict[TopicPartition, int], on_done: Callable[[BaseException | None], None]
    ) -> None:
        offsets = _offsets(positions)
        try:
            self.client.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            on_done(translate(exc, "the offset commit failed"))
            return
        self._commits.append((_key(offsets), on_done))

    def _on_commit(self, err: KafkaError | None, partitions: list[Any]) -> None:
        """Every commit's result, asynchronous ones (matched by content) and synchronous echoes."""
        key = _key(partitions)
        match = next((i for i, (pending, _) in enumerate(self._commits) if pending == key), None)
        if match is None:
            return  # a synchronous commit's echo: its caller already has the result
        on_done = self._commits[match][1]
        del self._commits[match]
        failed = err if err is not None else next((p.error for p in partitions if p.error is not None), None)
        on_done(None if failed is None else translate(failed, "the offset commit failed"))

    def commit(self, positions: dict[TopicPartition, int], timeout_s: float) -> None:
        offsets = _offsets(positions)
        try:
            done = _bounded(lambda: self.client.commit(offsets=offsets, asynchronous=False), timeout_s,
                            "the offset commit failed")
        except KafkaException as exc:
            raise translate(exc, "the offset commit failed") from exc
        failed = next((p.error for p in done or () if p.error is not None), None)
        if failed is not None:
            raise translate(failed, "the offset commit failed")

    async def commit_in_rebalance(self, positions: dict[TopicPartition, int]) -> None:
        # Asynchronous, and not waited for: a synchronous commit made inside the revoke callback was
        # not served by librdkafka until the callback returned (its cgrp thread sat in
        # wait-unassign-call), so it timed out after the 30 s it was given, in most starts of a
        # two-feeder pod, with the group's rebalance held up as long (37 s instead of 7). An
        # asynchronous one goes out with the generation it belongs to as the callback returns;
        # librdkafka waits for commits in progress before it completes the unassignment. Its
        # result arrives at a later poll: a failure is logged, and means re-reading (duplicates).
        def on_done(error: BaseException | None) -> None:
            if error is not None:
                log.warning("revoke_commit_failed", error=str(error), partitions=len(positions))

        self.commit_async(positions, on_done)

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks (see ``_watermarks``)."""
        return self._watermarks(partitions, HIGH, "cannot read the end offsets")

    def start_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Log start offsets (see ``_watermarks``): a deletion gap is judged just after the fetch
        that showed it, whose response carried the new log start."""
        return self._watermarks(partitions, LOW, "cannot read the log start offsets")

    def _watermarks(self, partitions: Iterable[TopicPartition], side: int, what: str) -> dict[TopicPartition, int]:
        """One side of each partition's watermarks (LOW: log start, HIGH: high watermark): from the
        latest fetch response, which librdkafka keeps, when there is one; else asked of the broker,
        one request per partition. Partitions of a topic that no longer exists are left out (an input
        topic deleted, in the seconds before the rebalance that revokes it: the whole lookup failed)."""
        deadline = time.monotonic() + END_OFFSETS_TIMEOUT_S
        out: dict[TopicPartition, int] = {}
        for tp in partitions:
            theirs = ck.TopicPartition(tp.topic, tp.partition)
            try:
                offset = self.client.get_watermark_offsets(theirs, cached=True)[side]
                if offset < 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        continue
                    offset = self.client.get_watermark_offsets(theirs, timeout=left)[side]
            except KafkaException as exc:
                if failure_for_error(exc) is Failure.TOPIC_MISSING:
                    continue
                raise translate(exc, what) from exc
            if offset >= 0:
                out[TopicPartition(*tp)] = offset
        return out

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        tps = _theirs(partitions)
        if not tps:
            return {}
        try:
            found = self.client.committed(tps, timeout=END_OFFSETS_TIMEOUT_S)
        except KafkaException as exc:
            raise translate(exc, "cannot read the committed offsets") from exc
        return {TopicPartition(p.topic, p.partition): (p.offset if p.offset >= 0 else None) for p in found}

    def position(self, tp: TopicPartition) -> int | None:
        try:
            [got] = self.client.position([ck.TopicPartition(tp.topic, tp.partition)])
        except KafkaException:
            return None
        return got.offset if got.offset >= 0 else None  # negative: no position yet (OFFSET_INVALID)

    def group_metadata(self) -> Any:
        return self.client.consumer_group_metadata()

    # -- health and metadata -----------------------------------------------------------------------------------
    def _on_stats(self, stats: str) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            parsed = json.loads(stats)
            self._coordinator_state = parsed.get("cgrp", {}).get("state")
            self._brokers_silent = brokers_silent(parsed.get("brokers") or {})

    def coordinator_known(self) -> bool:
        state = self._coordinator_state
        if state is None:  # no statistics yet: go by the error callback alone
            down = self.errors.all_down_at
            return down is None or time.monotonic() - down > 2 * STATS_INTERVAL_MS / 1000
        return state == "up" and not self._brokers_silent

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        meta = self._metadata(topic)
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            return None
        return set(found.partitions)

    def topics(self) -> set[str]:
        return set(self._metadata(None).topics)

    def _metadata(self, topic: str | None) -> Any:
        try:
            return self.client.list_topics(topic=topic, timeout=diagnose.BOOTSTRAP_TIMEOUT_MS / 1000)
        except KafkaException as exc:
            raise bootstrap_timeout_error(self._settings, exc) from exc

    def close(self, timeout_s: float, leave_group: bool = True) -> None:
        self._closing = True  # librdkafka revokes inside close(): the handler is not told
        self._rebalancing, self._assigned = True, None
        try:
            _bounded(self.client.close, max(0.5, timeout_s), "closing the consumer")
        except Exception as exc:
            log.warning("consumer_close_failed", error=str(exc))
        instance = self._settings.group_instance_id
        if instance and leave_group:
            from worker.kafka.kafkapython import remove_static_member

            remove_static_member(self._settings, timeout_s)


def _consumer_failure(err: KafkaError, failure: Failure) -> Failure:
    """What a consumer error delivered among the records means for the worker."""
    if failure is Failure.TOPIC_MISSING:
        return Failure.KAFKA_TRANSIENT  # a subscribed topic gone: not this worker's end
    if err.code() == E._FATAL and "group.instance.id" in err.str():
        # librdkafka reports a fenced static member as a generic fatal error, its cause in words only
        return Failure.INSTANCE_FENCED
    return failure


def _theirs(tps: Iterable[TopicPartition]) -> list[Any]:
    return [ck.TopicPartition(tp[0], tp[1]) for tp in tps]


def _offsets(positions: dict[TopicPartition, int]) -> list[Any]:
    return [ck.TopicPartition(tp[0], tp[1], position) for tp, position in positions.items()]


def brokers_silent(brokers: dict[str, Any]) -> bool:
    """Whether the brokers keep their connections but answer nothing (SILENT_BROKER_S), from
    librdkafka's statistics: every connection that is up and waits for responses has received
    nothing for that long. Idle connections (nothing asked) say nothing either way."""
    waiting = [b for b in brokers.values() if b.get("state") == "UP" and b.get("waitresp_cnt", 0) > 0]
    return bool(waiting) and all(b.get("rxidle", -1) > SILENT_BROKER_S * 1_000_000 for b in waiting)


def _key(partitions: Iterable[Any]) -> frozenset[tuple[str, int, int]]:
    return frozenset((p.topic, p.partition, p.offset) for p in partitions)


# -- the producer ------------------------------------------------------------------------------------------
class ConfluentProducer:
    """``ProducerClient`` over ``confluent_kafka.Producer``, with a thread that serves delivery reports."""

    def __init__(self, settings: WorkerSettings, transactional_id: str | None) -> None:
        self._settings = settings
        self._transactional = transactional_id is not None
        self._config = producer_config(settings, transactional_id)
        self.errors = _Errors("producer")
        self.client = _new(ck.Producer, {**self._config, "error_cb": self.errors})
        # Exactly-once: the call a stuck client is still in (it is replaced at the next abort), and
        # the clients replaced so far (kept, never destroyed: destroying a stuck one can block).
        self._stuck_in: str | None = None
        self._replaced: list[Any] = []
        self._closing = threading.Event()
        self._alone: Any = None  # one-record batches, for records refused in a batch (module docstring)
        self._alone_lock = threading.Lock()
        self._delivered: Callable[[Any], None] = _unset
        self._delivered_many: Callable[[list[Any]], None] = _unset
        # Tokens acknowledged in the poll or flush under way, handed to the sink when it returns.
        # A deque: callbacks may also be served on a thread that holds no lock of ours.
        self._acked: deque[Any] = deque()
        self._failed: Callable[[Any, BrokerError], None] = _unset
        self._serving = threading.Lock()  # held while delivery reports are served
        # Threads other than the serving one waiting for _serving (flush, a producer swap): the
        # serving thread stands aside while any does. A Lock is not fair: released and taken again
        # at once in a loop, it went back to the serving thread every time once nothing else ran,
        # and a transaction's flush waited for ever (seen after a producer replacement).
        self._wanting = 0
        self._wanting_lock = threading.Lock()
        self._stop = threading.Event()
        self._use = TopicUse(settings.output_topic_idle_s)
        self._thread = threading.Thread(target=self._serve, name="tagstream-kafka-dr", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Serve delivery reports (and error and log callbacks) as they come in."""
        said: str | None = None
        while not self._stop.is_set():
            if self._wanting:
                time.sleep(0.001)  # another thread takes _serving first (see __init__)
                continue
            try:
                with self._serving:
                    self.client.poll(DR_POLL_S)
                    self._hand_over()
                    if self._alone is not None:
                        self._alone.poll(0)
            except KafkaException as exc:
                # poll() raises the client's fatal error (fenced by a newer instance): the next send,
                # flush or transactional call raises it too, and the worker exits from there. This
                # thread keeps serving what still comes (from a replacement client, say).
                text = str(translate(exc, "the producer failed"))
                if text != said:
                    log.warning("producer_poll_failed", error=text)
                    said = text
                time.sleep(DR_POLL_S)

    @contextlib.contextmanager
    def _served_here(self) -> Iterator[None]:
        """Hold _serving from a thread other than the serving one, which stands aside meanwhile."""
        with self._wanting_lock:
            self._wanting += 1
        try:
            with self._serving:
                yield
        finally:
            with self._wanting_lock:
                self._wanting -= 1

    def set_handler(self, handler: DeliveryHandler) -> None:
        self._delivered, self._failed = handler.delivered, handler.failed
        self._delivered_many = handler.delivered_many

    def _hand_over(self) -> None:
        """The acknowledgements collected since the last hand-over, to the sink in one call."""
        acked = self._acked
        if acked:
            popleft = acked.popleft
            self._delivered_many([popleft() for _ in range(len(acked))])

    def _outcome(self, token: Any, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            if self._transactional:
                self._delivered(token)  # at once: the transaction's commit counts them next
            else:
                self._acked.append(token)  # to the sink when this poll or flush returns
        elif not self._transactional and err.code() == E.MSG_SIZE_TOO_LARGE:
            self._send_alone(token, msg)  # refused with its batch: is it too large by itself?
        else:
            self._failed(token, translate(err, "the broker did not acknowledge a record"))

    def _outcome_alone(self, token: Any, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self._delivered(token)
        else:
            self._failed(token, translate(err, "the broker did not acknowledge a record"))

    def _send_alone(self, token: Any, msg: Any) -> None:
        with self._alone_lock:
            if self._alone is None:
                config = producer_config(self._settings, None)
                config.update(error_cb=self.errors, **{"batch.num.messages": 1, "linger.ms": 0})
                self._alone = _new(ck.Producer, config)
        try:
            headers = _headers(msg)
        except (SystemError, UnicodeDecodeError):
            headers = None
        try:
            self._alone.produce(msg.topic(), msg.value(), msg.key(), headers=headers,
                                on_delivery=partial(self._outcome_alone, token))
        except (KafkaException, BufferError) as exc:
            self._failed(token, translate(exc, f"cannot send to topic {msg.topic()!r}"))

    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes | None]], token: Any
    ) -> None:
        self._use.used.add(topic)
        on_delivery = partial(self._outcome, token)  # one partial per record, for either outcome
        produce = self.client.produce
        deadline = 0.0
        while True:
            try:
                produce(topic, value, key, headers=headers or None, on_delivery=on_delivery)
                return
            except BufferError as exc:
                # The buffer is full (the broker is slow or away): wait for room, as kafka-python's
                # send() blocks up to max_block_ms.
                now = time.monotonic()
                deadline = deadline or now + SEND_MAX_BLOCK_S
                if now >= deadline:
                    raise BrokerError(
                        f"cannot send to topic {topic!r}: the producer's buffer stayed full for"
                        f" {SEND_MAX_BLOCK_S:g} s ({exc})", Failure.DELIVERY_FAILED,
                    ) from exc
                time.sleep(0.01)
            except KafkaException as exc:
                error = translate(exc, f"cannot send to topic {topic!r}")
                err = exc.args[0]
                if self._transactional and (err.code() == E._STATE or err.txn_requires_abort()):
                    # The transaction failed already (its abort is under way): this record is
                    # re-read after the abort, like every other of the transaction.
                    self._failed(token, BrokerError(error.args[0], Failure.TRANSACTION_ABORTED))
                    return
                raise error from exc

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        # Serve every outstanding report on this thread, the serving thread held off: when this
        # returns True, each acknowledgement has reached the handler.
        with self._served_here():
            try:
                left = self.client.flush(max(0.0, deadline - time.monotonic()))
                self._hand_over()
                if self._alone is not None:
                    left += self._alone.flush(max(0.0, deadline - time.monotonic()))
            except KafkaException as exc:  # the client's fatal error (see _serve)
                raise translate(exc, "cannot flush the producer") from exc
        return left == 0

    def forget_idle_topics(self) -> list[str]:
        """librdkafka cannot drop a topic from a client, so at-least-once the client is swapped for a
        new one, which knows only the topics it is sent to, once every record sent is acknowledged
        (else at a later check). A transactional client is kept: its replacement would have to fence
        it (``_replace``), between two transactions; not done, so an exactly-once worker's producer
        still refreshes, and on such a broker creates, every topic it wrote to until it restarts."""
        idle = self._use.idle()
        if not idle or self._transactional:
            return []
        if not self.flush(FORGET_FLUSH_S):
            self._use.keep(idle)
            return []
        errors = _Errors("producer")
        retired = self._take_over(_new(ck.Producer, {**self._config, "error_cb": errors}), errors)  # flushed: nothing left to serve
        threading.Thread(target=_close_all, args=(retired,), name="tagstream-kafka-close", daemon=True).start()
        log.info("producer_topics_forgotten", topics=idle, idle_s=self._use.idle_s, how="a new producer client took over")
        return idle

    # -- transactions ------------------------------------------------------------------------------------------
    def init_transactions(self) -> None:
        self._txn(lambda c, t: c.init_transactions(t), "cannot initialise transactions",
                  timeout_s=diagnose.BOOTSTRAP_TIMEOUT_MS / 1000 + TRANSACTION_TIMEOUT_S)

    def begin_transaction(self) -> None:
        if self._stuck_in is not None:
            raise BrokerError(f"cannot begin a transaction: the producer is stuck in {self._stuck_in}",
                              Failure.KAFKA_TRANSIENT)
        try:
            self.client.begin_transaction()  # local: librdkafka does not block here
        except KafkaException as exc:
            raise translate(exc, "cannot begin a transaction") from exc

    def send_offsets_to_transaction(self, positions: dict[TopicPartition, int], group_metadata: Any) -> None:
        offsets = _offsets(positions)
        self._txn(lambda c, t: c.send_offsets_to_transaction(offsets, group_metadata, t),
                  "cannot add the offsets to the transaction")

    def commit_transaction(self) -> None:
        self._txn(lambda c, t: c.commit_transaction(t), "cannot commit the transaction")

    def abort_transaction(self) -> None:
        """Abort the open transaction; a stuck client, or one that cannot abort, is replaced instead."""
        if self._stuck_in is None:
            try:
                self._txn(lambda c, t: c.abort_transaction(t), "cannot abort the transaction")
                return
            except BrokerError as exc:
                if exc.failure in (Failure.PRODUCER_FENCED, Failure.INSTANCE_FENCED) or self._closing.is_set():
                    raise  # a zombie exits; a closing worker leaves it to the broker's transaction timeout
                why = str(exc)
        else:
            why = f"stuck in {self._stuck_in}"
        self._replace(why)

    def _replace(self, why: str) -> None:
        """A new client with the same transactional id: its init_transactions fences the old one and
        aborts the transaction it left open, so nothing the old one sent is ever read committed."""
        if self._closing.is_set():
            raise BrokerError(f"cannot abort the transaction ({why}): the producer is closing",
                              Failure.TRANSACTION_ABORTED)
        log.warning("producer_replacing", reason=why)
        errors = _Errors("producer")
        client = _new(ck.Producer, {**self._config, "error_cb": errors})
        try:
            self._attempts(client, lambda c, t: c.init_transactions(t), "cannot initialise the replacement producer",
                           diagnose.BOOTSTRAP_TIMEOUT_MS / 1000 + TRANSACTION_TIMEOUT_S)
        except BrokerError:
            self._replaced.append(client)
            raise
        old, _ = self._take_over(client, errors)  # the old client's reports are never served: its transaction is aborted
        self._replaced.append(old)
        self._stuck_in = None
        log.warning("producer_replaced", reason=why, replaced_so_far=len(self._replaced))

    def _take_over(self, client: Any, errors: _Errors) -> tuple[Any, Any]:
        """Make ``client`` this producer's, its reports served from now on; returns the old client and
        the one-record one (a new one is made when needed). What the old ones still say is no news."""
        with self._served_here():
            old = self.client, self._alone
            self.client, self._alone = client, None
            self.errors.muted = True
            self.errors = errors
        return old

    def _txn(self, call: Callable[[Any, float], Any], what: str, timeout_s: float = TRANSACTION_TIMEOUT_S) -> None:
        if self._stuck_in is not None:
            raise BrokerError(f"{what}: the producer is stuck in {self._stuck_in}", Failure.KAFKA_TRANSIENT)
        self._attempts(self.client, call, what, timeout_s)

    def _attempts(self, client: Any, call: Callable[[Any, float], Any], what: str, timeout_s: float) -> None:
        """``call(client, timeout)`` until it succeeds, fails for good, or ``timeout_s`` is spent.

        librdkafka's rules: a retriable error means the same call may be made again; one that
        requires an abort, or a fatal one, ends it here (the caller aborts, or the worker exits).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            attempt_s = max(1.0, min(TXN_CALL_TIMEOUT_S, deadline - time.monotonic()))
            try:
                self._attempt(partial(call, client, attempt_s), attempt_s, what)
                return
            except KafkaException as exc:
                err = _kafka_error(exc)
                if (err is None or not err.retriable() or err.txn_requires_abort() or err.fatal()
                        or time.monotonic() + TXN_RETRY_PAUSE_S >= deadline or self._closing.is_set()):
                    raise translate(exc, what) from exc
                log.warning("transaction_call_retried", call=what, error=err.str())
                time.sleep(TXN_RETRY_PAUSE_S)

    def _attempt(self, call: Callable[[], Any], attempt_s: float, what: str) -> None:
        """One attempt in a helper thread; one that outlives its own timeout marks the client stuck."""
        finished, _ = run_bounded(call, attempt_s + TXN_STUCK_GRACE_S, "tagstream-kafka-txn", stop=self._closing)
        if finished:
            return
        self._stuck_in = what
        if self._closing.is_set():
            raise BrokerError(f"{what}: given up, the producer is closing", Failure.TRANSACTION_ABORTED)
        log.error("transaction_call_stuck", call=what, waited_s=round(attempt_s + TXN_STUCK_GRACE_S, 1),
                  action="the transaction is aborted and the producer replaced")
        raise BrokerError(
            f"{what}: librdkafka did not return within {attempt_s + TXN_STUCK_GRACE_S:g} s (its own timeout"
            f" is {attempt_s:g} s); the producer is stuck and will be replaced", Failure.KAFKA_TRANSIENT,
        )

    def close(self, timeout_s: float) -> None:
        self._closing.set()  # a transactional call still waited for gives up now
        try:
            if self._stuck_in is None and not self.flush(timeout_s):
                log.warning("producer_close_unflushed", left=len(self.client))
        finally:
            self._stop.set()
            self._thread.join(max(1.0, DR_POLL_S * 10))


def _close_all(clients: list[Any]) -> None:
    """Close flushed clients (off the sending thread: librdkafka's teardown takes a moment)."""
    for client in clients:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _unset(*_args: Any) -> None:
    raise RuntimeError("set_handler() was not called before send()")
