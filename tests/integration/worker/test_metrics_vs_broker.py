"""The worker's metrics against the broker's own numbers (issue 10, finding 3): each counter counts
each record once, in-flight returns to 0, and every assigned partition reports its lag."""

from __future__ import annotations

import json
import random

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from worker_support import fixture_texts, read_records, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 4
LAG_REFRESH_S = 5.0  # worker/source.py LAG_INTERVAL_S


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def test_metrics_match_the_brokers_numbers_after_a_multi_partition_run(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """After a 4-partition run: in = inputs, out = results, dead letters = DLQ records, in-flight 0, lag 0 everywhere."""
    topic = new_topic(partitions=PARTITIONS, prefix="metrics")
    new_topic(partitions=PARTITIONS, name=f"{topic}.labels")
    new_topic(partitions=1, name=f"{topic}.dlq")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    rng = random.Random(5)
    good, bad = 0, 0
    for i, text in enumerate(fixture_texts(1500, seed=21)):
        if rng.random() < 0.03:
            value, bad = b"\xff not json", bad + 1
        else:
            value, good = json.dumps({"id": f"m{i}", "text": text}).encode(), good + 1
        producer.send(topic, value=value, key=f"k{rng.randrange(50)}".encode())
    producer.flush(30)
    producer.close()
    # The worker starts after the inputs are there: a group join with data waiting is where
    # re-reads after the first rebalance used to be counted twice.
    worker = start_worker(topic, tiny_bundle)
    read_records(kafka_bootstrap, f"{topic}.labels", expected=good, quiet_s=0.5)
    read_records(kafka_bootstrap, f"{topic}.dlq", expected=bad, quiet_s=0.5)
    wait_until(
        lambda: group_offsets(kafka_bootstrap, worker.settings.group_id, topic) == end_offsets(kafka_bootstrap, topic),
        30, "the group to commit every input",
    )

    inputs = end_offsets(kafka_bootstrap, topic)
    m = worker.metrics
    wait_until(lambda: m.value("tagstream_in_flight_events") == 0, 2 * LAG_REFRESH_S, "in-flight to return to 0")

    def lags() -> dict[int, float | None]:
        return {
            p: m.registry.get_sample_value("tagstream_consumer_lag", {"topic": topic, "partition": str(p)})
            for p in range(PARTITIONS)
        }

    wait_until(lambda: lags() == dict.fromkeys(range(PARTITIONS), 0.0), 3 * LAG_REFRESH_S, f"lag 0 everywhere ({lags()})")
    assert m.value("tagstream_events_in_total", {"topic": topic}) == sum(inputs.values()) == good + bad
    assert m.value("tagstream_events_out_total", {"topic": topic}) == sum(end_offsets(kafka_bootstrap, f"{topic}.labels").values()) == good
    delivered_letters = sum(
        m.value("tagstream_dead_letters_total", {"reason": r}) for r in ("invalid_utf8", "invalid_json")
    )
    assert delivered_letters == sum(end_offsets(kafka_bootstrap, f"{topic}.dlq").values()) == bad
