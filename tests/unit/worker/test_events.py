"""Parsing records into events or dead letters; the result and dead-letter record formats."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from worker.errors import Failure
from worker.events import (
    DeadLetter,
    Event,
    ParseConfig,
    dead_letter_headers,
    parse_record,
    result_value,
    single_label_values,
)


@dataclass
class Record:
    value: bytes | None
    key: bytes | None = b"k1"
    topic: str = "sms"
    partition: int = 2
    offset: int = 41
    timestamp: int = 1_764_330_000_123
    headers: list = field(default_factory=lambda: [("trace", b"abc")])


JSON = ParseConfig()


def test_json_event_with_id():
    """A JSON object with text and id becomes an Event keeping key, headers and position."""
    event = parse_record(Record(b'{"id": "order-7", "text": "win a prize"}'), JSON, received=5.0, epoch=3)
    assert isinstance(event, Event)
    assert (event.event_id, event.text, event.key) == ("order-7", "win a prize", b"k1")
    assert (event.topic, event.partition, event.offset, event.epoch) == ("sms", 2, 41, 3)
    assert event.headers == [("trace", b"abc")] and event.received == 5.0


def test_id_falls_back_to_position():
    """Without an id field the id is topic:partition:offset."""
    event = parse_record(Record(b'{"text": "hello"}'), JSON, received=0.0)
    assert isinstance(event, Event) and event.event_id == "sms:2:41"


def test_numeric_id_is_kept_as_text():
    """A numeric id is used, as a string."""
    event = parse_record(Record(b'{"id": 17, "text": "hello"}'), JSON, received=0.0)
    assert isinstance(event, Event) and event.event_id == "17"


def test_configured_fields_and_text_format():
    """text_field/id_field are honoured; input_format=text takes the whole value as the text."""
    config = ParseConfig(text_field="body", id_field="uuid")
    event = parse_record(Record(b'{"uuid": "u1", "body": "hi"}'), config, received=0.0)
    assert isinstance(event, Event) and (event.event_id, event.text) == ("u1", "hi")
    raw = parse_record(Record(b"plain text, no JSON"), ParseConfig(input_format="text"), received=0.0)
    assert isinstance(raw, Event) and raw.text == "plain text, no JSON"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Failure.EMPTY_PAYLOAD),
        (b"", Failure.EMPTY_PAYLOAD),
        (b"\xff\xfe not utf-8", Failure.INVALID_UTF8),
        (b"{not json", Failure.INVALID_JSON),
        (b"[1, 2]", Failure.NOT_AN_OBJECT),
        (b'"just a string"', Failure.NOT_AN_OBJECT),
        (b'{"id": 1}', Failure.MISSING_TEXT),
        (b'{"text": 42}', Failure.TEXT_NOT_STRING),
        (b'{"text": null}', Failure.TEXT_NOT_STRING),
        (b'{"text": "   \\n"}', Failure.EMPTY_TEXT),
        (b"[" * 100_000, Failure.INVALID_JSON),
    ],
)
def test_bad_records_become_dead_letters(value, reason):
    """Each kind of bad input is a DeadLetter with its reason, keeping the original bytes and key."""
    letter = parse_record(Record(value), JSON, received=0.0)
    assert isinstance(letter, DeadLetter)
    assert letter.reason is reason and letter.detail
    assert letter.value == value and letter.key == b"k1"


def test_payload_over_the_limit_is_dead_lettered_unread_as_a_bounded_copy():
    """A value over max_payload_bytes is refused before decoding; its dead letter keeps the first bytes and a digest."""
    import hashlib

    value = b'{"text": "a long enough text"}'
    config = ParseConfig(max_payload_bytes=10, dead_letter_max_bytes=8)
    letter = parse_record(Record(value), config, received=0.0)
    assert isinstance(letter, DeadLetter) and letter.reason is Failure.PAYLOAD_TOO_LARGE
    assert "max_payload_bytes=10" in letter.detail
    assert letter.value == value[:8] and letter.original_size == len(value)
    assert letter.original_sha256 == hashlib.sha256(value).hexdigest()
    headers = dict(dead_letter_headers(letter))
    assert headers["tagstream.truncated"] == b"true" and headers["tagstream.original.size"] == str(len(value)).encode()


def test_a_bounded_copy_leaves_out_a_long_key_and_large_headers():
    """Keys over 1 KiB and headers over 4 KiB in all are left out of a bounded copy, and it says so."""
    from worker.events import bounded_copy

    letter = DeadLetter("t", 0, 1, 0, b"k" * 2000, b"v" * 100, [("h", b"x" * 5000)], Failure.INVALID_JSON, "bad")
    copy = bounded_copy(letter, 10)
    assert copy.key is None and copy.headers == [] and copy.value == b"v" * 10
    assert dict(dead_letter_headers(copy))["tagstream.dropped"] == b"key,headers"


def test_a_record_with_header_keys_that_are_not_utf8_is_dead_lettered_with_its_bytes():
    """The client's marker (worker/kafka/compat.py) makes an invalid_header dead letter, the marker itself dropped."""
    from worker.events import INVALID_HEADERS_MARKER

    record = Record(b'{"text": "fine"}', headers=[(INVALID_HEADERS_MARKER, b"1"), ("ok", b"2")])
    letter = parse_record(record, JSON, received=0.0)
    assert isinstance(letter, DeadLetter) and letter.reason is Failure.INVALID_HEADER
    assert letter.value == b'{"text": "fine"}' and letter.headers == [("ok", b"2")]
    assert dict(dead_letter_headers(letter))["tagstream.dropped"] == b"headers"


