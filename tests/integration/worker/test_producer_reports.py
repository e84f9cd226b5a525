"""How a producer reports its records' outcomes to the sink (worker/kafka/base.py, DeliveryHandler), against a
real broker, with each client."""

from __future__ import annotations

import pytest
from worker_support import DeliveryRecorder

pytestmark = pytest.mark.integration

RECORDS = 3000


def test_at_least_once_acknowledgements_reach_the_sink_in_bulk_each_once_by_the_end_of_a_flush(
    kafka_bootstrap, new_topic, new_group, tiny_bundle, kafka_client
):
    """An at-least-once producer hands the sink its acknowledgements many at a time (one call per produce response
    with kafka-python, per poll with confluent), never one by one: the per-record hand-over (the tracker's lock, a
    counter and a histogram each) cost kafka-python's sender thread some 3 µs an event. Every record is reported
    exactly once, and all of them by the time flush() returns, since the sink commits what it has been told."""
    from worker.kafka import open_clients
    from worker.settings import load_settings

    topic = new_topic(partitions=3, prefix="reports")
    settings = load_settings(bootstrap_servers=kafka_bootstrap, input_topics=[topic], group_id=new_group(),
                             bundle_path=tiny_bundle, kafka_client=kafka_client)
    consumer, producer = open_clients(settings)
    recorder = DeliveryRecorder()
    producer.set_handler(recorder)
    try:
        for i in range(RECORDS):
            producer.send(topic, b'{"n": %d}' % i, str(i).encode(), [], i)
        assert producer.flush(30.0)
        with recorder.lock:
            in_bulk = [token for call in recorder.in_bulk for token in call]
            assert recorder.failures == []
            assert recorder.one_by_one == []
            assert sorted(in_bulk) == list(range(RECORDS))
            assert len(recorder.in_bulk) <= RECORDS // 10, f"{len(recorder.in_bulk)} hand-overs for {RECORDS} records"
    finally:
        producer.close(5.0)
        consumer.close(5.0)
