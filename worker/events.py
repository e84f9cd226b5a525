"""Input records in, events or dead letters out; and the records the worker publishes.

``parse_record`` turns one Kafka record into either an ``Event`` (text to classify) or a
``DeadLetter`` (why it cannot be classified). It never raises on bad input: every problem is
a ``Failure`` with action DEAD_LETTER (see ``worker/errors.py``).

Result record (one per input, JSON, same key, the input's headers kept), built by
``result_value`` for both kinds of bundle. ``schema`` names the kind and its version, so a
consumer can tell them apart (and a later change of either is a new version)::

    single-label bundles (schema "tagstream.single_label/1"):
    {"schema": "tagstream.single_label/1",
     "id": "order-17",                      from the input's id field, else topic:partition:offset
     "label": "spam", "score": 0.973,       the most probable label and its probability
     "top_k": [{"label": "spam", "score": 0.973}, {"label": "ham", "score": 0.027}],
     "model": "sms-spam", "model_version": "3f2a9c0b1d7e",
     "source": {"topic": "sms", "partition": 2, "offset": 1041, "timestamp_ms": 1764330000123},
     "latency_ms": 12.4}                    from the worker reading the input to building this

    multi-label bundles (schema "tagstream.multi_label/1"): no "label"/"score"; instead
    "labels": [{"label": "earn", "score": 0.97}, ...]   every label at or over its threshold,
                                            most probable first; [] when none is
    and "top_k" as above (the k most probable, over their threshold or not).

    Bundles that do not read texts by their first tokens alone (truncation head+tail or
    chunks) add "windows": 3, how many windows of the text the model read.

Dead-letter record: the input's value and key byte for byte, its headers, plus headers
``tagstream.reason`` (a Failure label), ``tagstream.detail``, ``tagstream.source.topic``,
``tagstream.source.partition``, ``tagstream.source.offset``, ``tagstream.source.timestamp_ms`` and
``tagstream.dead_lettered_at`` (ISO 8601, UTC).

A *bounded* dead letter (``bounded_copy``) is what goes out when the whole input cannot: an input
over ``max_payload_bytes``, or a dead letter or result the producer or the broker refused. Its value
is the first ``dead_letter_max_bytes`` bytes; a key over ``BOUNDED_KEY_BYTES`` and input headers
over ``BOUNDED_HEADER_BYTES`` in all are left out; and headers ``tagstream.truncated: true``,
``tagstream.original.size`` (bytes of the whole value) and ``tagstream.original.sha256`` (of the
whole value) say so, next to the source topic/partition/offset that find the original.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
import orjson

from worker.errors import Failure

# The first header of a record whose header keys were not all UTF-8 (worker/kafka/compat.py).
INVALID_HEADERS_MARKER = "tagstream.invalid_header_keys"

Header = tuple[str, bytes]

DETAIL_MAX_CHARS = 500  # tagstream.detail is for people; exception texts can be long

REASON_HEADER = "tagstream.reason"
DETAIL_HEADER = "tagstream.detail"
SOURCE_TOPIC_HEADER = "tagstream.source.topic"
SOURCE_PARTITION_HEADER = "tagstream.source.partition"
SOURCE_OFFSET_HEADER = "tagstream.source.offset"
SOURCE_TIMESTAMP_HEADER = "tagstream.source.timestamp_ms"
DEAD_LETTERED_AT_HEADER = "tagstream.dead_lettered_at"
# A bounded copy of an input that could not be published whole says so, and what the original
# was; such a copy is never re-published (worker/ops/dlq.py).
TRUNCATED_HEADER = "tagstream.truncated"
ORIGINAL_SIZE_HEADER = "tagstream.original.size"
ORIGINAL_SHA256_HEADER = "tagstream.original.sha256"
DROPPED_HEADER = "tagstream.dropped"  # what a dead letter left out: "key", "headers"
# Every header tagstream adds to a dead letter: a redrive strips these and keeps the rest.
DEAD_LETTER_HEADERS = frozenset(
    {
        REASON_HEADER, DETAIL_HEADER, SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER, SOURCE_OFFSET_HEADER,
        SOURCE_TIMESTAMP_HEADER, DEAD_LETTERED_AT_HEADER, ORIGINAL_SIZE_HEADER, ORIGINAL_SHA256_HEADER,
        TRUNCATED_HEADER, DROPPED_HEADER,
    }
)

BOUNDED_KEY_BYTES = 1024  # a longer key is left out of a bounded dead letter
BOUNDED_HEADER_BYTES = 4096  # input headers over this in all are left out of a bounded dead letter


class RecordLike(Protocol):
    """What we read from a kafka-python ConsumerRecord (and what test fakes provide)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[Header]


