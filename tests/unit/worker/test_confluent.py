"""The confluent-kafka backend without a broker: its error table, its librdkafka settings, and how it
turns consume() results into records by partition (librdkafka's classes replaced by fakes)."""

# ruff: noqa: E402  (the imports after importorskip need confluent-kafka)
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

ck = pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed (make install has it)")
from confluent_kafka import KafkaError, KafkaException

from worker.errors import BrokerError, Failure, SettingsError
from worker.events import INVALID_HEADERS_MARKER, ParseConfig, parse_record
from worker.kafka import confluent
from worker.kafka.base import TopicPartition, UnreadableRecord, open_clients
from worker.kafka.confluent import ERROR_TABLE, failure_for_error
from worker.settings import load_settings

E = KafkaError


def settings(**overrides: Any) -> Any:
    return load_settings(**{"input_topics": ["events"], "bundle_path": "/bundles/x", "kafka_client": "confluent",
                            **overrides})


# -- the error table ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "failure"), sorted(ERROR_TABLE.items(), key=lambda kv: kv[0]),
                         ids=lambda v: KafkaError(v).name() if isinstance(v, int) else v.label)
def test_every_mapped_code_translates_to_its_failure(code, failure):
    """Each code in the table is a real librdkafka code, and an error with it (bare or raised) maps to its Failure."""
    error = KafkaError(code)
    assert not error.name().startswith("ERR_"), f"{code} is not a code librdkafka knows"
    assert failure_for_error(error) is failure
    assert failure_for_error(KafkaException(error)) is failure
    assert confluent.translate(KafkaException(error), "x").failure is failure


@pytest.mark.parametrize(
    ("code", "failure"),
    [
        (E.MSG_SIZE_TOO_LARGE, Failure.RECORD_REJECTED),  # over message.max.bytes, or the topic's limit
        (E.RECORD_LIST_TOO_LARGE, Failure.RECORD_REJECTED),
        (E.INVALID_RECORD, Failure.RECORD_REJECTED),
        (E._ALL_BROKERS_DOWN, Failure.BROKER_UNREACHABLE),
        (E._TRANSPORT, Failure.BROKER_UNREACHABLE),
        (E.SASL_AUTHENTICATION_FAILED, Failure.AUTHENTICATION_FAILED),
        (E._AUTHENTICATION, Failure.AUTHENTICATION_FAILED),
        (E.TOPIC_AUTHORIZATION_FAILED, Failure.AUTHORIZATION_FAILED),
        (E.GROUP_AUTHORIZATION_FAILED, Failure.AUTHORIZATION_FAILED),
        (E.FENCED_INSTANCE_ID, Failure.INSTANCE_FENCED),
        (E.PRODUCER_FENCED, Failure.PRODUCER_FENCED),
        (E._FENCED, Failure.PRODUCER_FENCED),
        (E._PURGE_QUEUE, Failure.TRANSACTION_ABORTED),
        (E.REBALANCE_IN_PROGRESS, Failure.COMMIT_FAILED),
        (E.UNKNOWN_TOPIC_OR_PART, Failure.TOPIC_MISSING),
        (E._MSG_TIMED_OUT, Failure.DELIVERY_FAILED),
    ],
    ids=lambda v: KafkaError(v).name() if isinstance(v, int) else v.label,
)
def test_the_kinds_the_pipeline_relies_on(code, failure):
    """Record-specific refusals are RECORD_REJECTED (the sink handles that record alone); brokers down,
    credentials, ACLs, zombies, aborted transactions and rebalances each get their own kind."""
    assert failure_for_error(KafkaError(code)) is failure


def test_unmapped_codes_go_by_the_errors_own_flags():
    """An error not in the table is TRANSACTION_ABORTED when the transaction must abort, else fatal or
    transient as librdkafka flags it, and fatal when it says nothing."""
    code = E.DUPLICATE_RESOURCE
    assert code not in ERROR_TABLE
    assert failure_for_error(KafkaError(code, txn_requires_abort=True)) is Failure.TRANSACTION_ABORTED
    assert failure_for_error(KafkaError(code, fatal=True)) is Failure.KAFKA_FATAL
    assert failure_for_error(KafkaError(code, retriable=True)) is Failure.KAFKA_TRANSIENT
    assert failure_for_error(KafkaError(code)) is Failure.KAFKA_FATAL


def test_other_exceptions():
    """A full producer queue (BufferError) is a delivery failure; anything else not from Kafka is a bug."""
    assert failure_for_error(BufferError("queue full")) is Failure.DELIVERY_FAILED
    assert failure_for_error(ValueError("no")) is Failure.INTERNAL


