"""What the confluent-kafka backend must bridge in librdkafka, against the real broker: refused records
never stop the (idempotent) producer, innocent records refused with their batch are delivered, a quiet
topic costs no batching delay, pattern subscriptions never include the worker's own topics, health
follows the broker through an outage, and a stuck transactional call neither hangs the worker nor leaks
its transaction."""


from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
from worker_support import fixture_texts, produce_events, read_records, wait_until

from worker.errors import BrokerError, Failure
from worker.kafka.base import TopicPartition
from worker.settings import load_settings

pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed (make install has it)")
from worker.kafka import confluent

pytestmark = pytest.mark.integration


class Handler:
    """A DeliveryHandler that collects delivery outcomes by token."""

    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.refused: dict[Any, BrokerError] = {}
        self._lock = threading.Lock()

    def delivered(self, token: Any) -> None:
        with self._lock:
            self.acked.append(token)

    def delivered_many(self, tokens: list[Any]) -> None:
        with self._lock:
            self.acked.extend(tokens)

    def failed(self, token: Any, error: BrokerError) -> None:
        with self._lock:
            self.refused[token] = error


def producer(bootstrap: str, **overrides: Any) -> tuple[confluent.ConfluentProducer, Handler]:
    s = load_settings(bootstrap_servers=bootstrap, input_topics=["x"], bundle_path="/dev/null",
                      kafka_client="confluent", **overrides)
    client = confluent.ConfluentProducer(s, None)
    handler = Handler()
    client.set_handler(handler)
    return client, handler


def test_a_refused_two_megabyte_dead_letter_does_not_stop_later_sends(kafka_bootstrap, new_topic):
    """The idempotent producer: one 2 MB record refused by a 1 MiB topic fails alone (RECORD_REJECTED); sends before and after it are delivered."""
    topic = new_topic(partitions=1, prefix="cfl-refused")  # the default max.message.bytes: 1 MiB
    client, handler = producer(kafka_bootstrap, max_payload_bytes=4 * 1024 * 1024)
    assert confluent.producer_config(client._settings, None)["enable.idempotence"] is True
    try:
        client.send(topic, b"before", None, [], "before")
        assert client.flush(30)
        client.send(topic, b"B" * 2_000_000, None, [], "big")
        for i in range(50):
            client.send(topic, f"after-{i}".encode(), None, [], f"after-{i}")
        assert client.flush(60)
        client.send(topic, b"last", None, [], "last")
        assert client.flush(30)
    finally:
        client.close(10)
    assert set(handler.refused) == {"big"} and handler.refused["big"].failure is Failure.RECORD_REJECTED
    assert set(handler.acked) == {"before", "last", *(f"after-{i}" for i in range(50))}
    values = [r.value for r in read_records(kafka_bootstrap, topic, expected=52, quiet_s=0.5)]
    assert values[0] == b"before" and values[-1] == b"last" and len(values) == 52


def test_records_refused_with_their_batch_are_delivered_alone(kafka_bootstrap, new_topic):
    """A topic limit below the batch size refuses whole batches; each small record in one is sent again alone
    and delivered, while the one too large by itself is refused (kafka-python splits batches the same way)."""
    topic = new_topic(partitions=1, prefix="cfl-split", configs={"max.message.bytes": "100000"})
    client, handler = producer(kafka_bootstrap)
    try:
        for i in range(300):
            client.send(topic, f"small-{i:03d}".encode() + b"x" * 200, None, [], i)
            if i == 150:
                client.send(topic, b"B" * 200_000, None, [], "big")
        assert client.flush(60)
    finally:
        client.close(10)
    assert set(handler.refused) == {"big"} and handler.refused["big"].failure is Failure.RECORD_REJECTED
    assert sorted(handler.acked) == list(range(300))
    assert len(read_records(kafka_bootstrap, topic, expected=300, quiet_s=0.5)) == 300