@dataclass(frozen=True, slots=True)
class ParseConfig:
    input_format: Literal["json", "text"] = "json"
    text_field: str = "text"
    id_field: str = "id"
    max_payload_bytes: int = 1_048_576
    dead_letter_max_bytes: int = 65_536  # the value kept in a bounded dead letter


@dataclass(slots=True)
class Event:
    """One input to classify. ``received`` is time.monotonic() when the worker read it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    headers: list[Header]
    event_id: str
    text: str
    received: float
    epoch: int = 0  # the partition's assignment epoch when read (see offsets.py)
    token_ids: list[int] = field(default_factory=list)  # filled by the runner's tokenizer
    tokenizer_key: str = ""  # which tokenizer produced token_ids (ModelRunner.tokenizer_key)
    alone: bool = False  # in a model call given up as stalled before: run in a batch of its own

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class DeadLetter:
    """An input that cannot be classified, with the reason; published to the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    reason: Failure
    detail: str
    epoch: int = 0
    original_size: int | None = None  # set on a bounded copy: bytes of the whole value
    original_sha256: str | None = None  # set on a bounded copy: sha256 of the whole value
    dropped: tuple[str, ...] = ()  # what a bounded copy left out ("key", "headers")

    @property
    def bounded(self) -> bool:
        return self.original_size is not None


def bounded_copy(letter: DeadLetter, max_bytes: int, why: str | None = None) -> DeadLetter:
    """A dead letter small enough to publish: the value's first ``max_bytes`` bytes, a long key and
    large headers left out, and the original's size and sha256 kept (see the module docstring)."""
    if letter.bounded:
        return letter
    value = letter.value or b""
    dropped = []
    key = letter.key
    if key is not None and len(key) > BOUNDED_KEY_BYTES:
        key, dropped = None, ["key"]
    headers = letter.headers
    if sum(len(k) + len(v or b"") for k, v in headers) > BOUNDED_HEADER_BYTES:
        headers, dropped = [], [*dropped, "headers"]
    detail = letter.detail if why is None else f"{letter.detail}; {why}"
    return DeadLetter(
        letter.topic, letter.partition, letter.offset, letter.timestamp_ms, key, value[:max_bytes], headers,
        letter.reason, detail[:DETAIL_MAX_CHARS], letter.epoch, len(value), hashlib.sha256(value).hexdigest(),
        tuple(dropped),
    )


