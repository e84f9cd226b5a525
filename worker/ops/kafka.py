"""Kafka clients for the operations commands, built from the worker's settings.

Same brokers and credentials as the worker (``WorkerSettings.kafka_security``); every client
error on the way is translated once, here, into a ``BrokerError`` whose message says what to
check (the kind comes from ``worker.kafka.kafkapython.failure_for_error``, the one kafka-python table).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import errors as kafka_errors

from worker.errors import BrokerError, Failure
from worker.kafka.compat import forbid_topic_creation
from worker.kafka.kafkapython import failure_for_error as failure_for_kafka_error
from worker.settings import WorkerSettings

# How long a command waits for the brokers before giving up with a message (they answer in
# milliseconds when up; this bounds a wrong address or a firewall, not normal work).
CONNECT_TIMEOUT_MS = 15_000
# A produce the broker has not acknowledged within this is a failure, not a slow day.
ACK_TIMEOUT_S = 30.0
# Retriable errors (a group coordinator still loading, a leader moving) are retried this long:
# a fresh cluster takes seconds to elect the coordinator of a group it has never seen.
RETRY_FOR_S = 30.0
RETRY_BACKOFF_S = 0.5

T = TypeVar("T")

_HINTS = {
    Failure.AUTHENTICATION_FAILED: "check TAGSTREAM_SASL_MECHANISM, TAGSTREAM_SASL_USERNAME and TAGSTREAM_SASL_PASSWORD",
    Failure.AUTHORIZATION_FAILED: "these credentials need Describe/Read on the topics and the group (and Write to redrive)",
    Failure.BROKER_UNREACHABLE: "check TAGSTREAM_BOOTSTRAP_SERVERS",
    Failure.TOPIC_MISSING: "check the topic name",
}


def kafka_call(what: str, call: Callable[[], T]) -> T:
    """Run one Kafka call; its errors become a BrokerError saying what failed and what to check.

    Retriable errors are retried for up to RETRY_FOR_S (every call here is safe to repeat:
    reads, offset commits of fixed values, and sends whose acknowledgement is awaited apart).
    """
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return _translated(what, call)
        except BrokerError as exc:
            cause = exc.__cause__
            retriable = isinstance(cause, kafka_errors.KafkaError) and getattr(cause, "retriable", False)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(RETRY_BACKOFF_S)


def _translated(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except BrokerError:
        raise
    except kafka_errors.KafkaTimeoutError as exc:
        raise BrokerError(f"{what}: no answer from the brokers in time ({exc}); check TAGSTREAM_BOOTSTRAP_SERVERS",
                          Failure.BROKER_UNREACHABLE) from exc
    except kafka_errors.KafkaError as exc:
        failure = failure_for_kafka_error(exc)
        hint = _HINTS.get(failure)
        raise BrokerError(f"{what}: {exc}" + (f"; {hint}" if hint else ""), failure) from exc


def _common(settings: WorkerSettings) -> dict[str, Any]:
    return {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",")],
        "bootstrap_timeout_ms": CONNECT_TIMEOUT_MS,
        "client_id": "tagstream-ops",
        **settings.kafka_security(),
    }


@contextmanager
def admin_client(settings: WorkerSettings) -> Iterator[KafkaAdminClient]:
    admin = kafka_call("connecting (admin)", lambda: KafkaAdminClient(**_common(settings)))
    try:
        yield admin
    finally:
        admin.close()


@contextmanager
def consumer(settings: WorkerSettings, group_id: str | None = None) -> Iterator[KafkaConsumer]:
    """A consumer that never commits by itself; with ``group_id`` only for explicit commits."""
    client = kafka_call(
        "connecting (consumer)",
        lambda: KafkaConsumer(
            group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            allow_auto_create_topics=False, metrics_enabled=False, **_common(settings),
        ),
    )
    forbid_topic_creation(client)  # rewinding or reading a missing topic must not create it (compat.py)
    try:
        yield client
    finally:
        client.close(autocommit=False)


@contextmanager
def producer(settings: WorkerSettings) -> Iterator[KafkaProducer]:
    """acks=all with idempotence: a retried send is written once."""
    client = kafka_call(
        "connecting (producer)",
        lambda: KafkaProducer(
            acks="all", enable_idempotence=True, linger_ms=0, metrics_enabled=False, **_common(settings)
        ),
    )
    try:
        yield client
    finally:
        client.close(timeout=ACK_TIMEOUT_S)


def existing_topics(client: KafkaConsumer) -> set[str]:
    return set(kafka_call("listing topics", client.topics))


def require_topic(client: KafkaConsumer, topic: str, flag: str) -> list[int]:
    """The partitions of ``topic``; a BrokerError naming ``flag`` and similar topics if it does not exist."""
    partitions = kafka_call(f"looking up {topic}", lambda: client.partitions_for_topic(topic))
    if not partitions:
        topics = existing_topics(client)
        near = sorted(t for t in topics if t.endswith(".dlq")) if flag == "--from" else sorted(topics)
        listed = f" (topics here: {', '.join(near[:20])}{', ...' if len(near) > 20 else ''})" if near else ""
        raise BrokerError(f"{flag} {topic}: no such topic on {', '.join(client.config['bootstrap_servers'])}{listed}",
                          Failure.TOPIC_MISSING)
    return sorted(partitions)
