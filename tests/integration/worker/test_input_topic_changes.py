"""An operator changing an input topic under running workers: partitions added (to scale out further) are
read within TAGSTREAM_METADATA_REFRESH_S; a topic deleted and created again is not created by the worker
itself, and the new topic's records are labelled, counted once each; a result topic deleted once the
worker no longer writes to it stays deleted."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest
from kafka.admin import NewPartitions, NewTopic
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
    # The broker answers the delete once its controller has committed it; its metadata cache, which
    # list_topics reads, can follow a moment later: the topic must be seen gone there first (once
    # failed in CI, the first look finding it still listed), then stay gone.
    wait_until(lambda: topic not in kafka_admin.list_topics(), timeout_s=15, what="the deletion to reach the metadata")
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


def test_partitions_added_to_an_input_topic_are_read_within_the_metadata_refresh(
    kafka_bootstrap, kafka_admin, new_topic, start_worker, tiny_bundle
):
    """Both clients refreshed topic metadata every 5 min by default: records on partitions added to a running
    worker's input waited that long, unread and out of its lag. With TAGSTREAM_METADATA_REFRESH_S (2 s here)
    they are labelled within a few refreshes."""
    from kafka import KafkaProducer

    topic = new_topic(partitions=1, prefix="worker-added-partitions")
    worker = start_worker(topic, tiny_bundle, metadata_refresh_s=2.0)
    first = produce_events(kafka_bootstrap, topic, fixture_texts(5, seed=43), prefix="first")
    read_records(kafka_bootstrap, f"{topic}.labels", expected=5, quiet_s=0.2)

    kafka_admin.create_partitions({topic: NewPartitions(3)})
    added = time.monotonic()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    ids = [f"added-{p}" for p in (1, 2)]
    for p, event_id in zip((1, 2), ids, strict=True):
        producer.send(topic, json.dumps({"id": event_id, "text": "on a new partition"}).encode(), partition=p)
    producer.flush()
    producer.close()
    labeled = read_records(kafka_bootstrap, f"{topic}.labels", expected=7, timeout_s=60, quiet_s=0.2)
    waited = time.monotonic() - added
    assert Counter(json.loads(r.value)["id"] for r in labeled) == Counter(first + ids)
    assert waited < 30, f"records on the added partitions took {waited:.0f} s"
    worker.stop()
    assert worker.wait(timeout=30) == 0


def test_a_result_topic_deleted_once_the_worker_stopped_writing_to_it_stays_deleted(
    kafka_bootstrap, kafka_admin, new_topic, start_worker, tiny_bundle
):
    """Both clients' producers refreshed the metadata of every topic they ever wrote to for their whole life,
    and on a broker with auto.create.topics.enable those requests create a deleted topic again: seen from
    outside (bench/outsider/churn.sh), the result topic of every input deleted under a worker reading a
    pattern came back within seconds, for as long as the worker ran. A producer now forgets a topic it has
    not written to for TAGSTREAM_OUTPUT_TOPIC_IDLE_S (5 min; 2 s here), as Java's does: deleted after that, it stays
    deleted, and the worker goes on labelling its other input."""
    stem = new_topic(partitions=1, prefix="worker-result-forgotten")
    gone, kept = new_topic(partitions=1, name=f"{stem}.gone"), new_topic(partitions=1, name=f"{stem}.kept")
    first = produce_events(kafka_bootstrap, gone, fixture_texts(10, seed=44), prefix="gone")
    worker = start_worker(gone, tiny_bundle, input_topics=[], input_pattern=rf"{re.escape(stem)}\.(gone|kept)",
                          metadata_refresh_s=1.0, output_topic_idle_s=2.0)
    results = read_records(kafka_bootstrap, f"{gone}.labels", expected=10, quiet_s=0.2)
    assert sorted(json.loads(r.value)["id"] for r in results) == sorted(first)
    wait_until(lambda: worker.tracker.in_flight() == 0, timeout_s=15, what="every input acknowledged")
    time.sleep(2.0 + 0.5 + 1.0)  # idle, a check, a margin: the producer has let go of gone.labels

    kafka_admin.delete_topics([gone, f"{gone}.labels"], timeout_ms=10_000)
    later = produce_events(kafka_bootstrap, kept, fixture_texts(5, seed=45), prefix="kept")
    deadline = time.monotonic() + ABSENT_S + 2.0  # several metadata refreshes (1 s here)
    while time.monotonic() < deadline:
        assert f"{gone}.labels" not in kafka_admin.list_topics(), "the worker created the deleted result topic again"
        time.sleep(0.25)
    labeled = read_records(kafka_bootstrap, f"{kept}.labels", expected=5, quiet_s=0.2)
    assert sorted(json.loads(r.value)["id"] for r in labeled) == sorted(later)
    worker.stop()
    assert worker.wait(timeout=30) == 0


def test_log_offsets_asked_for_a_deleted_topic_still_answer_for_the_other_partitions(
    kafka_bootstrap, kafka_admin, new_topic, new_group, tiny_bundle, kafka_client
):
    """kafka-python 3.0.12's end_offsets raised KeyError for a partition whose topic was gone, and a worker whose
    lag refresh asked in the seconds between an input topic's deletion and the rebalance that revoked it
    crashed (exit 1, "the source stage crashed"; seen from outside, bench/outsider/churn.sh). confluent gave up
    the whole lookup at the first such partition. Both now answer for the partitions that still exist."""
    from worker.kafka import TopicPartition, open_clients
    from worker.settings import load_settings

    gone, kept = new_topic(partitions=2, prefix="offsets-gone"), new_topic(partitions=1, prefix="offsets-kept")
    produce_events(kafka_bootstrap, kept, fixture_texts(3, seed=46), prefix="kept")
    settings = load_settings(bootstrap_servers=kafka_bootstrap, input_topics=[kept], group_id=new_group(),
                             bundle_path=tiny_bundle, kafka_client=kafka_client, metadata_refresh_s=1.0)
    consumer, producer = open_clients(settings)
    try:
        asked = [TopicPartition(gone, 0), TopicPartition(gone, 1), TopicPartition(kept, 0)]
        assert consumer.end_offsets(asked) == {TopicPartition(gone, 0): 0, TopicPartition(gone, 1): 0,
                                               TopicPartition(kept, 0): 3}
        kafka_admin.delete_topics([gone], timeout_ms=10_000)
        time.sleep(3.0)  # past the clients' metadata refresh (1 s): the topic is known to be gone
        for _ in range(3):
            assert consumer.end_offsets(asked) == {TopicPartition(kept, 0): 3}
            assert consumer.start_offsets(asked) == {TopicPartition(kept, 0): 0}
            assert consumer.committed(asked).get(TopicPartition(kept, 0)) is None  # nothing committed, no error
    finally:
        consumer.close(5.0)
        producer.close(5.0)