def test_every_kind_the_kafka_python_table_gives_is_reachable():
    """Each Failure kind the kafka-python backend can report, this backend can report too (same handling)."""
    kafka_python_kinds = {
        Failure.RECORD_REJECTED, Failure.TRANSACTION_ABORTED, Failure.AUTHENTICATION_FAILED,
        Failure.AUTHORIZATION_FAILED, Failure.TOPIC_MISSING, Failure.INSTANCE_FENCED, Failure.PRODUCER_FENCED,
        Failure.COMMIT_FAILED, Failure.BROKER_UNREACHABLE, Failure.KAFKA_TRANSIENT,
    }
    assert kafka_python_kinds <= set(ERROR_TABLE.values())
    assert failure_for_error(KafkaError(E.DUPLICATE_RESOURCE)) is Failure.KAFKA_FATAL


# -- settings and librdkafka configuration ---------------------------------------------------------------------


def test_missing_extra_is_a_settings_error_naming_it(monkeypatch):
    """TAGSTREAM_KAFKA_CLIENT=confluent without confluent-kafka installed fails at load, naming the extra."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "confluent_kafka" else real(name, *a))
    with pytest.raises(SettingsError, match=r"TAGSTREAM_KAFKA_CLIENT=confluent needs the confluent-kafka package.*tagstream\[confluent\]"):
        settings()


def test_security_settings_map_to_librdkafka(tmp_path):
    """SASL_SSL with SCRAM and a CA, client certificate and key become librdkafka's sasl.* and ssl.* settings."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    s = settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                 sasl_password="p4ss", ssl_cafile=tmp_path / "ca.pem", ssl_certfile=tmp_path / "cert.pem",
                 ssl_keyfile=tmp_path / "key.pem")
    config = confluent.common_config(s)
    assert config["security.protocol"] == "sasl_ssl" and config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("u", "p4ss")
    assert config["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert config["ssl.certificate.location"] == str(tmp_path / "cert.pem")
    assert config["ssl.key.location"] == str(tmp_path / "key.pem")
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    plain = confluent.common_config(settings())
    assert plain["security.protocol"] == "plaintext" and not any(k.startswith(("sasl.", "ssl.")) for k in plain)


def test_producer_and_consumer_settings_follow_the_workers():
    """Request size, delivery timeout, membership, poll interval and isolation come from the worker's settings."""
    s = settings(max_payload_bytes=3_000_000, broker_outage_s=60, group_instance_id="pod-1",
                 session_timeout_ms=10_000, heartbeat_interval_ms=700, max_poll_interval_ms=1_500)
    producer = confluent.producer_config(s, None)
    assert producer["message.max.bytes"] == s.producer_max_request_bytes()
    assert producer["message.timeout.ms"] == 90_000 and producer["acks"] == "all"
    assert producer["enable.idempotence"] is True and "transactional.id" not in producer
    consumer = confluent.consumer_config(s)
    assert consumer["group.instance.id"] == "pod-1" and consumer["session.timeout.ms"] == 10_000
    assert consumer["heartbeat.interval.ms"] == 700
    assert consumer["max.poll.interval.ms"] == 10_000  # librdkafka wants at least the session timeout
    assert consumer["enable.auto.commit"] is False and consumer["isolation.level"] == "read_committed"
    assert confluent.consumer_config(settings(isolation_level="read_uncommitted"))["isolation.level"] == "read_uncommitted"
    assert consumer["allow.auto.create.topics"] is False


def test_exactly_once_settings():
    """Exactly-once: a transactional id, records bounded by the transaction timeout, read_committed input."""
    s = settings(processing_guarantee="exactly_once", transaction_timeout_ms=20_000, broker_outage_s=180)
    producer = confluent.producer_config(s, "group.pod-1")
    assert producer["transactional.id"] == "group.pod-1" and producer["transaction.timeout.ms"] == 20_000
    assert producer["message.timeout.ms"] == 20_000
    assert confluent.consumer_config(s)["isolation.level"] == "read_committed"


def test_librdkafka_accepts_every_setting_given():
    """librdkafka builds both clients (and the exactly-once producer) from the settings without refusing one."""
    s = settings(bootstrap_servers="127.0.0.1:1", group_instance_id="pod-1")
    producers = [ck.Producer(confluent.producer_config(s, txn)) for txn in (None, "t.1")]
    consumer = ck.Consumer(confluent.consumer_config(s))
    assert all(isinstance(p, ck.Producer) for p in producers)
    consumer.close()


def test_open_clients_dispatches_on_the_setting(monkeypatch):
    """open_clients builds the client TAGSTREAM_KAFKA_CLIENT names."""
    called = {}
    monkeypatch.setattr(confluent, "open_clients", lambda s, transactional_id=None: called.setdefault("c", (s, transactional_id)))
    s = settings()
    open_clients(s, transactional_id="t")
    assert called["c"] == (s, "t")


# -- records from consume() -----------------------------------------------------------------------------------


class Message:
    """What confluent_kafka.Message offers the backend."""

    def __init__(self, topic, partition, offset, value=b'{"text": "hi"}', key=None, headers=None, error=None,
                 bad_headers=False):
        self._t, self._p, self._o, self._v, self._k, self._h, self._e = topic, partition, offset, value, key, headers, error
        self._bad = bad_headers

    def error(self):
        return self._e

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def timestamp(self):
        return (ck.TIMESTAMP_CREATE_TIME, 1_700_000_000_000 + self._o)

    def key(self):
        return self._k

    def value(self):
        return self._v

    def headers(self):
        if self._bad:
            raise SystemError("<method 'headers'> returned a result with an exception set")
        return self._h


class FakeConsumer:
    """Stands in for confluent_kafka.Consumer: consume() answers from a script and records its calls."""

    def __init__(self, config):
        self.config = config
        self.script: list[list[Message]] = []
        self.calls: list[tuple[int, float]] = []
        self.sought: list[tuple[str, int, int]] = []
        self.refuse_seek = False
        self.assigned = [ck.TopicPartition("t", 0), ck.TopicPartition("t", 1)]
        self.assignment_reads = 0
        self.during_consume: Callable[[], None] | None = None  # a rebalance callback, say

    def consume(self, num_messages, timeout):
        self.calls.append((num_messages, timeout))
        if self.during_consume is not None:
            during, self.during_consume = self.during_consume, None
            during()
        return list(self.script.pop(0)) if self.script else []

    def assign(self, tps):
        self.assigned = list(tps)

    def seek(self, tp):
        if self.refuse_seek:
            raise KafkaException(KafkaError(E._STATE))
        self.sought.append((tp.topic, tp.partition, tp.offset))

    def assignment(self):
        self.assignment_reads += 1
        return self.assigned

    def commit(self, offsets, asynchronous):
        self.calls.append(("commit", [(o.partition, o.offset) for o in offsets], asynchronous))

    def pause(self, tps):
        self.calls.append(("pause", sorted((tp.topic, tp.partition) for tp in tps)))

    def resume(self, tps):
        self.calls.append(("resume", sorted((tp.topic, tp.partition) for tp in tps)))


@pytest.fixture
def consumer(monkeypatch):
    monkeypatch.setattr(ck, "Consumer", FakeConsumer)
    return confluent.ConfluentConsumer(settings())


def test_records_are_grouped_by_partition_in_offset_order(consumer):
    """Interleaved messages come out as one list per partition, offsets in order, with what parse_record reads."""
    consumer.client.script = [[Message("t", 0, 5, key=b"k", headers=[("h", b"v")]), Message("t", 1, 9), Message("t", 0, 6),
                               Message("t", 1, 10)]]
    records = consumer.poll(100, 500)
    assert {tp: [r.offset for r in rs] for tp, rs in records.items()} == {
        TopicPartition("t", 0): [5, 6], TopicPartition("t", 1): [9, 10],
    }
    first = records[TopicPartition("t", 0)][0]
    assert (first.topic, first.partition, first.key, first.headers, first.timestamp) == ("t", 0, b"k", [("h", b"v")],
                                                                                         1_700_000_000_005)
    event = parse_record(first, ParseConfig(), received=0.0)
    assert event.text == "hi" and event.offset == 5  # type: ignore[union-attr]


def test_poll_takes_what_is_there_and_waits_only_when_nothing_is(consumer):
    """A non-blocking consume first; only when it is empty one that waits, for one record, then the rest at once."""
    consumer.client.script = [[Message("t", 0, 1)]]
    consumer.poll(100, 500)
    assert consumer.client.calls == [(500, 0)]
    consumer.client.calls.clear()
    consumer.client.script = [[], [Message("t", 0, 2)], [Message("t", 0, 3)]]
    records = consumer.poll(100, 500)
    assert consumer.client.calls == [(500, 0), (1, 0.1), (499, 0)]
    assert [r.offset for r in records[TopicPartition("t", 0)]] == [2, 3]


T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_the_assignment_is_read_from_librdkafka_once_between_rebalances(consumer):
    """assignment() asks librdkafka once and answers from memory until a rebalance callback runs
    inside consume(); then it reads the new assignment, and what the revocation left after it."""
    assert consumer.assignment() == consumer.assignment() == {T0, T1}
    assert consumer.client.assignment_reads == 1

    def revoke_then_unassign():
        consumer._on_revoke(consumer.client, [ck.TopicPartition("t", 1)])
        assert consumer.assignment() == {T0, T1}  # inside the callback: still the old one, not kept
        consumer.client.assigned = [ck.TopicPartition("t", 0)]  # confluent-kafka unassigns after it

    consumer.client.during_consume = revoke_then_unassign
    consumer.poll(5, 500)
    assert consumer.assignment() == {T0}
    consumer.client.during_consume = lambda: consumer._on_assign(consumer.client, [ck.TopicPartition("t", 2)])
    consumer.poll(5, 500)
    assert consumer.assignment() == consumer.assignment() == {TopicPartition("t", 2)}
    assert consumer.client.assignment_reads == 4


def test_a_short_pause_of_the_whole_assignment_stops_consuming_without_librdkafkas_pause(consumer):
    """Backpressure on every assigned partition only stops consume() calls (librdkafka's pause would
    discard its prefetched records); a resume within SOFT_PAUSE_S consumes again with no pause made."""
    consumer.pause({T0, T1})
    consumer.client.script = [[Message("t", 0, 1)]]
    assert consumer.poll(5, 500) == {}
    assert consumer.client.calls == []
    consumer.resume({T0, T1})
    assert [r.offset for r in consumer.poll(5, 500)[T0]] == [1]
    assert consumer.client.calls == [(500, 0)]


def test_a_pause_past_soft_pause_s_becomes_librdkafkas_and_polls_serve_callbacks_again(consumer, monkeypatch):
    """Held longer than SOFT_PAUSE_S, the partitions are paused in librdkafka and polls call consume()
    again (rebalance callbacks, statistics, max.poll.interval.ms); the resume undoes that pause."""
    monkeypatch.setattr(confluent.consumer, "SOFT_PAUSE_S", 0.0)
    consumer.pause({T0, T1})
    consumer.poll(5, 500)
    assert consumer.client.calls[0] == ("pause", [("t", 0), ("t", 1)])
    assert (500, 0) in consumer.client.calls
    consumer.pause({T0, T1})  # the source repeats its pause while paused: nothing more to do
    consumer.client.calls.clear()
    consumer.resume({T0, T1})
    assert consumer.client.calls == [("resume", [("t", 0), ("t", 1)])]


def test_a_pause_of_part_of_the_assignment_is_librdkafkas_at_once(consumer):
    """With other partitions still flowing, consume() must not return the paused one's records: the pause
    is made in librdkafka at the next poll."""
    consumer.pause({T0})
    consumer.poll(5, 500)
    assert consumer.client.calls[0] == ("pause", [("t", 0)])


def test_a_partition_paused_when_revoked_comes_back_unpaused(consumer):
    """librdkafka keeps a pause through unassign and assign, so a partition paused in librdkafka when it
    was revoked is resumed when it is assigned again (an assignment starts unpaused, as with
    kafka-python); a partition only held is not touched."""
    consumer.pause({T0})  # part of the assignment: made in librdkafka at the next poll
    consumer.poll(5, 500)
    assert consumer.client.calls[0] == ("pause", [("t", 0)])
    consumer._run_revoke({T0, T1}, lost=False)
    consumer.client.calls.clear()
    consumer.client.assign = lambda partitions: consumer.client.calls.append(("assign", len(partitions)))
    consumer._on_assign(consumer.client, [ck.TopicPartition("t", 0), ck.TopicPartition("t", 1)])
    assert consumer.client.calls == [("assign", 2), ("resume", [("t", 0)])]


def test_the_commit_inside_a_revocation_is_asynchronous_and_its_failure_is_only_logged(consumer):
    """librdkafka serves no synchronous commit made inside the revoke callback until it returns (the
    group's rebalance waited 30 s for it): the commit is asynchronous and the callback goes on; a
    failure reported later is logged, not raised (the partition is re-read by its next owner)."""
    import asyncio

    asyncio.run(consumer.commit_in_rebalance({T0: 5, T1: 7}))
    assert consumer.client.calls == [("commit", [(0, 5), (1, 7)], True)]
    failed = [ck.TopicPartition("t", 0, 5), ck.TopicPartition("t", 1, 7)]
    consumer._on_commit(KafkaError(E.ILLEGAL_GENERATION), failed)  # served at a later poll: no exception
    assert not consumer._commits


def test_a_record_whose_headers_cannot_be_decoded_is_dead_lettered_as_invalid_header(consumer):
    """confluent-kafka raising on headers() gives a record that parse_record dead-letters (invalid_header), key and value kept."""
    consumer.client.script = [[Message("t", 0, 1, key=b"k", bad_headers=True), Message("t", 0, 2)]]
    records = consumer.poll(100, 500)[TopicPartition("t", 0)]
    assert records[0].headers[0][0] == INVALID_HEADERS_MARKER
    letter = parse_record(records[0], ParseConfig(), received=0.0)
    assert letter.reason is Failure.INVALID_HEADER and letter.key == b"k" and letter.value == b'{"text": "hi"}'  # type: ignore[union-attr]
    assert records[1].offset == 2


def test_an_undecodable_message_is_handed_over_by_location_and_read_past(consumer):
    """A _BAD_MSG error at an offset becomes an UnreadableRecord there; later records of that partition wait for the seek past it."""
    bad = KafkaError(E._BAD_MSG, "corrupt")
    consumer.client.script = [[Message("t", 0, 4), Message("t", 0, 5, error=bad), Message("t", 0, 6), Message("t", 1, 3)]]
    records = consumer.poll(100, 500)
    unreadable = records[TopicPartition("t", 0)][-1]
    assert isinstance(unreadable, UnreadableRecord) and unreadable.offset == 5
    assert [r.offset for r in records[TopicPartition("t", 0)]] == [4, 5]  # 6 is read again after the seek
    assert [r.offset for r in records[TopicPartition("t", 1)]] == [3]
    consumer.poll(100, 500)
    assert consumer.client.sought == [("t", 0, 6)]


def test_consumer_errors_come_after_the_records_of_their_poll(consumer):
    """A client error among records hands the records over first and raises at the next poll, before reading more."""
    consumer.client.script = [[Message("t", 0, 1), Message(None, -1, -1, error=KafkaError(E.TOPIC_AUTHORIZATION_FAILED))]]
    assert [r.offset for r in consumer.poll(100, 500)[TopicPartition("t", 0)]] == [1]
    with pytest.raises(BrokerError) as raised:
        consumer.poll(100, 500)
    assert raised.value.failure is Failure.AUTHORIZATION_FAILED
    assert len(consumer.client.calls) == 1  # the raising poll read nothing


def test_a_fenced_static_member_is_reported_as_instance_fenced(consumer):
    """librdkafka's generic fatal error for a static member fenced by another with its group.instance.id is INSTANCE_FENCED."""
    text = "Fatal error: Broker: Static consumer fenced by other consumer with same group.instance.id"
    consumer.client.script = [[Message(None, -1, -1, error=KafkaError(E._FATAL, text))]]
    consumer.poll(100, 500)
    with pytest.raises(BrokerError) as raised:
        consumer.poll(100, 500)
    assert raised.value.failure is Failure.INSTANCE_FENCED


def test_a_fenced_static_member_right_after_its_session_expired_is_told_apart(consumer):
    """After this worker's own session expired (partitions lost), librdkafka sends the expired session's
    offset commit and the broker fences it: still INSTANCE_FENCED (the client is unusable), but the
    message says no other worker has the id. Without a recent loss the message is librdkafka's alone."""
    text = "Fatal error: Broker: Static consumer fenced by other consumer with same group.instance.id"
    fatal = [Message(None, -1, -1, error=KafkaError(E._FATAL, text))]
    consumer.client.script = [list(fatal)]
    consumer.poll(100, 500)
    with pytest.raises(BrokerError) as other:
        consumer.poll(100, 500)
    assert "no other worker" not in str(other.value)

    consumer._deferred = None
    consumer._on_lost(None, [])  # the session expired (librdkafka's lost-partitions callback)
    consumer.client.script = [list(fatal)]
    consumer.poll(100, 500)
    with pytest.raises(BrokerError) as own:
        consumer.poll(100, 500)
    assert own.value.failure is Failure.INSTANCE_FENCED
    assert "own group session expired" in str(own.value) and "no other worker" in str(own.value)


def test_a_seek_librdkafka_refuses_for_now_holds_that_partitions_records_back(consumer):
    """A seek refused while the fetcher starts is retried before each poll; records of that partition from before it are not handed over."""
    consumer.client.refuse_seek = True
    consumer.seek(TopicPartition("t", 0), 42)
    consumer.client.script = [[Message("t", 0, 50), Message("t", 1, 7)]]
    records = consumer.poll(100, 500)
    assert TopicPartition("t", 0) not in records and [r.offset for r in records[TopicPartition("t", 1)]] == [7]
    consumer.client.refuse_seek = False
    consumer.poll(100, 500)
    assert consumer.client.sought == [("t", 0, 42)]


def test_seeks_inside_on_assigned_become_the_assignments_offsets(consumer):
    """What the handler seeks while being told of an assignment is where assign() starts those partitions."""

    class Handler:
        def on_assigned(self, partitions):
            consumer.seek(TopicPartition("t", 1), 17)

    assigned: list[Any] = []

    class Client:
        def assign(self, partitions):
            assigned.extend((p.topic, p.partition, p.offset) for p in partitions)

    consumer._handler = Handler()
    consumer._on_assign(Client(), [ck.TopicPartition("t", 0), ck.TopicPartition("t", 1)])
    assert assigned == [("t", 0, ck.OFFSET_INVALID), ("t", 1, 17)]


def test_revocation_runs_the_handlers_coroutine_to_completion(consumer):
    """on_revoked (a coroutine that sleeps) finishes inside the callback; errors from it surface at the next poll."""
    seen = []

    class Handler:
        async def on_revoked(self, partitions, sleep):
            await sleep(0.01)
            seen.append(partitions)
            raise BrokerError("fenced", Failure.PRODUCER_FENCED)

    consumer._handler = Handler()
    consumer._on_revoke(None, [ck.TopicPartition("t", 0)])
    assert seen == [{TopicPartition("t", 0)}]
    consumer.client.script = [[Message("t", 0, 1)]]
    assert consumer.poll(100, 500)  # the records of the poll during which it happened
    with pytest.raises(BrokerError, match="fenced"):
        consumer.poll(100, 500)


# -- the producer ---------------------------------------------------------------------------------------------


class FakeProducer:
    """Acknowledges every record at the next poll or flush, as librdkafka serves delivery reports;
    records to a topic in ``unknown`` fail instead (UNKNOWN_TOPIC_OR_PART), and while a topic is in
    ``missing`` produce() refuses it (librdkafka's local unknown-topic error)."""

    def __init__(self, config):
        self.config = config
        self.raises: BaseException | None = None
        self.reports: list[Any] = []
        self.unknown: set[str] = set()
        self.missing: set[str] = set()
        self.produced: list[tuple[str, bytes | None]] = []
        self.asked: list[str] = []

    def produce(self, topic, value, key, headers=None, on_delivery=None):
        if self.raises is not None:
            raise self.raises
        if topic in self.missing:
            raise KafkaException(KafkaError(E._UNKNOWN_TOPIC))
        self.produced.append((topic, value))
        self.reports.append((on_delivery, Message(topic, None, None, value, key, headers)))

    def list_topics(self, topic=None, timeout=-1):
        self.asked.append(topic)

    def _serve(self):
        reports, self.reports = self.reports, []
        for report, msg in reports:
            report(KafkaError(E.UNKNOWN_TOPIC_OR_PART) if msg.topic() in self.unknown else None, msg)
        return len(reports)

    def poll(self, timeout):
        time.sleep(min(timeout, 0.01))
        return self._serve()

    def flush(self, timeout):
        self._serve()
        return 0

    def __len__(self):
        return 0


class Outcomes:
    def __init__(self):
        self.failed: list[tuple[Any, BrokerError]] = []
        self.one_by_one: list[Any] = []
        self.together: list[list[Any]] = []

    def delivered(self, token):
        self.one_by_one.append(token)

    def delivered_many(self, tokens):
        self.together.append(tokens)

    def failed_(self, token, error):
        self.failed.append((token, error))


@pytest.fixture
def producer_for(monkeypatch):
    monkeypatch.setattr(ck, "Producer", FakeProducer)
    made = []

    def make(transactional_id=None):
        producer = confluent.ConfluentProducer(settings(), transactional_id)
        outcomes = Outcomes()
        producer._delivered, producer._failed = outcomes.delivered, outcomes.failed_
        producer._delivered_many = outcomes.delivered_many
        made.append(producer)
        return producer, outcomes

    yield make
    for producer in made:
        producer.close(1)


def wait_for(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_record_whose_topic_librdkafka_gave_up_on_is_sent_again_once_the_topic_is_there(producer_for):
    """A delivery report saying the topic is unknown (a broker freeze through librdkafka's 15 s wait,
    then a topic the broker is still creating) sends the record again, with its bytes, once librdkafka
    accepts the topic: its acknowledgement reaches the sink; nothing fails."""
    producer, outcomes = producer_for()
    client = producer.client
    with producer._serving:
        client.unknown.add("t.dlq")
        producer.send("t.dlq", b"letter", b"k", [("h", b"v")], token="a")
        client._serve()  # the report: unknown topic
        client.unknown.discard("t.dlq")
        client.missing.add("t.dlq")  # librdkafka holds it as missing: produce() refuses it for now
    assert wait_for(lambda: client.asked)  # the broker is asked about the topic meanwhile
    assert client.asked[0] == "t.dlq" and outcomes.together == [] and outcomes.failed == []
    client.missing.discard("t.dlq")  # its metadata arrived
    assert wait_for(lambda: outcomes.together)
    assert outcomes.together == [["a"]] and outcomes.failed == []
    assert client.produced == [("t.dlq", b"letter"), ("t.dlq", b"letter")]


def test_a_record_refused_as_unknown_topic_a_second_time_fails_as_topic_missing(producer_for):
    producer, outcomes = producer_for()
    client = producer.client
    client.unknown.add("gone")
    producer.send("gone", b"x", None, [], token="a")
    assert wait_for(lambda: outcomes.failed)
    assert [token for token, _ in outcomes.failed] == ["a"] and outcomes.failed[0][1].failure is Failure.TOPIC_MISSING
    assert len(client.produced) == 2  # sent once more, refused again: final


def test_a_record_over_the_producers_limit_is_rejected_alone(producer_for):
    """produce() refusing a record as too large is RECORD_REJECTED: that record's problem only."""
    producer, _ = producer_for()
    producer.client.raises = KafkaException(KafkaError(E.MSG_SIZE_TOO_LARGE))
    with pytest.raises(BrokerError) as raised:
        producer.send("t.dlq", b"x", None, [], token=1)
    assert raised.value.failure is Failure.RECORD_REJECTED


def test_the_acknowledgements_one_poll_serves_reach_the_sink_together(producer_for):
    """Outside transactions, the delivery reports one poll of the reporting thread serves reach the
    handler in one delivered_many call, in the order they were served."""
    producer, outcomes = producer_for()
    with producer._serving:  # the reporting thread waits: its next poll serves all three
        for token in ("a", "b", "c"):
            producer.send("t.labels", b"x", None, [], token=token)
    deadline = time.monotonic() + 5
    while not outcomes.together and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes.together == [["a", "b", "c"]] and outcomes.one_by_one == []


def test_flush_takes_over_from_the_reporting_thread_at_once_when_nothing_else_runs(producer_for):
    """The reporting thread waits in poll() holding the serving lock, then takes it again: flush (a
    transaction's commit) must still get it within a poll or so. A plain lock went back to the
    reporting thread every time, and a commit after a producer replacement waited for ever."""
    producer, _ = producer_for()

    def poll_the_whole_wait(timeout):
        time.sleep(timeout)
        return producer.client._serve()

    producer.client.poll = poll_the_whole_wait
    time.sleep(0.1)  # the reporting thread is in its loop
    started = time.monotonic()
    for _ in range(20):
        assert producer.flush(5.0)
    assert time.monotonic() - started < 2.0


def test_flush_returns_only_once_the_acknowledgements_reached_the_sink(producer_for):
    """flush() hands over what the flush served before returning True: the final commit reads the tracker next."""
    producer, outcomes = producer_for()
    with producer._serving:
        for token in (1, 2):
            producer.send("t.labels", b"x", None, [], token=token)
    assert producer.flush(1.0)
    assert [t for tokens in outcomes.together for t in tokens] == [1, 2]


def test_a_transactional_producer_reports_each_acknowledgement_at_once(producer_for):
    """Exactly-once: each acknowledgement reaches the handler in its own call (the transaction's commit counts them next)."""
    producer, outcomes = producer_for("g.pod-1")
    producer.send("t.labels", b"x", None, [], token="tok")
    assert producer.flush(1.0)
    assert outcomes.one_by_one == ["tok"] and outcomes.together == []


def test_a_full_buffer_blocks_then_fails_the_delivery(producer_for, monkeypatch):
    """A full buffer (BufferError) is waited out up to SEND_MAX_BLOCK_S, then DELIVERY_FAILED (as kafka-python's max_block_ms)."""
    monkeypatch.setattr(confluent.producer, "SEND_MAX_BLOCK_S", 0.05)
    producer, _ = producer_for()
    producer.client.raises = BufferError("Local: Queue full")
    with pytest.raises(BrokerError) as raised:
        producer.send("t.labels", b"x", None, [], token=1)
    assert raised.value.failure is Failure.DELIVERY_FAILED and "buffer stayed full" in str(raised.value)


def test_a_send_into_a_failed_transaction_is_reported_as_aborted(producer_for):
    """Exactly-once: produce() refused because the transaction already failed reports that record as aborted (it is re-read)."""
    producer, outcomes = producer_for("g.pod-1")
    producer.client.raises = KafkaException(KafkaError(E._STATE, "Erroneous state"))
    producer.send("t.labels", b"x", None, [], token="tok")
    [(token, error)] = outcomes.failed
    assert token == "tok" and error.failure is Failure.TRANSACTION_ABORTED


def test_nothing_listening_fails_at_start_naming_the_bootstrap_setting(monkeypatch):
    """open_clients against an address where nothing listens gives up after the bootstrap wait with
    BROKER_UNREACHABLE naming TAGSTREAM_BOOTSTRAP_SERVERS (the other backend's diagnosis)."""
    import socket

    from worker.kafka import diagnose

    monkeypatch.setattr(diagnose, "BOOTSTRAP_TIMEOUT_MS", 1_500)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    with pytest.raises(BrokerError) as raised:
        confluent.open_clients(settings(bootstrap_servers=f"127.0.0.1:{port}"))
    assert raised.value.failure is Failure.BROKER_UNREACHABLE and "TAGSTREAM_BOOTSTRAP_SERVERS" in str(raised.value)
    assert time.monotonic() - began < 15


def _stats(cgrp_state="up", join_state="steady", **brokers):
    return json.dumps({"cgrp": {"state": cgrp_state, "join_state": join_state}, "brokers": {
        name: {"state": state, "waitresp_cnt": waiting, "rxidle": idle_s * 1_000_000 if idle_s >= 0 else -1}
        for name, (state, waiting, idle_s) in brokers.items()
    }})


def test_a_broker_that_keeps_its_connections_but_answers_nothing_counts_as_unreachable(consumer):
    """A frozen broker: librdkafka keeps its connections up (until each request's own 60 s timeout)
    while nothing comes back; once every connection waiting on it has heard nothing for
    SILENT_BROKER_S, the coordinator counts as unknown (health: broker unreachable)."""
    silent = confluent.consumer.SILENT_BROKER_S + 1
    consumer._on_stats(_stats(**{"b:9092/1": ("UP", 2, 0.2), "b:9092/bootstrap": ("UP", 0, 300)}))
    assert consumer.coordinator_known()  # answering; an idle bootstrap connection says nothing
    consumer._on_stats(_stats(**{"b:9092/1": ("UP", 2, silent), "GroupCoordinator": ("UP", 1, silent),
                                 "b:9092/bootstrap": ("UP", 0, 300)}))
    assert not consumer.coordinator_known()
    consumer._on_stats(_stats(**{"b:9092/1": ("UP", 2, silent), "b:9092/2": ("UP", 1, 0.1)}))
    assert consumer.coordinator_known()  # another broker answers
    consumer._on_stats(_stats(**{"b:9092/1": ("UP", 0, silent)}))
    assert consumer.coordinator_known()  # quiet because nothing was asked
    consumer._on_stats(_stats(cgrp_state="wait-coord", **{"b:9092/1": ("UP", 1, 0.1)}))
    assert not consumer.coordinator_known()


def test_a_silent_broker_tells_how_long_it_has_answered_nothing_and_a_connection_heard_lately_clears_it(consumer):
    """silent_for: the seconds since any connection last received (librdkafka's rxidle), so the outage is dated
    from the broker's last answer; 0 while answering. A request just sent on a connection idle for
    minutes is not silence when another connection has just heard from a broker."""
    silent = confluent.consumer.SILENT_BROKER_S + 1
    assert consumer.silent_for() == 0.0
    consumer._on_stats(_stats(**{"b:9092/1": ("UP", 2, silent), "GroupCoordinator": ("UP", 1, silent + 2)}))
    assert not consumer.coordinator_known()
    assert silent <= consumer.silent_for() < silent + 1  # the most recent receive, plus the time since the statistics
    consumer._on_stats(_stats(**{"b:9092/bootstrap": ("UP", 1, 300), "b:9092/1": ("UP", 0, 0.3)}))
    assert consumer.coordinator_known() and consumer.silent_for() == 0.0


def test_a_close_no_broker_answers_is_logged_as_expected_and_one_that_should_have_been_answered_warns(consumer):
    """librdkafka's close has no timeout of its own, so the worker bounds it. Bounded because the broker is
    unreachable (a frozen broker, the outage exit), running out is what was expected: an info line, not
    a warning after the outage's own. With the broker answering, running out is worth a warning."""
    import threading

    from structlog.testing import capture_logs

    release = threading.Event()
    consumer.client.close = lambda: release.wait(5)  # no answer: librdkafka waits on the broker
    consumer._on_stats(_stats(**{"b:9092/1": ("UP", 2, confluent.consumer.SILENT_BROKER_S + 1)}))
    with capture_logs() as logs:
        consumer.close(0.5, leave_group=False)
    consumer._on_stats(_stats(**{"b:9092/1": ("UP", 2, 0.1)}))
    with capture_logs() as answered:
        consumer.close(0.5, leave_group=False)
    release.set()
    assert [(e["event"], e["log_level"]) for e in logs] == [("consumer_close_unanswered", "info")]
    assert [(e["event"], e["log_level"]) for e in answered] == [("consumer_close_failed", "warning")]


def test_a_join_the_coordinator_holds_for_members_yet_to_rejoin_is_not_a_silent_broker(consumer):
    """The broker holds a JoinGroup until every member has rejoined (a SIGKILLed one: until its session
    expires), with nothing else asked meanwhile: the coordinator's silence then says nothing about the
    broker. In a steady group the same silence counts."""
    silent = confluent.consumer.SILENT_BROKER_S + 1
    held = {"GroupCoordinator": ("UP", 1, silent), "b:9092/1": ("UP", 0, silent)}
    for join_state in ("wait-join", "wait-sync"):
        consumer._on_stats(_stats(join_state=join_state, **held))
        assert consumer.coordinator_known(), join_state
    consumer._on_stats(_stats(join_state="wait-join", **{**held, "b:9092/1": ("UP", 1, silent)}))
    assert not consumer.coordinator_known()  # a fetch or commit unanswered too: the broker is silent
    consumer._on_stats(_stats(join_state="steady", **held))
    assert not consumer.coordinator_known()


def test_offsets_to_commit_carry_the_metadata_of_the_partitions_that_have_one():
    """A commit's hint (worker/delivered_hints.py) rides in librdkafka's TopicPartition; a partition
    without one gets none (librdkafka refuses metadata=None: a worker crashed on it in a test)."""
    from worker.kafka.confluent.records import their_offsets

    a, b = TopicPartition("in", 0), TopicPartition("in", 1)
    offsets = their_offsets({a: 5, b: 9}, {a: "tagstream.delivered.v1 5 2-3"})
    assert [(p.partition, p.offset, p.metadata) for p in offsets] == [(0, 5, "tagstream.delivered.v1 5 2-3"), (1, 9, None)]
    assert [p.offset for p in their_offsets({a: 5})] == [5]
