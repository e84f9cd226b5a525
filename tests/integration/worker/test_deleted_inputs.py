"""Inputs the broker deleted before the group read them are counted and logged (worker/retention.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from kafka.structs import TopicPartition
from worker_support import fixture_texts, produce_events, read_records, wait_until

pytestmark = pytest.mark.integration


def test_inputs_deleted_while_the_group_was_stopped_are_counted_and_the_rest_labeled(
    kafka_bootstrap, kafka_admin, new_topic, start_worker, tiny_bundle
):
    """The group labels 40 inputs and stops; 100 more arrive and the first 60 of them are deleted (as retention
    would) before it starts again. The new worker labels the 40 still there and counts the 60 in
    tagstream_inputs_deleted_unread_total; it labels nothing twice."""
    topic = new_topic(partitions=1, prefix="worker-deleted")
    before = produce_events(kafka_bootstrap, topic, fixture_texts(40, seed=31), prefix="before")
    first = start_worker(topic, tiny_bundle)
    read_records(kafka_bootstrap, f"{topic}.labels", expected=40, quiet_s=0.5)
    first.stop()
    assert first.wait(timeout=30) == 0
    assert first.metrics.value("tagstream_inputs_deleted_unread_total", {"topic": topic}) == 0

    after = produce_events(kafka_bootstrap, topic, fixture_texts(100, seed=32), prefix="after")
    kafka_admin.delete_records({TopicPartition(topic, 0): 100})  # offsets 40..99 gone, unread
    second = start_worker(topic, tiny_bundle)
    labeled = read_records(kafka_bootstrap, f"{topic}.labels", expected=80)
    assert Counter(json.loads(r.value)["id"] for r in labeled) == Counter(before + after[60:])
    wait_until(
        lambda: second.metrics.value("tagstream_inputs_deleted_unread_total", {"topic": topic}) == 60,
        timeout_s=10, what="60 inputs counted as deleted unread",
    )
    second.stop()
    assert second.wait(timeout=30) == 0
    assert second.metrics.value("tagstream_inputs_deleted_unread_total", {"topic": topic}) == 60
