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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from worker.errors import Failure

Header = tuple[str, bytes]

REASON_HEADER = "tagstream.reason"
DETAIL_HEADER = "tagstream.detail"
SOURCE_TOPIC_HEADER = "tagstream.source.topic"
SOURCE_PARTITION_HEADER = "tagstream.source.partition"
SOURCE_OFFSET_HEADER = "tagstream.source.offset"
SOURCE_TIMESTAMP_HEADER = "tagstream.source.timestamp_ms"
DEAD_LETTERED_AT_HEADER = "tagstream.dead_lettered_at"
# A dead letter may carry a bounded copy of an oversized input instead of all of it; these say
# so (and what the original was). Such a copy is never re-published (worker/ops/dlq.py).
ORIGINAL_SIZE_HEADER = "tagstream.original.size"
ORIGINAL_SHA256_HEADER = "tagstream.original.sha256"
TRUNCATED_HEADER = "tagstream.truncated"
# Every header tagstream adds to a dead letter: a redrive strips these and keeps the rest.
DEAD_LETTER_HEADERS = frozenset(
    {
        REASON_HEADER, DETAIL_HEADER, SOURCE_TOPIC_HEADER, SOURCE_PARTITION_HEADER, SOURCE_OFFSET_HEADER,
        SOURCE_TIMESTAMP_HEADER, DEAD_LETTERED_AT_HEADER, ORIGINAL_SIZE_HEADER, ORIGINAL_SHA256_HEADER,
        TRUNCATED_HEADER,
    }
)


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


def parse_record(record: RecordLike, config: ParseConfig, received: float, epoch: int = 0) -> Event | DeadLetter:
    """Classify a record as an Event to infer on, or a DeadLetter with its reason."""
    value = record.value

    def dead(reason: Failure, detail: str) -> DeadLetter:
        return DeadLetter(
            record.topic, record.partition, record.offset, record.timestamp, record.key, value,
            list(record.headers or ()), reason, detail, epoch,
        )

    if not value:
        return dead(Failure.EMPTY_PAYLOAD, "the record has no value")
    if len(value) > config.max_payload_bytes:
        return dead(
            Failure.PAYLOAD_TOO_LARGE,
            f"{len(value)} bytes is over max_payload_bytes={config.max_payload_bytes}",
        )
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead(Failure.INVALID_UTF8, f"byte {exc.start}: {exc.reason}")

    event_id: Any = None
    if config.input_format == "text":
        text: Any = decoded
    else:
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError as exc:
            return dead(Failure.INVALID_JSON, f"line {exc.lineno} column {exc.colno}: {exc.msg}")
        except RecursionError:
            return dead(Failure.INVALID_JSON, "nested too deeply")
        if not isinstance(obj, dict):
            return dead(Failure.NOT_AN_OBJECT, f"the JSON value is a {type(obj).__name__}, not an object")
        if config.text_field not in obj:
            return dead(Failure.MISSING_TEXT, f"no {config.text_field!r} field")
        text = obj[config.text_field]
        if not isinstance(text, str):
            return dead(Failure.TEXT_NOT_STRING, f"{config.text_field!r} is a {type(text).__name__}, not a string")
        event_id = obj.get(config.id_field)
    if not text.strip():
        return dead(Failure.EMPTY_TEXT, "the text is empty or only whitespace")
    if isinstance(event_id, bool) or not isinstance(event_id, str | int) or event_id == "":
        event_id = f"{record.topic}:{record.partition}:{record.offset}"
    return Event(
        record.topic, record.partition, record.offset, record.timestamp, record.key,
        list(record.headers or ()), str(event_id), text, received, epoch,
    )


SINGLE_LABEL_SCHEMA = "tagstream.single_label/1"
MULTI_LABEL_SCHEMA = "tagstream.multi_label/1"


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
    record: dict[str, Any] = {"schema": SINGLE_LABEL_SCHEMA if tags is None else MULTI_LABEL_SCHEMA,
                              "id": event.event_id}
    if tags is None:
        record["label"] = label
        record["score"] = round(score if score is not None else 0.0, 6)
    else:
        record["labels"] = [{"label": name, "score": round(p, 6)} for name, p in tags]
    record["top_k"] = [{"label": name, "score": round(p, 6)} for name, p in top_k]
    if windows is not None:
        record["windows"] = windows
    record.update(
        model=model_name,
        model_version=model_version,
        source={
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "timestamp_ms": event.timestamp_ms,
        },
        latency_ms=round(latency_ms, 3),
    )
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dead_letter_headers(letter: DeadLetter, now: datetime | None = None) -> list[Header]:
    """The input's own headers followed by the tagstream.* headers that say what happened."""
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return [
        *letter.headers,
        (REASON_HEADER, letter.reason.label.encode()),
        (DETAIL_HEADER, letter.detail.encode("utf-8", "replace")),
        (SOURCE_TOPIC_HEADER, letter.topic.encode()),
        (SOURCE_PARTITION_HEADER, str(letter.partition).encode()),
        (SOURCE_OFFSET_HEADER, str(letter.offset).encode()),
        (SOURCE_TIMESTAMP_HEADER, str(letter.timestamp_ms).encode()),
        (DEAD_LETTERED_AT_HEADER, when.encode()),
    ]
