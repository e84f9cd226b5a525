"""Which inputs past a committed position already have their outputs: carried in the offset
commit's metadata string, so that the partition's next reader does not label them again.

At-least-once commits the lowest unacknowledged offset of each partition. Outputs acknowledged
past it (the batcher runs inputs out of order; a stalled or failed batch holds the position back
while later ones are delivered) used to be published again by whoever read the partition next: a
successor after a crash or a stalled model call, or the member a rebalance gave it to. The
committer now writes those offsets into the commit's metadata, and a reader that starts exactly at
that committed position acknowledges them at once instead of running them again.

Format: ``tagstream.delivered.v1 <position> <ranges>``, the ranges relative to the position,
comma-separated, ``a`` or ``a-b`` (inclusive): ``tagstream.delivered.v1 1200 3-40,42,45-99``.
Skipping is only ever an optimisation: a hint that is missing, foreign, cut short or does not
match the committed position skips nothing, and inputs are labelled again as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from worker.telemetry import get_logger

if TYPE_CHECKING:
    from worker.kafka.base import ConsumerClient, TopicPartition
    from worker.offsets import OffsetTracker

log = get_logger("tagstream.worker.source")

PREFIX = "tagstream.delivered.v1"
# Kafka refuses a commit whose metadata passes offset.metadata.max.bytes (4096 by default), failing
# it whole: hints stay well under that, dropping the ranges farthest from the position first.
MAX_BYTES = 2000
# A hint never names more offsets than this (a worker holds a few thousand inputs in flight): a
# larger one is not ours to trust, and would only cost memory.
MAX_OFFSETS = 100_000


def encode(position: int, delivered: Iterable[int], max_bytes: int = MAX_BYTES) -> str:
    """The metadata for a commit at ``position``: the offsets past it in ``delivered`` ("" for none)."""
    offsets = sorted(o for o in delivered if o > position)
    if not offsets:
        return ""
    head = f"{PREFIX} {position} "
    ranges: list[str] = []
    size = len(head)
    start = prev = offsets[0]
    for offset in [*offsets[1:], None]:
        if offset is not None and offset == prev + 1:
            prev = offset
            continue
        text = f"{start - position}" if start == prev else f"{start - position}-{prev - position}"
        size += len(text) + (1 if ranges else 0)
        if size > max_bytes:
            break  # the rest is labelled again: duplicates, as before hints existed
        ranges.append(text)
        if offset is not None:
            start = prev = offset
    return head + ",".join(ranges) if ranges else ""


def decode(metadata: str | None, committed: int | None) -> frozenset[int]:
    """The offsets a hint says were delivered, when it is ours and was written with the commit at
    ``committed``; else none. Anything malformed is ignored (it only costs duplicates)."""
    if metadata:
        metadata = metadata.rstrip("\x00")  # librdkafka stores the C string's terminating NUL with it
    if not metadata or committed is None or not metadata.startswith(PREFIX + " "):
        return frozenset()
    try:
        _, position_text, ranges = metadata.split(" ", 2)
        position = int(position_text)
        if position != committed:
            return frozenset()
        offsets: set[int] = set()
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if first < 1 or last < first or len(offsets) + last - first + 1 > MAX_OFFSETS:
                return frozenset()
            offsets.update(range(position + first, position + last + 1))
        return frozenset(offsets)
    except ValueError:
        return frozenset()


def read_hints(consumer: ConsumerClient, tracker: OffsetTracker, partitions: Iterable[TopicPartition]) -> dict[str, int]:
    """Newly assigned ``partitions``: read the group's commits with their hints and have the tracker
    skip what they name when reading starts at the committed position; returns how many inputs
    each partition skips ("topic[p]": n). Called before any record of them is tracked (the source
    does so before it hands on a poll's records). A failed lookup only costs duplicates."""
    wanted = [tp for tp in partitions if tracker.epoch(tp) is not None]
    if not wanted:
        return {}
    try:
        found = consumer.committed_metadata(wanted)
    except Exception as exc:
        log.warning("delivered_hints_unread", partitions=len(wanted), error=str(exc),
                    consequence="inputs already labelled past the committed offsets are labelled again")
        return {}
    skipped = {}
    for tp, (committed, metadata) in found.items():
        offsets = decode(metadata, committed)
        if offsets:
            tracker.skip_delivered_from(tp, committed, offsets)
            skipped[f"{tp.topic}[{tp.partition}]"] = len(offsets)
    return skipped
