"""Inputs the broker deleted before this worker read them: counted and logged, never silent.

A group that stops for longer than its input topic's ``retention.ms`` (or a worker that lags that
far, or an operator's ``kafka-delete-records.sh``) finds its next offset gone. The client then
resets to the earliest record still there (``TAGSTREAM_AUTO_OFFSET_RESET=earliest``) with no
error and no more than a log line of its own: the records in between are gone, and no commit,
dead letter or restart can bring them back. The worker did not lose them, but an operator has to
hear of it, so they are counted in ``tagstream_inputs_deleted_unread_total{topic}`` (alert
``TagstreamInputsDeletedUnread``) and logged as ``inputs_deleted_unread`` with the partition and
the offsets.

How they are found. Each partition's *expected* offset is the one after the last record read, or,
for the first records read after an assignment, where the group resumes (its committed offset, or
the position a rebalance rewound to). Records that start later leave a gap. Gaps are normal
(transaction markers, records of aborted transactions under read_committed, compaction), so a gap
counts only as far as the partition's log start offset has passed it:
``[expected, min(first read, log start))``. The log start offsets are asked for only when there
is a gap to judge, at most once a second; a new assignment's committed offsets are asked for at
its first poll, before the worker commits anything there itself.

Limits, by design:

- A group with nothing committed starts wherever the reset puts it: nothing is counted (it never
  had a claim on older records).
- Gap markers judged just after retention deleted the segment that held them count too: that
  takes a worker reading at the retention edge, where real loss is next to it.
- Deleted records are counted when the worker reaches them (its next read), not while it is
  still behind them; the lag gauge shows that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from worker.errors import BrokerError
from worker.kafka.base import ConsumerClient, TopicPartition
from worker.telemetry import Metrics, get_logger

log = get_logger("tagstream.worker.retention")

CHECK_INTERVAL_S = 1.0  # how often log start offsets may be asked for while gaps wait to be judged


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``[expected, first_read)`` of a partition that no poll returned."""

    tp: TopicPartition
    expected: int
    first_read: int


class DeletedInputWatch:
    """Finds the input records a partition lost to deletion before they were read (module docstring).

    ``read`` is called by the source thread for each partition's records of a poll, ``check`` once
    per turn of its loop; ``assigned`` and ``forget`` may come from the client's rebalance thread.
    """

    def __init__(
        self, consumer: ConsumerClient, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._consumer = consumer
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()  # the rebalance callbacks run on another thread
        self._next: dict[TopicPartition, int] = {}  # the offset after the last record read
        self._resume_at: dict[TopicPartition, int] = {}  # assigned and rewound: where reading resumes
        self._fresh: set[TopicPartition] = set()  # assigned, nothing read yet
        self._first_reads: dict[TopicPartition, int] = {}  # fresh, first offset read: resume point unknown
        self._gaps: list[Gap] = []
        self._checked_at = float("-inf")

    # -- rebalance callbacks ---------------------------------------------------------------------
    def assigned(self, partitions: Iterable[TopicPartition], rewound: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp in partitions:
                # The series exists from 0 before anything is counted: increase() in the alert
                # needs a sample before the first count.
                self._metrics.inputs_deleted_unread.labels(topic=tp.topic)
                self._next.pop(tp, None)
                self._first_reads.pop(tp, None)
                if tp in rewound:
                    self._resume_at[tp] = rewound[tp]
                else:
                    self._resume_at.pop(tp, None)
                self._fresh.add(tp)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what is known of ``partitions``: revoked, or their log started over."""
        with self._lock:
            for tp in partitions:
                self._next.pop(tp, None)
                self._resume_at.pop(tp, None)
                self._fresh.discard(tp)
                self._first_reads.pop(tp, None)

    # -- the source thread -----------------------------------------------------------------------
    def read(self, tp: TopicPartition, first: int, last: int) -> None:
        """A poll returned records ``first`` to ``last`` (offsets, in order) of ``tp``."""
        with self._lock:
            expected = self._next.get(tp)
            if expected is None and tp in self._fresh:
                self._fresh.discard(tp)
                expected = self._resume_at.pop(tp, None)
                if expected is None:
                    self._first_reads[tp] = first  # judged against the committed offset in check()
            if expected is not None and first > expected:
                self._gaps.append(Gap(tp, expected, first))
            self._next[tp] = max(last + 1, expected or 0)

    def check(self) -> int:
        """Judge what waits: new assignments against their committed offsets (now, before this
        worker commits there), gaps against the log start offsets (at most once a second).
        Returns the records found deleted."""
        if not self._first_reads and not self._gaps:  # the usual turn: nothing to judge (no lock needed to look)
            return 0
        with self._lock:
            first_reads, self._first_reads = self._first_reads, {}
        if first_reads:
            try:
                committed = self._consumer.committed(first_reads)
            except BrokerError as exc:  # cannot judge these: better unsaid than made up
                log.debug("deleted_inputs_unjudged", partitions=len(first_reads), error=str(exc))
                committed = {}
            with self._lock:
                self._gaps.extend(
                    Gap(tp, start, first) for tp, first in first_reads.items()
                    if (start := committed.get(tp)) is not None and first > start
                )
        now = self._clock()
        with self._lock:
            if not self._gaps or now - self._checked_at < CHECK_INTERVAL_S:
                return 0
            gaps, self._gaps = self._gaps, []
        self._checked_at = now
        try:
            starts = self._consumer.start_offsets({g.tp for g in gaps})
        except BrokerError as exc:
            log.debug("log_start_offsets_unavailable", error=str(exc))
            with self._lock:
                self._gaps = gaps + self._gaps  # judged at the next check
            return 0
        deleted = 0
        for gap in gaps:
            start = starts.get(gap.tp)
            if start is None:
                continue
            lost = min(gap.first_read, start) - gap.expected
            if lost <= 0:
                continue  # markers, aborted records, compaction: nothing deleted
            deleted += lost
            self._metrics.inputs_deleted_unread.labels(topic=gap.tp.topic).inc(lost)
            log.error(
                "inputs_deleted_unread", partition=f"{gap.tp.topic}[{gap.tp.partition}]", count=lost,
                first_missing=gap.expected, next_read=gap.first_read, log_start=start,
                hint="the broker deleted these input records before this group read them (retention.ms or"
                " retention.bytes of the input topic, or DeleteRecords); they cannot be labelled: give the"
                " topic more retention than the longest time the workers may be stopped or behind",
            )
        return deleted
