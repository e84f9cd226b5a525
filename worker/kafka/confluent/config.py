"""librdkafka settings of the worker's consumer and producer, from ``WorkerSettings``."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException

from worker.errors import BrokerError, Failure
from worker.kafka.confluent.errors import translate

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

# librdkafka's own log lines, through stdlib logging like kafka-python's ("kafka" is at WARNING
# in the worker: see telemetry.configure_logging). At DEBUG its debug contexts are turned on.
LIBRDKAFKA_LOGGER = "kafka.librdkafka"
LIBRDKAFKA_DEBUG_CONTEXTS = "generic,broker,security,cgrp,topic"

PRODUCER_LINGER_MS = 5  # results of one batch leave in a few produce requests, not one each
PRODUCER_BATCH_BYTES = 256 * 1024  # as kafka-python's backend; kept under topics' usual 1 MiB limit
PRODUCER_BUFFER_KBYTES = 32 * 1024  # as kafka-python's buffer_memory: a full buffer blocks send
TOPIC_METADATA_WAIT_MS = 15_000  # records for a topic the broker says does not exist fail after this
CONSUMER_QUEUE_KBYTES = 16 * 1024  # records prefetched per consumer: bounds memory, ample for throughput
STATS_INTERVAL_MS = 1_000  # how often librdkafka reports the group coordinator's state (coordinator_known)


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
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
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



def new_client(kind: Callable[[dict[str, Any]], Any], config: dict[str, Any]) -> Any:
    try:
        return kind(config)
    except KafkaException as exc:  # a setting librdkafka refuses: say which, never the values
        raise BrokerError(f"the Kafka client refused its configuration: {translate(exc, 'config')}",
                          Failure.SETTINGS_INVALID) from exc