def test_a_stuck_transactional_call_is_given_up_and_a_replacement_producer_fences_the_stuck_one(
    kafka_bootstrap, new_topic, monkeypatch
):
    """A transactional call that does not return (librdkafka 2.16 after a broker restart) fails within its bound,
    the abort replaces the client, and a read_committed reader sees what the replacement committed, never the
    record of the stuck client's open transaction."""
    topic = new_topic(partitions=1, prefix="cfl-stuck")
    s = load_settings(bootstrap_servers=kafka_bootstrap, input_topics=["x"], bundle_path="/dev/null",
                      kafka_client="confluent", processing_guarantee="exactly_once")
    client = confluent.ConfluentProducer(s, f"cfl-stuck-{uuid.uuid4().hex[:8]}")
    handler = Handler()
    client.set_handler(handler)
    monkeypatch.setattr(confluent.producer, "TXN_STUCK_GRACE_S", 0.5)
    never = threading.Event()
    try:
        client.init_transactions()
        client.begin_transaction()
        client.send(topic, b"doomed", None, [], "doomed")
        assert client.flush(30)
        began = time.monotonic()
        with pytest.raises(BrokerError, match="did not return within"):
            client._txn(lambda _client, _timeout: never.wait(), "a call that never returns", timeout_s=1.0)
        assert time.monotonic() - began < 5  # its 1 s timeout and the 0.5 s grace, not forever
        with pytest.raises(BrokerError, match="stuck"):
            client.commit_transaction()  # the stuck client takes no further transactional call
        stuck = client.client
        client.abort_transaction()  # replaces it: the new client's init_transactions fences the stuck one
        assert client.client is not stuck
        client.begin_transaction()
        client.send(topic, b"kept", None, [], "kept")
        assert client.flush(30)
        client.commit_transaction()
    finally:
        never.set()
        client.close(10)
    committed = read_records(kafka_bootstrap, topic, expected=1, quiet_s=2.0, isolation_level="read_committed")
    assert [r.value for r in committed] == [b"kept"]
    assert "doomed" in handler.acked and "kept" in handler.acked and not handler.refused


def test_a_transactional_call_still_waited_for_gives_up_when_the_producer_closes(kafka_bootstrap):
    """Closing the producer ends the wait for a transactional call that has not returned at once, so a stuck call
    cannot hold up the worker's exit."""
    s = load_settings(bootstrap_servers=kafka_bootstrap, input_topics=["x"], bundle_path="/dev/null",
                      kafka_client="confluent", processing_guarantee="exactly_once")
    client = confluent.ConfluentProducer(s, f"cfl-closing-{uuid.uuid4().hex[:8]}")
    never = threading.Event()
    outcome: list[BaseException] = []

    def stuck_commit() -> None:
        try:
            client._txn(lambda _client, _timeout: never.wait(), "a call that never returns")
        except BrokerError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=stuck_commit)
    try:
        waiter.start()
        time.sleep(0.5)
        began = time.monotonic()
        client.close(2)
        waiter.join(5)
        assert not waiter.is_alive() and time.monotonic() - began < 5
        assert "closing" in str(outcome[0])
        with pytest.raises(BrokerError, match="closing"):
            client.abort_transaction()  # left to the broker's transaction timeout or the successor's fencing
    finally:
        never.set()


class Quiet:
    """A rebalance handler that does nothing."""

    async def on_revoked(self, partitions, sleep):
        pass

    def on_assigned(self, partitions):
        pass

    def on_lost(self, partitions):
        pass


def consumer_of(bootstrap: str, topic: str, group: str) -> confluent.ConfluentConsumer:
    s = load_settings(bootstrap_servers=bootstrap, input_topics=[topic], bundle_path="/dev/null",
                      kafka_client="confluent", group_id=group)
    consumer = confluent.ConfluentConsumer(s)
    consumer.subscribe(topics=[topic], pattern=None, handler=Quiet())
    return consumer