def parse_record(record: RecordLike, config: ParseConfig, received: float, epoch: int = 0) -> Event | DeadLetter:
    """Classify a record as an Event to infer on, or a DeadLetter with its reason.

    The common case (a JSON object with a string text) takes one orjson call; anything orjson
    refuses goes the slow way (``_json_failure``), which finds the exact reason.
    """
    value = record.value
    headers = record.headers
    if headers and headers[0][0] == INVALID_HEADERS_MARKER:  # worker/kafka/compat.py
        letter = _dead(record, Failure.INVALID_HEADER, epoch,
                       f"{headers[0][1].decode()} header key(s) are not UTF-8 (left out of this copy)", headers[1:])
        letter.dropped = ("headers",)
        return letter
    if not value:
        unreadable = getattr(record, "error", None)  # worker/kafka/base.py UnreadableRecord
        if unreadable is not None:
            return _dead(record, Failure.UNREADABLE_RECORD, epoch, f"the Kafka client could not decode it: {unreadable}")
        return _dead(record, Failure.EMPTY_PAYLOAD, epoch, "the record has no value")
    if len(value) > config.max_payload_bytes:
        letter = _dead(
            record, Failure.PAYLOAD_TOO_LARGE, epoch,
            f"{len(value)} bytes is over max_payload_bytes={config.max_payload_bytes}",
        )
        return bounded_copy(letter, config.dead_letter_max_bytes)

    event_id: Any = None
    if config.input_format == "text":
        try:
            text: Any = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _dead(record, Failure.INVALID_UTF8, epoch, f"byte {exc.start}: {exc.reason}")
    else:
        fallback = False
        try:
            obj = orjson.loads(value)  # validates UTF-8 too
        except orjson.JSONDecodeError:
            parsed = _json_failure(record, value, epoch)
            if isinstance(parsed, DeadLetter):
                return parsed
            obj, fallback = parsed, True
        if type(obj) is not dict:
            return _dead(record, Failure.NOT_AN_OBJECT, epoch, f"the JSON value is a {type(obj).__name__}, not an object")
        text = obj.get(config.text_field, _MISSING)
        if type(text) is not str:
            if text is _MISSING:
                return _dead(record, Failure.MISSING_TEXT, epoch, f"no {config.text_field!r} field")
            return _dead(
                record, Failure.TEXT_NOT_STRING, epoch, f"{config.text_field!r} is a {type(text).__name__}, not a string"
            )
        event_id = obj.get(config.id_field)
        if fallback:
            surrogate = _lone_surrogate({config.text_field: text, config.id_field: event_id})
            if surrogate:
                return _dead(record, Failure.INVALID_JSON, epoch, surrogate)
    if not text or text.isspace():
        return _dead(record, Failure.EMPTY_TEXT, epoch, "the text is empty or only whitespace")
    if type(event_id) is not str or not event_id:
        if type(event_id) is int:
            event_id = str(event_id)
        else:
            event_id = f"{record.topic}:{record.partition}:{record.offset}"
    return Event(
        record.topic, record.partition, record.offset, record.timestamp, record.key, headers or [], event_id, text,
        received, epoch,
    )


SINGLE_LABEL_SCHEMA = "tagstream.single_label/1"
MULTI_LABEL_SCHEMA = "tagstream.multi_label/1"


_MISSING = object()


def _dead(record: RecordLike, reason: Failure, epoch: int, detail: str, headers: list[Header] | None = None) -> DeadLetter:
    return DeadLetter(
        record.topic, record.partition, record.offset, record.timestamp, record.key, record.value,
        list(record.headers or ()) if headers is None else list(headers), reason, detail[:DETAIL_MAX_CHARS], epoch,
    )


def _json_failure(record: RecordLike, value: bytes, epoch: int) -> Any:
    """orjson refused the value: say exactly why (or return what the standard library makes of it,
    e.g. an integer past 64 bits, which orjson does not take)."""
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _dead(record, Failure.INVALID_UTF8, epoch, f"byte {exc.start}: {exc.reason}")
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as exc:
        return _dead(record, Failure.INVALID_JSON, epoch, f"line {exc.lineno} column {exc.colno}: {exc.msg}")
    except RecursionError:
        return _dead(record, Failure.INVALID_JSON, epoch, "nested too deeply")


def _lone_surrogate(fields: dict[str, Any]) -> str | None:
    """Why a field the worker uses cannot be kept, when the standard library parsed the value: a
    ``\\ud800``-style escape of half a UTF-16 pair decodes to a code point that is not a character
    (orjson refuses it; json takes it). The tokenizer cannot encode such a text (its TypeError
    stopped the worker on one record, and again after each restart), nor can a result carry such
    an id."""
    for name, got in fields.items():
        if type(got) is str:
            try:
                got.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"{name!r} holds a lone UTF-16 surrogate (\\u{ord(got[exc.start]):04x} at character {exc.start})"
    return None


