"""Round trips through a real broker: many keyed messages with headers, and SCRAM authentication."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError
from worker_support import poll_records

from localkafka import SCRAM_MECHANISMS, Endpoint

pytestmark = pytest.mark.integration

N_MESSAGES = 10_000
N_KEYS = 500  # 20 messages per key, so per-key order is checked too
PARTITIONS = 3
# 10,000 small records take about a second each way on 2 cores; the limits bound a stall.
DELIVERY_TIMEOUT_S = 120
CONSUME_TIMEOUT_S = 120
# After the last expected record, keep polling this long to catch duplicates.
DUPLICATE_WATCH_S = 1.0


def message(seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of message ``seq``: text, binary and empty values included."""
    key = f"key-{seq % N_KEYS:04d}".encode()
    value = json.dumps(
        {"seq": seq, "text": f"message {seq} · naïve café ✓"}, ensure_ascii=False
    ).encode()
    headers = [
        ("seq", str(seq).encode()),
        ("content-type", b"application/json"),
        ("binary", bytes([seq % 256, 0, 255, (seq * 7) % 256])),
        ("empty", b""),
    ]
    return key, value, headers


def test_ten_thousand_keyed_messages_with_headers_arrive_once_in_order_and_intact(
    kafka_bootstrap: str, new_topic: Any, new_group: Any
) -> None:
    """10,000 keyed messages with headers over 3 partitions each arrive exactly once, in partition order, intact."""
    topic = new_topic(partitions=PARTITIONS, prefix="roundtrip")

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)  # acks=all, idempotent
    futures = []
    for seq in range(N_MESSAGES):
        key, value, headers = message(seq)
        futures.append(producer.send(topic, key=key, value=value, headers=headers))
    producer.flush(timeout=DELIVERY_TIMEOUT_S)
    written = [future.get(timeout=DELIVERY_TIMEOUT_S) for future in futures]
    producer.close()
    where = {seq: (meta.partition, meta.offset) for seq, meta in enumerate(written)}

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=new_group(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        records = poll_records(consumer, N_MESSAGES, CONSUME_TIMEOUT_S, DUPLICATE_WATCH_S)
    finally:
        consumer.close()

    seqs = [json.loads(r.value)["seq"] for r in records]
    counts = Counter(seqs)
    missing = sorted(set(range(N_MESSAGES)) - counts.keys())
    duplicated = sorted(seq for seq, n in counts.items() if n > 1)
    assert not missing, f"{len(missing)} messages never arrived, e.g. {missing[:5]}"
    assert not duplicated, (
        f"{len(duplicated)} messages arrived more than once, e.g. {duplicated[:5]}"
    )
    assert len(records) == N_MESSAGES

    for record, seq in zip(records, seqs, strict=True):
        key, value, headers = message(seq)
        assert (record.key, record.value) == (key, value), f"message {seq} changed"
        assert [(k, bytes(v)) for k, v in record.headers] == headers, (
            f"headers of message {seq} changed"
        )
        assert (record.partition, record.offset) == where[seq], (
            f"message {seq} not where it was written"
        )

    by_partition: dict[int, list[int]] = defaultdict(list)
    for record in records:
        by_partition[record.partition].append(record.offset)
    assert sorted(by_partition) == list(range(PARTITIONS)), (
        "the keys did not spread over every partition"
    )
    for partition, offsets in by_partition.items():
        assert offsets == list(range(len(offsets))), f"partition {partition} arrived out of order"

    per_key: dict[bytes, list[int]] = defaultdict(list)
    for record, seq in zip(records, seqs, strict=True):
        per_key[record.key].append(seq)
    assert all(s == sorted(s) for s in per_key.values()), (
        "some key's messages arrived out of send order"
    )


def _roundtrip(config: dict[str, Any], topic: str, n: int = 20) -> list[bytes]:
    producer = KafkaProducer(**config)
    for i in range(n):
        producer.send(topic, key=b"k", value=f"scram {i}".encode())
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(
        topic, auto_offset_reset="earliest", enable_auto_commit=False, **config
    )
    try:
        return [r.value for r in poll_records(consumer, n, 30, DUPLICATE_WATCH_S)]
    finally:
        consumer.close()


@pytest.mark.parametrize("mechanism", SCRAM_MECHANISMS)
def test_scram_right_password_connects_and_round_trips(
    kafka_scram: Endpoint, mechanism: str
) -> None:
    """With the right SCRAM password a client creates a topic, produces and consumes through the SASL listener."""
    config = kafka_scram.client_config(mechanism)
    admin = KafkaAdminClient(**config)
    topic = f"scram-{mechanism.lower()}-{time.monotonic_ns()}"
    try:
        admin.create_topics(
            {topic: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True
        )
    finally:
        admin.close()
    assert _roundtrip(config, topic) == [f"scram {i}".encode() for i in range(20)]


@pytest.mark.parametrize("mechanism", SCRAM_MECHANISMS)
def test_scram_wrong_password_is_refused_as_an_authentication_failure(
    kafka_scram: Endpoint, mechanism: str
) -> None:
    """With a wrong SCRAM password no client connects, and the broker records an authentication failure."""
    assert kafka_scram.log_path is not None
    log_before = kafka_scram.log_path.stat().st_size
    config = kafka_scram.client_config(mechanism, password="wrong-password")

    # kafka-python 3.0 retries authentication failures during bootstrap until its timeout and
    # then reports the timeout; the SaslAuthenticationFailedError itself is only logged.
    with pytest.raises(KafkaTimeoutError):
        KafkaProducer(bootstrap_timeout_ms=2_000, **config)

    expected = f"invalid credentials with SASL mechanism {mechanism}"
    deadline = time.monotonic() + 10
    while True:
        with kafka_scram.log_path.open("rb") as log:
            log.seek(log_before)
            new_lines = log.read().decode(errors="replace")
        if expected in new_lines:
            break
        assert time.monotonic() < deadline, (
            f"the broker logged no '{expected}':\n{new_lines[-2000:]}"
        )
        time.sleep(0.1)
    assert "Failed authentication with /127.0.0.1" in new_lines