class NotUtf8(str):
    """A header key that encodes to bytes that are not UTF-8 (as a C or Java client may send it)."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"\xff\xfe-" + str.encode(self)


def test_an_undecodable_header_key_deep_in_a_hot_loop_marks_that_record_only(kafka_bootstrap, new_topic, new_group):
    """After 300 records with headers (the loop is hot, its calls specialised), one whose header key is not
    UTF-8 gets the invalid-header marker; the records around it keep their headers, and nothing raises."""
    from kafka import KafkaProducer

    from worker.events import INVALID_HEADERS_MARKER

    topic = new_topic(partitions=1, prefix="cfl-headers")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    for i in range(300):
        producer.send(topic, value=b"v%d" % i, headers=[("n", b"%d" % i)])
    producer.send(topic, value=b"bad", key=b"k", headers=[(NotUtf8("k"), b"v"), ("ok", b"1")])
    for _ in range(3):
        producer.send(topic, value=b"after", headers=[("bin", b"\xff\x00")])
    producer.flush(30)
    producer.close()
    consumer = consumer_of(kafka_bootstrap, topic, new_group())
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while len(records) < 304 and time.monotonic() < deadline:
            records += [r for rs in consumer.poll(100, 500).values() for r in rs]
    finally:
        consumer.close(5, leave_group=False)
    assert [r.offset for r in records] == list(range(304))
    assert all(r.headers == [("n", b"%d" % i)] for i, r in enumerate(records[:300]))
    assert records[300].headers[0][0] == INVALID_HEADERS_MARKER and records[300].value == b"bad"
    assert all(r.headers == [("bin", b"\xff\x00")] for r in records[301:])


def test_poll_hands_over_what_is_there_without_waiting_for_a_full_batch(kafka_bootstrap, new_topic, new_group):
    """With 3 records waiting and room for 500, poll returns them well before its timeout (no batching delay)."""
    topic = new_topic(partitions=1, prefix="cfl-quiet")
    produce_events(kafka_bootstrap, topic, fixture_texts(3, seed=1))
    consumer = consumer_of(kafka_bootstrap, topic, new_group())
    try:
        got: list[Any] = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            got = [r for rs in consumer.poll(100, 500).values() for r in rs]  # the first records: after the join
        produce_events(kafka_bootstrap, topic, fixture_texts(3, seed=2), prefix="late")
        wait_until(lambda: consumer.end_offsets([TopicPartition(topic, 0)]).get(TopicPartition(topic, 0)) == 6,
                   30, "the broker to have the late records")
        time.sleep(1.0)  # librdkafka has fetched them by now
        began = time.monotonic()
        late = [r for rs in consumer.poll(5_000, 500).values() for r in rs]
        took = time.monotonic() - began
    finally:
        consumer.close(5, leave_group=False)
    assert len(got) == 3 and [json.loads(r.value)["id"] for r in late] == ["late0", "late1", "late2"]
    assert took < 2.5, f"poll waited {took:.1f} s for a full batch"


def test_a_pattern_subscription_reads_matching_topics_but_never_the_workers_own(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """input_pattern matching two input topics and (by its shape) the worker's own output topics: both inputs
    are labeled, and no result is ever classified again."""
    stem = new_topic(partitions=1, prefix="pat")  # a unique stem; inputs are stem.a and stem.b
    a, b = new_topic(partitions=1, name=f"{stem}.a"), new_topic(partitions=2, name=f"{stem}.b")
    for topic in (f"{a}.labels", f"{b}.labels"):
        new_topic(partitions=1, name=topic)  # they exist and match the pattern before the worker starts
    ids_a = produce_events(kafka_bootstrap, a, fixture_texts(40, seed=3), prefix="a")
    ids_b = produce_events(kafka_bootstrap, b, fixture_texts(60, seed=4), prefix="b")
    worker = start_worker(a, tiny_bundle, input_topics=[], input_pattern=rf"{stem}\..*")
    results_a = read_records(kafka_bootstrap, f"{a}.labels", expected=40)
    results_b = read_records(kafka_bootstrap, f"{b}.labels", expected=60)
    assert sorted(json.loads(r.value)["id"] for r in results_a) == sorted(ids_a)
    assert sorted(json.loads(r.value)["id"] for r in results_b) == sorted(ids_b)
    own = read_records(kafka_bootstrap, f"{a}.labels.labels", expected=1, timeout_s=3, quiet_s=0)
    assert own == [] and {tp.topic for tp in worker.tracker.assigned()} == {a, b}



# -- the broker going away (a broker of the test's own) -------------------------------------------------------


def own_topic(kafka: Any, partitions: int = 2) -> str:
    from kafka import KafkaAdminClient

    topic = f"cfl-outage-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": -1}})
        admin.wait_for_topics([topic], timeout_ms=30_000)
    finally:
        admin.close()
    return topic


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", ["confluent"], indirect=True)
def test_readiness_follows_the_broker_through_a_restart_and_the_worker_carries_on(
    restartable_kafka, start_worker, tiny_bundle, kafka_client
):
    """Broker halted mid-stream: /readyz turns not ready (coordinator_known from librdkafka's statistics); after
    the broker's restart it is ready again and every input, before and after, gets its result."""
    kafka = restartable_kafka()
    topic = own_topic(kafka)
    before = produce_events(kafka.bootstrap_servers, topic, fixture_texts(200, seed=6), prefix="before")
    worker = start_worker(topic, tiny_bundle, bootstrap_servers=kafka.bootstrap_servers, broker_outage_s=300)
    read_records(kafka.bootstrap_servers, f"{topic}.labels", expected=200, quiet_s=0)
    wait_until(lambda: worker.health.readiness()[0], 30, "the worker to be ready")
    kafka.halt()
    wait_until(lambda: not worker.health.readiness()[0], 30, "readiness to drop with the broker gone")
    assert worker.health.liveness()[0], "alive while the outage is shorter than broker_outage_s"
    kafka.start()
    after = produce_events(kafka.bootstrap_servers, topic, fixture_texts(100, seed=7), prefix="after")
    results = read_records(kafka.bootstrap_servers, f"{topic}.labels", expected=300, timeout_s=120)
    assert {json.loads(r.value)["id"] for r in results} == set(before + after)
    wait_until(lambda: worker.health.readiness()[0], 60, "readiness to return")
    assert worker.fatal is None


@pytest.mark.slow
@pytest.mark.parametrize("kafka_client", ["confluent"], indirect=True)
def test_a_broker_gone_for_good_ends_in_a_clear_exit(restartable_kafka, start_worker, tiny_bundle, kafka_client):
    """Broker gone: not ready at once, not alive once TAGSTREAM_BROKER_OUTAGE_S has passed, then exit code 4
    (broker_outage)."""
    kafka = restartable_kafka()
    topic = own_topic(kafka)
    produce_events(kafka.bootstrap_servers, topic, fixture_texts(50, seed=8))
    worker = start_worker(topic, tiny_bundle, bootstrap_servers=kafka.bootstrap_servers, broker_outage_s=8,
                          drain_timeout_s=5)
    read_records(kafka.bootstrap_servers, f"{topic}.labels", expected=50, quiet_s=0)
    # Everything committed first: the exit is then the outage's (a final commit that fails would be reported instead).
    wait_until(lambda: worker.tracker.in_flight() == 0 and not worker.tracker.committable(), 30, "the last commit")
    kafka.halt()
    wait_until(lambda: not worker.health.readiness()[0], 30, "readiness to drop")
    assert worker.wait(timeout=90) == 4
    assert worker.fatal is not None and worker.fatal.failure is Failure.BROKER_OUTAGE
    assert not worker.health.liveness()[0]