def result_value(
    event: Event,
    *,
    top_k: list[tuple[str, float]],
    model_name: str,
    model_version: str,
    latency_ms: float,
    label: str | None = None,
    score: float | None = None,
    tags: list[tuple[str, float]] | None = None,
    windows: int | None = None,
) -> bytes:
    """The JSON result for one classified event (schemas in the module docstring).

    Single-label: ``label`` and ``score``. Multi-label: ``tags`` (the labels over threshold with
    their probabilities; may be empty). ``windows``: for bundles that read windows.
    """
    top = [{"label": name, "score": round(p, 6)} for name, p in top_k]
    record: dict[str, Any]
    if tags is None:
        record = {"schema": SINGLE_LABEL_SCHEMA, "id": event.event_id, "label": label,
                  "score": round(score if score is not None else 0.0, 6), "top_k": top}
    else:
        record = {"schema": MULTI_LABEL_SCHEMA, "id": event.event_id,
                  "labels": [{"label": name, "score": round(p, 6)} for name, p in tags], "top_k": top}
    if windows is not None:
        record["windows"] = windows
    record["model"] = model_name
    record["model_version"] = model_version
    record["source"] = {
        "topic": event.topic, "partition": event.partition, "offset": event.offset, "timestamp_ms": event.timestamp_ms,
    }
    record["latency_ms"] = round(latency_ms, 3)
    return orjson.dumps(record)


def single_label_values(
    events: list[Event],
    top_indices: list[list[int]],
    top_scores: list[list[float]],
    labels: list[str],
    *,
    model_name: str,
    model_version: str,
    now: float,
) -> list[bytes]:
    """``result_value`` for a batch of single-label results read by head, built per batch: the
    scores are rounded in one numpy call (Python's ``round`` per score was most of a result's
    cost) and each record is built directly. ``now``: ``time.monotonic()`` for the latencies.
    numpy rounds x * 10^6 to an integer: a score on a tie of its 7th decimal may round the other
    way than ``round`` would, 10^-6 apart; everything else is byte for byte ``result_value``'s."""
    if not events:
        return []
    scores = np.round(np.asarray(top_scores, dtype=np.float64), 6).tolist()
    received = np.fromiter((e.received for e in events), dtype=np.float64, count=len(events))
    latencies = np.round((now - received) * 1000.0, 3).tolist()
    dumps = orjson.dumps
    values = []
    for event, indices, rounded, latency_ms in zip(events, top_indices, scores, latencies, strict=True):
        top = [{"label": labels[j], "score": p} for j, p in zip(indices, rounded, strict=True)]
        values.append(dumps({
            "schema": SINGLE_LABEL_SCHEMA, "id": event.event_id, "label": top[0]["label"], "score": rounded[0],
            "top_k": top, "model": model_name, "model_version": model_version,
            "source": {"topic": event.topic, "partition": event.partition, "offset": event.offset,
                       "timestamp_ms": event.timestamp_ms},
            "latency_ms": latency_ms,
        }))
    return values


def dead_letter_headers(letter: DeadLetter, now: datetime | None = None) -> list[Header]:
    """The input's own headers followed by the tagstream.* headers that say what happened."""
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    bounded: list[Header] = []
    if letter.bounded:
        bounded = [
            (TRUNCATED_HEADER, b"true"),
            (ORIGINAL_SIZE_HEADER, str(letter.original_size).encode()),
            (ORIGINAL_SHA256_HEADER, (letter.original_sha256 or "").encode()),
        ]
    if letter.dropped:
        bounded.append((DROPPED_HEADER, ",".join(letter.dropped).encode()))
    return [
        *letter.headers,
        *bounded,
        (REASON_HEADER, letter.reason.label.encode()),
        (DETAIL_HEADER, letter.detail.encode("utf-8", "replace")),
        (SOURCE_TOPIC_HEADER, letter.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(letter.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(letter.offset).encode()),
        (SOURCE_TIMESTAMP_HEADER, str(letter.timestamp_ms).encode()),
        (DEAD_LETTERED_AT_HEADER, when.encode()),
    ]