def test_a_lone_surrogate_escape_in_the_text_or_id_is_dead_lettered_not_handed_on():
    """JSON the standard library takes but orjson refuses (a \\ud800 escape: half a UTF-16 pair) is
    dead-lettered when the text or the id holds one: the tokenizer raised TypeError on such a text, which
    stopped the worker at that record after every restart. A surrogate pair, and one in a field the worker
    does not use, are fine."""
    for value, named in [(b'{"id": "a", "text": "x \\ud800 y"}', "'text'"), (b'{"id": "\\udfff", "text": "fine"}', "'id'")]:
        letter = parse_record(Record(value), JSON, received=0.0)
        assert isinstance(letter, DeadLetter) and letter.reason is Failure.INVALID_JSON
        assert named in letter.detail and "lone UTF-16 surrogate" in letter.detail
        assert letter.value == value  # the bytes as they came
    pair = parse_record(Record(b'{"id": "b", "text": "smile \\ud83d\\ude00"}'), JSON, received=0.0)
    assert isinstance(pair, Event) and pair.text == "smile \U0001f600"
    other = parse_record(Record(b'{"id": "c", "text": "ok", "note": "\\ud800", "n": 123456789012345678901234567890}'),
                         JSON, received=0.0)
    assert isinstance(other, Event) and other.text == "ok"


def test_long_text_is_accepted_not_rejected():
    """A very long text is an Event (the tokenizer truncates it), not a dead letter."""
    text = "word " * 50_000
    event = parse_record(Record(json.dumps({"text": text}).encode()), JSON, received=0.0)
    assert isinstance(event, Event) and event.text == text


def test_result_schema():
    """The single-label result JSON has its schema, id, label, score, top-k, model, version, source and latency."""
    event = Event("sms", 2, 41, 1_764_330_000_123, b"k1", [], "order-7", "hi", 0.0)
    value = result_value(
        event, label="spam", score=0.97, top_k=[("spam", 0.97), ("ham", 0.03)],
        model_name="sms-spam", model_version="abc123", latency_ms=12.34567,
    )
    assert json.loads(value) == {
        "schema": "tagstream.single_label/1",
        "id": "order-7",
        "label": "spam",
        "score": 0.97,
        "top_k": [{"label": "spam", "score": 0.97}, {"label": "ham", "score": 0.03}],
        "model": "sms-spam",
        "model_version": "abc123",
        "source": {"topic": "sms", "partition": 2, "offset": 41, "timestamp_ms": 1_764_330_000_123},
        "latency_ms": 12.346,
    }


