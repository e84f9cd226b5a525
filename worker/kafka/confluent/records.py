"""Consumed records as the pipeline reads them, and the conversions between our partitions and
confluent-kafka's."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import confluent_kafka as ck

from worker.events import INVALID_HEADERS_MARKER
from worker.kafka.base import TopicPartition


class ConsumedRecord:
    """One consumed record with the attributes ``parse_record`` reads (cheaper than a dataclass)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, key: bytes | None,
                 value: bytes | None, headers: list[tuple[str, bytes | None]]) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = headers


# confluent-kafka cannot decode a record's headers when a key is not UTF-8; parse_record
# dead-letters a record whose first header is this marker (reason invalid_header).
UNDECODABLE_HEADERS = [(INVALID_HEADERS_MARKER, b"one or more")]
# Message.headers() then returns with the decoding error still set instead of raising it. A call
# the interpreter has specialised (a hot loop's m.headers()) does not check for that, and the
# error surfaces at some later, unrelated call as a SystemError. A call through methodcaller is
# always checked, so the error is raised here, where it belongs.
message_headers = operator.methodcaller("headers")


def resend_headers(msg: Any) -> list | None:
    """A delivery report's headers, to produce its record again (none when they cannot be decoded)."""
    try:
        return message_headers(msg)  # type: ignore[no-any-return]
    except (SystemError, UnicodeDecodeError):
        return None



def their_partitions(tps: Iterable[TopicPartition]) -> list[Any]:
    return [ck.TopicPartition(tp[0], tp[1]) for tp in tps]


def their_offsets(positions: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None) -> list[Any]:
    """Offsets to commit, with the metadata string of the partitions that have one (librdkafka's
    TopicPartition takes a str or nothing: None is refused)."""
    meta = metadata or {}
    return [ck.TopicPartition(tp[0], tp[1], position, metadata=meta[tp]) if meta.get(tp)
            else ck.TopicPartition(tp[0], tp[1], position) for tp, position in positions.items()]
