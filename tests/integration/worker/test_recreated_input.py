"""An input topic deleted and created again under a running worker (an operator changing its partitions or
configs): the worker does not create it again itself, and labels the new topic's records, counted once each."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from kafka.admin import NewTopic
from worker_support import fixture_texts, produce_events, read_records, wait_until

pytestmark = pytest.mark.integration

ABSENT_S = 4.0  # how long the deleted topic must stay deleted: kafka-python re-created it within a second


def test_a_deleted_input_topic_stays_deleted_and_once_created_again_its_records_are_labeled_and_counted_once(
    kafka_bootstrap, kafka_admin, new_topic, start_worker, tiny_bundle
):
    """On a broker with auto.create.topics.enable (Apache Kafka's default), a kafka-python worker created its
    deleted input topic again at once, with the broker's default partitions, and the operator's own create
    failed with TopicAlreadyExists. Now it stays deleted until the operator creates it; the worker then
    labels the new log's records (offsets from 0 again) and counts them in events_in, which the old
    dedupe of re-reads took for records read twice."""
    topic = new_topic(partitions=2, prefix="worker-recreated")
    before = produce_events(kafka_bootstrap, topic, fixture_texts(30, seed=41), prefix="before")
    worker = start_worker(topic, tiny_bundle)
    read_records(kafka_bootstrap, f"{topic}.labels", expected=30, quiet_s=0.5)
    wait_until(lambda: worker.tracker.committable() == {} and worker.tracker.in_flight() == 0, timeout_s=15,
               what="every input acknowledged")
    time.sleep(0.5)  # past a commit interval (200 ms here): the group's offsets cover the 30

    kafka_admin.delete_topics([topic], timeout_ms=10_000)
    deadline = time.monotonic() + ABSENT_S
    while time.monotonic() < deadline:
        assert topic not in kafka_admin.list_topics(), "the worker created its deleted input topic again"
        time.sleep(0.25)

    kafka_admin.create_topics([NewTopic(topic, 2, 1)])  # raises TopicAlreadyExists if something beat us to it
    kafka_admin.wait_for_topics([topic], timeout_ms=30_000)
    after = produce_events(kafka_bootstrap, topic, fixture_texts(20, seed=42), prefix="after")
    labeled = read_records(kafka_bootstrap, f"{topic}.labels", expected=50, timeout_s=90)
    assert Counter(json.loads(r.value)["id"] for r in labeled) == Counter(before + after)
    wait_until(lambda: worker.metrics.value("tagstream_events_in_total", {"topic": topic}) == 50, timeout_s=10,
               what="events_in to count the new topic's 20 records")
    worker.stop()
    assert worker.wait(timeout=30) == 0
    assert worker.metrics.value("tagstream_events_in_total", {"topic": topic}) == 50
    assert worker.metrics.value("tagstream_inputs_deleted_unread_total", {"topic": topic}) == 0
