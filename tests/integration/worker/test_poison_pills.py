"""No record can stop the worker: inputs too large to publish whole are dead-lettered as bounded
copies, and the partition moves on (issue 10, finding 1)."""

from __future__ import annotations

import hashlib
import json

import pytest
from kafka import KafkaProducer
from worker_support import fixture_texts, produce_events, read_records

pytestmark = pytest.mark.integration

BIG_TOPIC = {"max.message.bytes": "4194304"}  # the input topic takes records up to 4 MiB
DEAD_LETTER_MAX = 65_536


def produce_big(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=5 * 1024 * 1024)
    producer.send(topic, value=value, key=b"big")
    producer.flush(30)
    producer.close()


@pytest.mark.parametrize(
    ("max_payload_bytes", "value", "reason"),
    [
        # over the payload limit: dead-lettered unread, as a bounded copy from the start
        (1_048_576, json.dumps({"id": "x", "text": "spam " * 230_000}).encode(), "payload_too_large"),
        # under a raised payload limit but not JSON: the whole dead letter is refused by the DLQ
        # topic (1 MiB), so it is resent alone, then bounded
        (4 * 1_048_576, b"{not json " + b"spam " * 230_000, "invalid_json"),
    ],
    ids=["over-payload-limit", "dlq-topic-refuses-the-whole-copy"],
)
def test_a_record_over_a_mebibyte_is_dead_lettered_bounded_and_the_partition_moves_on(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, max_payload_bytes, value, reason
):
    """A 1.15 MB input is dead-lettered as its first 64 KiB with its size and sha256; later inputs are labeled."""
    topic = new_topic(partitions=1, prefix="poison", configs=BIG_TOPIC)
    new_topic(name=f"{topic}.dlq")  # default max.message.bytes (1 MiB)
    produce_big(kafka_bootstrap, topic, value)
    ids = produce_events(kafka_bootstrap, topic, fixture_texts(20, seed=3))
    worker = start_worker(topic, tiny_bundle, max_payload_bytes=max_payload_bytes)

    results = read_records(kafka_bootstrap, f"{topic}.labels", expected=20)
    assert sorted(json.loads(r.value)["id"] for r in results) == sorted(ids)
    [letter] = read_records(kafka_bootstrap, f"{topic}.dlq", expected=1)
    headers = dict(letter.headers)
    assert headers["tagstream.reason"] == reason.encode()
    assert letter.value == value[:DEAD_LETTER_MAX]
    assert headers["tagstream.truncated"] == b"true"
    assert int(headers["tagstream.original.size"]) == len(value)
    assert headers["tagstream.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["tagstream.source.offset"] == b"0" and letter.key == b"big"
    assert worker.fatal is None

    worker.stop()
    assert worker.wait(timeout=30) == 0  # and everything, the big record included, was committed
    assert worker.metrics.value("tagstream_dead_letters_total", {"reason": reason}) == 1


class NotUtf8(str):
    """A header key that encodes to bytes that are not UTF-8 (what a C or Java client may send)."""

    def encode(self, *args, **kwargs):  # type: ignore[override]
        return b"\xff\xfe-key"


def test_a_record_the_client_cannot_decode_is_dead_lettered_and_read_past(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle, kafka_client
):
    """A header key that is not UTF-8 (which neither client can decode) dead-letters that record with its
    key and value (kafka-python keeps its decodable headers, confluent-kafka none); the records after it,
    in the same batch too, are labeled."""
    topic = new_topic(partitions=1, prefix="unreadable")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50)  # one batch with the rest
    value = b'{"id": "u", "text": "hostile headers"}'
    producer.send(topic, value=value, key=b"u", headers=[(NotUtf8("k"), b"v"), ("fine", b"1")])
    ids = []
    for i, text in enumerate(fixture_texts(10, seed=4)):
        ids.append(f"e{i}")
        producer.send(topic, value=json.dumps({"id": f"e{i}", "text": text}).encode(), key=f"e{i}".encode())
    producer.flush(30)
    producer.close()
    worker = start_worker(topic, tiny_bundle)

    results = read_records(kafka_bootstrap, f"{topic}.labels", expected=10)
    assert sorted(json.loads(r.value)["id"] for r in results) == sorted(ids)
    [letter] = read_records(kafka_bootstrap, f"{topic}.dlq", expected=1)
    headers = dict(letter.headers)
    assert headers["tagstream.reason"] == b"invalid_header" and headers["tagstream.source.offset"] == b"0"
    assert letter.value == value and letter.key == b"u"
    assert headers["tagstream.dropped"] == b"headers"
    if kafka_client == "kafka-python":
        assert headers["fine"] == b"1"
    else:  # confluent-kafka's headers() fails for the whole record (worker/kafka/confluent/records.py)
        assert "fine" not in headers
    assert "tagstream.invalid_header_keys" not in headers
    assert worker.fatal is None


def test_json_whose_text_or_id_escapes_half_a_surrogate_pair_is_dead_lettered_and_the_worker_goes_on(
    kafka_bootstrap, new_topic, start_worker, tiny_bundle
):
    """A \\ud800 escape (valid JSON syntax, not a character) in the text or the id: dead-lettered as
    invalid_json with the bytes as sent; the inputs around it are labeled and the worker keeps running (the
    tokenizer's TypeError on such a text stopped it at that record after every restart, found with kcat)."""
    topic = new_topic(partitions=1, prefix="surrogate")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    bad = [b'{"id": "s1", "text": "lone \\ud800 surrogate"}', b'{"id": "\\udc00", "text": "fine text"}']
    before = produce_events(kafka_bootstrap, topic, fixture_texts(10, seed=5), prefix="b")
    for value in bad:
        producer.send(topic, value=value, key=b"bad")
    producer.flush(30)
    producer.close()
    after = produce_events(kafka_bootstrap, topic, fixture_texts(10, seed=6), prefix="a")
    worker = start_worker(topic, tiny_bundle)

    results = read_records(kafka_bootstrap, f"{topic}.labels", expected=20)
    assert sorted(json.loads(r.value)["id"] for r in results) == sorted(before + after)
    letters = read_records(kafka_bootstrap, f"{topic}.dlq", expected=2)
    assert sorted(r.value for r in letters) == sorted(bad)
    assert {dict(r.headers)["tagstream.reason"] for r in letters} == {b"invalid_json"}
    assert worker.fatal is None
    worker.stop()
    assert worker.wait(timeout=30) == 0
