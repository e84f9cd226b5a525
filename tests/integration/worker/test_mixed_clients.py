"""One consumer group of workers on both Kafka clients: the state of a fleet during a rolling change of
TAGSTREAM_KAFKA_CLIENT (the README's advice for GPU workers). Both share the partitions, and when the
kafka-python worker leaves, the confluent one takes them over: every input labelled, none twice."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest
from worker_support import fixture_texts, produce_events, read_records, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("confluent_kafka") is None, reason="confluent-kafka is not installed"),
]


@pytest.mark.parametrize("kafka_client", ["kafka-python"], indirect=True)  # the second worker is confluent
def test_a_group_mixing_both_clients_shares_the_partitions_and_hands_them_over(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, kafka_client
):
    """Both clients agree on an assignment protocol (range): each worker gets partitions and labels inputs;
    after the kafka-python worker's SIGTERM drain, the confluent one labels the rest."""
    topic = new_topic(partitions=4, prefix="worker-mixed")
    old = start_worker(topic, tiny_bundle)  # kafka-python
    new = start_worker(topic, tiny_bundle, kafka_client="confluent")
    wait_until(lambda: bool(old.tracker.assigned()) and bool(new.tracker.assigned()), timeout_s=60,
               what="both workers to hold partitions")
    assert not set(old.tracker.assigned()) & set(new.tracker.assigned())

    first = produce_events(kafka_bootstrap, topic, fixture_texts(200, seed=51), prefix="first")
    read_records(kafka_bootstrap, f"{topic}.labels", expected=200, quiet_s=0.3)
    for worker in (old, new):
        assert worker.metrics.value("tagstream_events_out_total", {"topic": topic}) > 0

    old.stop()
    assert old.wait(timeout=30) == 0
    wait_until(lambda: len(new.tracker.assigned()) == 4, timeout_s=60, what="the confluent worker to hold all four")
    second = produce_events(kafka_bootstrap, topic, fixture_texts(100, seed=52), prefix="second")
    labeled = read_records(kafka_bootstrap, f"{topic}.labels", expected=300, quiet_s=0.5)
    assert Counter(json.loads(r.value)["id"] for r in labeled) == Counter(first + second)
    new.stop()
    assert new.wait(timeout=30) == 0