def test_multi_label_result_schema():
    """A multi-label result has its own schema, every tag over threshold with scores (maybe none), top-k, windows."""
    event = Event("news", 0, 5, 1_764_330_000_123, None, [], "n-1", "oil and wheat", 0.0)
    value = result_value(
        event, tags=[("crude", 0.91), ("grain", 0.62)], top_k=[("crude", 0.91), ("grain", 0.62), ("ship", 0.2)],
        model_name="tags", model_version="v1", latency_ms=3.0, windows=3,
    )
    record = json.loads(value)
    assert record["schema"] == "tagstream.multi_label/1" and "label" not in record and "score" not in record
    assert record["labels"] == [{"label": "crude", "score": 0.91}, {"label": "grain", "score": 0.62}]
    assert [x["label"] for x in record["top_k"]] == ["crude", "grain", "ship"] and record["windows"] == 3
    assert record["source"] == {"topic": "news", "partition": 0, "offset": 5, "timestamp_ms": 1_764_330_000_123}
    empty = json.loads(result_value(event, tags=[], top_k=[("ship", 0.2)], model_name="tags", model_version="v1",
                                    latency_ms=1.0))
    assert empty["labels"] == [] and "windows" not in empty


def test_result_keeps_unicode_text_ids():
    """Non-ASCII ids are written as UTF-8, not escaped."""
    event = Event("t", 0, 0, 0, None, [], "id-é", "x", 0.0)
    value = result_value(event, label="a", score=1.0, top_k=[("a", 1.0)], model_name="m", model_version="v",
                         latency_ms=0.0)
    assert "id-é".encode() in value


def test_dead_letter_headers():
    """Dead-letter headers keep the input's headers and add reason, detail, source and time."""
    letter = parse_record(Record(b"{oops"), JSON, received=0.0)
    assert isinstance(letter, DeadLetter)
    headers = dict(dead_letter_headers(letter, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))
    assert headers["trace"] == b"abc"
    assert headers["tagstream.reason"] == b"invalid_json"
    assert headers["tagstream.detail"].startswith(b"line 1 column 2")
    assert headers["tagstream.source.topic"] == b"sms"
    assert headers["tagstream.source.partition"] == b"2"
    assert headers["tagstream.source.offset"] == b"41"
    assert headers["tagstream.source.timestamp_ms"] == b"1764330000123"
    assert headers["tagstream.dead_lettered_at"] == b"2026-01-02T03:04:05.000+00:00"


def test_a_batch_of_single_label_results_is_byte_for_byte_what_result_value_builds():
    """single_label_values gives, per event, the bytes result_value gives for the same answer (ids,
    source, labels, top-k and latency), apart from a score on a rounding tie of its 7th decimal."""
    import random

    rng = random.Random(7)
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    events = [
        Event("news", i % 3, 1000 + i, 1_764_330_000_000 + i, None, [], f"id-{i}", "t", 100.0 + i / 1000, 1)
        for i in range(200)
    ]
    indices = [rng.sample(range(4), 3) for _ in events]
    scores = [sorted((rng.random() for _ in range(3)), reverse=True) for _ in events]
    now = 101.5
    batch = single_label_values(events, indices, scores, labels, model_name="m", model_version="v1", now=now)
    one_by_one = [
        result_value(event, label=labels[ix[0]], score=sc[0], top_k=[(labels[j], p) for j, p in zip(ix, sc, strict=True)],
                     model_name="m", model_version="v1", latency_ms=(now - event.received) * 1000.0)
        for event, ix, sc in zip(events, indices, scores, strict=True)
    ]
    assert len(batch) == len(events)
    differing = [(a, b) for a, b in zip(batch, one_by_one, strict=True) if a != b]
    assert len(differing) <= 2  # rounding ties only
    for a, b in differing:
        x, y = json.loads(a), json.loads(b)
        assert x["score"] == pytest.approx(y["score"], abs=1.01e-6) and x["id"] == y["id"]
    assert single_label_values([], [], [], labels, model_name="m", model_version="v1", now=now) == []
