"""The broker controls for fault tests, on real brokers: restarts keep topics, records and committed
offsets; clients carry on after a freeze; a port taken during a restart fails clearly.

Each test has a broker of its own (``restartable_kafka``): a JVM start or two per test.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from worker_support import poll_records

from localkafka import LocalKafka, PortInUseError, answer_metadata

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a JVM start or two per test

PARTITIONS = 3
# The limits bound a stall on a loaded machine; a healthy local broker answers in milliseconds.
SEND_TIMEOUT_S = 60
READ_TIMEOUT_S = 60
FROZEN_S = 4.0  # longer than the clients' request timeout below: they must drop and reconnect
CLIENT_REQUEST_TIMEOUT_MS = 2000


def create_topic(kafka: LocalKafka) -> str:
    topic = f"controls-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        admin.create_topics({topic: {"num_partitions": PARTITIONS, "replication_factor": -1}})
        admin.wait_for_topics([topic], timeout_ms=30_000)
    finally:
        admin.close()
    return topic


def produce(kafka: LocalKafka, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)  # acks=all
    try:
        for future in [producer.send(topic, value=v) for v in values]:
            future.get(timeout=SEND_TIMEOUT_S)
    finally:
        producer.close()


def read_all(kafka: LocalKafka, topic: str, expected: int) -> list[bytes]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, group_id=None, auto_offset_reset="earliest"
    )
    try:
        return sorted(r.value for r in poll_records(consumer, expected, READ_TIMEOUT_S))
    finally:
        consumer.close()


def consume_and_commit(kafka: LocalKafka, topic: str, group: str, expected: int) -> list[bytes]:
    """Read as ``group`` from its committed offsets (or the start), commit, and leave."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    try:
        records = poll_records(consumer, expected, READ_TIMEOUT_S)
        consumer.commit()
        return sorted(r.value for r in records)
    finally:
        consumer.close()


def committed(kafka: LocalKafka, group: str) -> dict[Any, int]:
    """The group's committed offsets by TopicPartition, as the broker reports them."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


def values(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:03d}".encode() for i in range(n)]


def test_restart_and_kill_keep_topics_records_and_committed_offsets(restartable_kafka) -> None:
    """After a clean restart and after kill -9 + start, on the same ports: the topic, every record
    and the group's committed offsets are there, and the group resumes where it committed."""
    kafka = restartable_kafka()
    ports, group = kafka.ports, f"controls-{uuid.uuid4().hex[:8]}"
    topic = create_topic(kafka)
    first = values("first", 30)
    produce(kafka, topic, first)
    assert consume_and_commit(kafka, topic, group, 30) == sorted(first)
    offsets = committed(kafka, group)
    assert sum(offsets.values()) == 30

    kafka.restart()
    assert kafka.ports == ports
    assert read_all(kafka, topic, 30) == sorted(first)
    assert committed(kafka, group) == offsets

    second = values("second", 20)
    produce(kafka, topic, second)
    kafka.restart(kill=True)
    assert kafka.ports == ports and len(kafka.ready_times_s) == 3
    assert read_all(kafka, topic, 50) == sorted(first + second)
    assert committed(kafka, group) == offsets
    assert consume_and_commit(kafka, topic, group, 20) == sorted(second), "the group did not resume"


UNFENCE_S = 20


def wait_unfenced(bootstrap_servers: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            answer_metadata(bootstrap_servers)
            return
        except RuntimeError:  # answered, still fenced
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_clients_reconnect_and_carry_on_after_a_freeze(restartable_kafka, caplog) -> None:
    """While frozen the broker answers nothing and clients drop their timed-out connections; after
    thaw a send made during the freeze is delivered and a group consumer from before reads it."""
    caplog.set_level(logging.INFO, logger="kafka")
    kafka = restartable_kafka()
    topic = create_topic(kafka)
    common = {"bootstrap_servers": kafka.bootstrap_servers, "request_timeout_ms": CLIENT_REQUEST_TIMEOUT_MS}
    producer = KafkaProducer(**common)
    consumer = KafkaConsumer(
        topic, group_id=f"frozen-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
        session_timeout_ms=30_000, **common,
    )
    try:
        producer.send(topic, value=b"before").get(timeout=SEND_TIMEOUT_S)
        assert [r.value for r in poll_records(consumer, 1, READ_TIMEOUT_S, quiet_s=0)] == [b"before"]

        with kafka.frozen():
            with pytest.raises(Exception):  # noqa: B017 - kafka-python raises its own timeout kinds
                answer_metadata(kafka.bootstrap_servers, timeout_s=1.0)
            future = producer.send(topic, value=b"during")
            time.sleep(FROZEN_S)
            assert not future.is_done, "a frozen broker acknowledged a record"
        dropped = [r.getMessage() for r in caplog.records if "Closing connection" in r.getMessage()]
        assert dropped, "no client dropped its connection to the frozen broker"

        future.get(timeout=SEND_TIMEOUT_S)
        assert [r.value for r in poll_records(consumer, 1, READ_TIMEOUT_S, quiet_s=0)] == [b"during"]
        # Frozen past its session, the broker is fenced by its own controller (the same JVM) until
        # its next heartbeat after the thaw: it serves clients already, and is unfenced within seconds.
        wait_unfenced(kafka.bootstrap_servers, UNFENCE_S)
    finally:
        producer.close()
        consumer.close()


def test_a_port_taken_during_a_restart_fails_clearly_and_stop_is_for_good(restartable_kafka) -> None:
    """start() after halt() refuses a listener port taken meanwhile, naming it; once freed the broker
    comes back with its topic; stop() then ends it and removes its folder."""
    kafka = restartable_kafka(tls=True)
    topic = create_topic(kafka)
    assert kafka.ports is not None and kafka.ports.ssl is not None
    kafka.halt()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", kafka.ports.ssl))
    squatter.listen()
    try:
        with pytest.raises(PortInUseError, match=rf"port {kafka.ports.ssl} \(SSL listener\)"):
            kafka.start()
    finally:
        squatter.close()

    kafka.start()
    admin = KafkaAdminClient(**kafka.endpoint("SSL").client_config())  # same certificates
    try:
        assert topic in admin.list_topics()
    finally:
        admin.close()
    run_dir = kafka.run_dir
    assert run_dir is not None
    kafka.stop()
    assert not kafka.running and not run_dir.exists()
    with pytest.raises(Exception):  # noqa: B017 - nothing listens any more
        answer_metadata(f"127.0.0.1:{kafka.ports.plaintext}", timeout_s=1.0)
