"""SendAgain: records whose topic librdkafka gave up on wait until librdkafka accepts the topic, the
broker asked about it once a second meanwhile; past the wait, or refused otherwise, they fail."""

from __future__ import annotations

import pytest

pytest.importorskip("confluent_kafka", reason="the confluent extra is not installed (make install has it)")

from confluent_kafka import KafkaError, KafkaException
from worker_fakes import Clock

from worker.errors import Failure
from worker.kafka.confluent.again import SendAgain

E = KafkaError


class Client:
    """produce() refuses topics held as missing (as librdkafka does) until ``exists`` has them."""

    def __init__(self) -> None:
        self.exists: set[str] = set()
        self.produced: list[tuple[str, bytes | None]] = []
        self.asked: list[str] = []
        self.failed: list[tuple[object, object]] = []
        self.refuse_with: int | None = None

    def produce(self, record) -> None:
        if self.refuse_with is not None:
            raise KafkaException(KafkaError(self.refuse_with))
        if record.topic not in self.exists:
            raise KafkaException(KafkaError(E._UNKNOWN_TOPIC))
        self.produced.append((record.topic, record.value))

    def ask(self, topic: str, timeout: float) -> None:
        self.asked.append(topic)

    def fail(self, token, error) -> None:
        self.failed.append((token, error))

    def serve(self, again: SendAgain) -> None:
        again.send_due(self.produce, self.ask, self.fail)


def test_records_wait_for_their_topic_and_go_in_the_order_they_failed():
    clock, client = Clock(), Client()
    again = SendAgain(15.0, clock=clock)
    for i in range(3):
        again.add(i, "t.dlq", f"v{i}".encode(), None, None)
    again.add(9, "other", b"o", None, None)
    client.exists.add("other")
    client.serve(again)
    assert client.produced == [("other", b"o")] and len(again) == 3
    assert client.asked == ["t.dlq"]  # once, not once per record
    clock.now += 0.5
    client.serve(again)
    assert client.asked == ["t.dlq"]  # at most once a second
    clock.now += 0.6
    client.exists.add("t.dlq")  # the broker created it meanwhile
    client.serve(again)
    assert client.produced[1:] == [("t.dlq", b"v0"), ("t.dlq", b"v1"), ("t.dlq", b"v2")]
    assert len(again) == 0 and client.failed == []


def test_a_topic_still_missing_after_the_wait_fails_its_records_as_topic_missing():
    clock, client = Clock(), Client()
    again = SendAgain(15.0, clock=clock)
    again.add("a", "gone", b"x", None, None)
    again.add("b", "gone", b"y", None, None)
    client.serve(again)
    clock.now += 15.0
    client.serve(again)
    assert [token for token, _ in client.failed] == ["a", "b"]
    assert all(error.failure is Failure.TOPIC_MISSING and "gone" in str(error) and "create it" in str(error)
               for _, error in client.failed)
    assert len(again) == 0


def test_any_other_refusal_fails_the_record_at_once():
    clock, client = Clock(), Client()
    again = SendAgain(15.0, clock=clock)
    again.add("a", "t", b"x", None, None)
    client.refuse_with = E.MSG_SIZE_TOO_LARGE
    client.serve(again)
    assert [token for token, _ in client.failed] == ["a"] and len(again) == 0
    assert client.failed[0][1].failure is Failure.RECORD_REJECTED
