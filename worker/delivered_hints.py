"""Which inputs past a committed position already have their outputs: carried in the offset
commit's metadata string, so that the partition's next reader does not label them again.

At-least-once commits the lowest unacknowledged offset of each partition. Outputs acknowledged
past it (the batcher runs inputs out of order; a stalled or failed batch holds the position back
while later ones are delivered) used to be published again by whoever read the partition next: a
successor after a crash or a stalled model call, or the member a rebalance gave it to. The
committer now writes those offsets into the commit's metadata, and a reader that starts exactly at
that committed position acknowledges them at once instead of running them again.

Format: ``tagstream.delivered.v1 <position> <ranges>[ stalled=<offset>:<count>,...][ died=<offset>:<deaths>:<alone>,...]``,
offsets relative to the position; ranges comma-separated, ``a`` or ``a-b`` (inclusive), ``.`` for
none: ``tagstream.delivered.v1 1200 3-40,42,45-99 stalled=0:1,2:1 died=5:2:1``.

``stalled``: inputs at or past the position that were in a model call given up as stalled
(TAGSTREAM_MODEL_STALL_S), and how many times. The next reader runs such an input in a batch of its
own, and dead-letters it (``stalled_twice``) once it was in two: an input that hangs the model every
time no longer restarts the worker for ever.
``died``: inputs that a pod's model process died in a call with (a crash, the OOM killer, a kill
from outside: worker/procs/transport.py), how many times, and how many of those with the input
alone in the call. A death may come from outside the worker, so deaths convict later than hangs
(worker/source.py, _after_stalls). Written only when there are some: a reader older than this
field ignores such a hint whole, which costs duplicates and those counts, nothing else.
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


def encode(position: int, delivered: Iterable[int], stalled: dict[int, int] | None = None,
           died: dict[int, tuple[int, int]] | None = None, max_bytes: int = MAX_BYTES) -> str:
    """The metadata for a commit at ``position``: the offsets past it in ``delivered``, and the inputs
    at or past it that were in a model call given up as stalled, with how often (``stalled``,
    offset: count), or died in (``died``, offset: (deaths, of them alone)). "" when there is nothing
    to say."""
    offsets = sorted(o for o in delivered if o > position)
    marks = sorted((o, n) for o, n in (stalled or {}).items() if o >= position and n > 0)
    deaths = sorted((o, n, a) for o, (n, a) in (died or {}).items() if o >= position and n > 0)
    if not offsets and not marks and not deaths:
        return ""
    # The stalled marks first, whole: they are few (one batch), and they are what ends a loop of
    # restarts on an input that hangs the model; the delivered ranges fill what room is left.
    tail = " stalled=" + ",".join(f"{o - position}:{n}" for o, n in marks) if marks else ""
    if deaths:
        tail += " died=" + ",".join(f"{o - position}:{n}:{a}" for o, n, a in deaths)
    head = f"{PREFIX} {position} "
    ranges: list[str] = []
    size = len(head) + len(tail) + 1
    if offsets:
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
    if not ranges and not marks and not deaths:
        return ""
    return head + (",".join(ranges) or ".") + tail


Parsed = tuple[frozenset[int], dict[int, int], dict[int, tuple[int, int]]]


def _parse(metadata: str | None, committed: int | None) -> Parsed:
    """(delivered offsets, stalled offsets with their counts, offsets died in with (deaths, alone))
    of a hint, when it is ours and was written with the commit at ``committed``; else nothing.
    Anything malformed is ignored."""
    nothing: Parsed = (frozenset(), {}, {})
    if metadata:
        metadata = metadata.rstrip("\x00")  # librdkafka stores the C string's terminating NUL with it
    if not metadata or committed is None or not metadata.startswith(PREFIX + " "):
        return nothing
    try:
        fields = metadata.split(" ")
        if len(fields) not in (3, 4, 5) or int(fields[1]) != committed:
            return nothing
        position = int(fields[1])
        offsets: set[int] = set()
        for part in ([] if fields[2] == "." else fields[2].split(",")):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if first < 1 or last < first or len(offsets) + last - first + 1 > MAX_OFFSETS:
                return nothing
            offsets.update(range(position + first, position + last + 1))
        stalled: dict[int, int] = {}
        died: dict[int, tuple[int, int]] = {}
        extra = fields[3:]
        if extra and extra[0].startswith("stalled="):
            for part in extra.pop(0).removeprefix("stalled=").split(","):
                rel, _, count = part.partition(":")
                if int(rel) < 0 or int(count) < 1 or len(stalled) >= MAX_OFFSETS:
                    return nothing
                stalled[position + int(rel)] = int(count)
        if extra and extra[0].startswith("died="):
            for part in extra.pop(0).removeprefix("died=").split(","):
                at, deaths, alone = (int(n) for n in part.split(":"))  # a wrong count raises ValueError
                if at < 0 or deaths < 1 or not 0 <= alone <= deaths or len(died) >= MAX_OFFSETS:
                    return nothing
                died[position + at] = (deaths, alone)
        if extra:
            return nothing
        return frozenset(offsets), stalled, died
    except ValueError:
        return nothing


def decode(metadata: str | None, committed: int | None) -> frozenset[int]:
    """The offsets a hint says were delivered, when it is ours and was written with the commit at
    ``committed``; else none. Anything malformed is ignored (it only costs duplicates)."""
    return _parse(metadata, committed)[0]


def decode_stalled(metadata: str | None, committed: int | None) -> dict[int, int]:
    """The inputs a hint says were in model calls given up as stalled, and how often (see encode)."""
    return _parse(metadata, committed)[1]


def decode_died(metadata: str | None, committed: int | None) -> dict[int, tuple[int, int]]:
    """The inputs a hint says a pod's model process died in calls with: (deaths, of them alone)."""
    return _parse(metadata, committed)[2]


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
        tracker.note_group_committed(tp, committed)
        offsets, stalled, died = _parse(metadata, committed)
        if offsets or stalled or died:
            tracker.skip_delivered_from(tp, committed, offsets, stalled, died)
            if offsets and tracker.delivered_hints:
                skipped[f"{tp.topic}[{tp.partition}]"] = len(offsets)
    return skipped
