"""Offset tracking: only the contiguous acknowledged prefix is ever committable."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from kafka.structs import TopicPartition

from worker.committer import Committer
from worker.offsets import OffsetTracker

TP = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def tracker_with(*tps: TopicPartition) -> OffsetTracker:
    tracker = OffsetTracker()
    tracker.assign(tps or [TP])
    return tracker


def test_nothing_committable_before_acks():
    """Tracked but unacknowledged offsets are never committable."""
    tracker = tracker_with(TP)
    tracker.track(TP, [0, 1, 2])
    assert tracker.committable() == {}
    assert tracker.in_flight() == 3


def test_commits_only_the_contiguous_prefix():
    """An ack past a gap does not move the position; filling the gap does."""
    tracker = tracker_with(TP)
    epoch = tracker.track(TP, [0, 1, 2, 3])
    tracker.ack(TP, 1, epoch)
    tracker.ack(TP, 2, epoch)
    assert tracker.committable() == {}  # 0 is not acknowledged yet
    tracker.ack(TP, 0, epoch)
    assert tracker.committable() == {TP: 3}  # next to read is 3
    tracker.ack(TP, 3, epoch)
    assert tracker.committable() == {TP: 4}


def test_offsets_with_gaps_in_numbering():
    """Offsets need not be consecutive (compaction, transaction markers): the position follows them."""
    tracker = tracker_with(TP)
    epoch = tracker.track(TP, [10, 15, 16])
    tracker.ack(TP, 10, epoch)
    assert tracker.committable() == {TP: 15}
    tracker.ack(TP, 16, epoch)
    tracker.ack(TP, 15, epoch)
    assert tracker.committable() == {TP: 17}


def test_partitions_are_independent():
    """A stuck partition does not hold back another's commits."""
    tracker = tracker_with(TP, TP1)
    e0 = tracker.track(TP, [0, 1])
    e1 = tracker.track(TP1, [0, 1])
    tracker.ack(TP1, 0, e1)
    tracker.ack(TP1, 1, e1)
    tracker.ack(TP, 1, e0)
    assert tracker.committable() == {TP1: 2}


def test_committed_positions_are_not_repeated():
    """After mark_committed the same position is not offered again."""
    tracker = tracker_with(TP)
    epoch = tracker.track(TP, [0])
    tracker.ack(TP, 0, epoch)
    positions = tracker.committable()
    tracker.mark_committed(positions)
    assert tracker.committable() == {}


def test_revoked_partition_drops_unacked_and_ignores_late_acks():
    """After revocation a partition is forgotten; late acks of its old epoch change nothing."""
    tracker = tracker_with(TP)
    old = tracker.track(TP, [0, 1, 2])
    tracker.ack(TP, 0, old)
    assert tracker.revoke([TP]) == 2  # 1 and 2 will be redelivered to the next owner
    assert tracker.committable() == {}
    tracker.assign([TP])
    new = tracker.epoch(TP)
    assert new is not None and new > old
    assert not tracker.is_current(TP, old)
    tracker.track(TP, [1, 2])  # redelivered from the committed position
    tracker.ack(TP, 1, old)  # a late ack from before the rebalance
    tracker.ack(TP, 2, old)
    assert tracker.committable() == {}
    tracker.ack(TP, 1, new)
    assert tracker.committable() == {TP: 2}


def test_acks_from_another_thread():
    """Acks arriving concurrently from another thread all count."""
    tracker = tracker_with(TP)
    epoch = tracker.track(TP, range(10_000))

    def ack_all():
        for offset in range(10_000):
            tracker.ack(TP, offset, epoch)

    thread = threading.Thread(target=ack_all)
    thread.start()
    while thread.is_alive():
        tracker.committable()  # computes while acks pour in
    thread.join()
    assert tracker.committable() == {TP: 10_000}
    assert tracker.in_flight() == 0


class FakeConsumer:
    """The commit half of a ConsumerClient (worker/kafka/base.py)."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.sync: list[dict] = []
        self.async_: list[dict] = []
        self.metadata: list[dict] = []  # each commit's metadata, in order
        self.fail = fail

    def commit(self, positions, timeout_s, metadata=None):
        if self.fail:
            raise self.fail
        self.sync.append(positions)
        self.metadata.append(metadata)

    def commit_async(self, positions, on_done, metadata=None):
        self.async_.append(positions)
        self.metadata.append(metadata)
        on_done(self.fail)

    async def commit_in_rebalance(self, positions, metadata=None):
        self.async_.append(positions)
        self.metadata.append(metadata)


def test_committer_commits_on_its_interval_only():
    """commit_if_due commits asynchronously once per interval, the acknowledged positions."""
    now = [0.0]
    tracker = tracker_with(TP)
    consumer = FakeConsumer()
    committer = Committer(consumer, tracker, interval_s=1.0, clock=lambda: now[0])
    epoch = tracker.track(TP, [0, 1])
    tracker.ack(TP, 0, epoch)
    committer.commit_if_due()
    assert consumer.async_ == []  # not due yet
    now[0] = 1.0
    committer.commit_if_due()
    assert consumer.async_ == [{TP: 1}]
    now[0] = 1.5
    tracker.ack(TP, 1, epoch)
    committer.commit_if_due()
    assert len(consumer.async_) == 1  # next interval not reached


def test_no_new_commit_while_one_is_unanswered():
    """While an asynchronous commit has no result (no coordinator answers), the committer sends no
    other: they piled up in librdkafka during an outage. Its result frees the next interval's
    commit, which carries every offset acknowledged meanwhile; one unanswered past
    PENDING_COMMIT_LIMIT_S holds nothing back any more."""
    from worker.committer import PENDING_COMMIT_LIMIT_S

    class SilentConsumer(FakeConsumer):
        def commit_async(self, positions, on_done, metadata=None):
            self.async_.append((positions, on_done))

    now = [0.0]
    tracker = tracker_with(TP)
    consumer = SilentConsumer()
    committer = Committer(consumer, tracker, interval_s=1.0, clock=lambda: now[0])
    epoch = tracker.track(TP, [0, 1, 2, 3])
    tracker.ack(TP, 0, epoch)
    now[0] = 1.0
    committer.commit_if_due()
    tracker.ack(TP, 1, epoch)
    for second in (2.0, 3.0, 4.0):
        now[0] = second
        committer.commit_if_due()
    assert [positions for positions, _ in consumer.async_] == [{TP: 1}]  # the first is unanswered
    consumer.async_[0][1](None)  # its result comes
    now[0] = 5.0
    committer.commit_if_due()
    assert [positions for positions, _ in consumer.async_] == [{TP: 1}, {TP: 2}]
    tracker.ack(TP, 2, epoch)
    now[0] = 5.0 + PENDING_COMMIT_LIMIT_S - 1
    committer.commit_if_due()
    assert len(consumer.async_) == 2  # the second is unanswered, within the limit
    now[0] = 5.0 + PENDING_COMMIT_LIMIT_S
    committer.commit_if_due()
    assert [positions for positions, _ in consumer.async_][-1] == {TP: 3}  # past it: sent anyway


def test_failed_async_commit_is_retried_next_interval():
    """A rejected commit is not marked committed, so the next interval sends it again."""
    from worker.errors import BrokerError, Failure

    now = [0.0]
    tracker = tracker_with(TP)
    results = []
    consumer = FakeConsumer(fail=BrokerError("rebalance", Failure.COMMIT_FAILED))
    committer = Committer(consumer, tracker, interval_s=1.0, clock=lambda: now[0],
                          on_result=lambda pos, err: results.append(err))
    epoch = tracker.track(TP, [0])
    tracker.ack(TP, 0, epoch)
    now[0] = 1.0
    committer.commit_if_due()
    consumer.fail = None
    now[0] = 2.0
    committer.commit_if_due()
    assert len(consumer.async_) == 2 and consumer.async_[0] == consumer.async_[1]
    assert isinstance(results[0], BrokerError) and results[1] is None


def test_commit_now_and_listener_commit():
    """commit_now commits synchronously; the listener variant awaits the async commit."""
    tracker = tracker_with(TP, TP1)
    consumer = FakeConsumer()
    committer = Committer(consumer, tracker, interval_s=1.0)
    e0 = tracker.track(TP, [5])
    e1 = tracker.track(TP1, [7])
    tracker.ack(TP, 5, e0)
    tracker.ack(TP1, 7, e1)
    assert asyncio.run(committer.commit_in_listener([TP1])) == {TP1: 8}
    assert committer.commit_now() == {TP: 6}
    assert consumer.sync == [{TP: 6}]
    assert tracker.committable() == {}


def test_revocation_drops_queued_work_and_waits_only_for_running_work():
    """After begin_revoke queued inputs past every issued one are not accepted; abandoned ones stop
    counting as in flight."""
    tracker = tracker_with(TP)
    epoch = tracker.track(TP, [0, 1, 2, 3])
    assert tracker.accepts(TP, epoch, 2)
    tracker.issue([_In(0, epoch), _In(1, epoch)])
    tracker.begin_revoke([TP])
    assert tracker.accepts(TP, epoch, 1)  # already issued: it finishes
    assert not tracker.accepts(TP, epoch, 2)
    tracker.ack(TP, 0, epoch)  # a result already with the producer still counts
    tracker.abandon(TP, 2, epoch)
    tracker.abandon(TP, 3, epoch)
    assert tracker.in_flight([TP]) == 1  # offset 1 is still being produced
    tracker.ack(TP, 1, epoch)
    assert tracker.in_flight([TP]) == 0
    assert tracker.committable() == {TP: 2}  # never past the abandoned offset 2
    assert tracker.revoke([TP]) == 2


@dataclass
class _In:
    """An input as issue() sees it (an Event or a DeadLetter)."""

    offset: int
    epoch: int
    topic: str = TP.topic
    partition: int = TP.partition


def test_revocation_finishes_queued_inputs_below_one_already_issued_so_its_commit_covers_every_output():
    """Batches leave out of offset order: at revocation, queued inputs below the highest issued offset
    still run (the commit then covers every published output), and only those past it are dropped."""
    tracker = tracker_with(TP)
    epoch = tracker.track(TP, range(8))
    tracker.issue([_In(0, epoch), _In(4, epoch), _In(5, epoch)])  # one batch of similar lengths
    for offset in (0, 4, 5):
        tracker.ack(TP, offset, epoch)
    tracker.begin_revoke([TP])
    assert [o for o in range(8) if tracker.accepts(TP, epoch, o)] == [0, 1, 2, 3, 4, 5]
    tracker.issue([_In(7, epoch)])  # issued after the revocation began: does not move the bound
    assert not tracker.accepts(TP, epoch, 7)
    assert tracker.in_flight([TP]) == 5  # 1, 2, 3 to run; 6, 7 not yet abandoned
    for offset in (6, 7):
        tracker.abandon(TP, offset, epoch)
    for offset in (1, 2, 3):
        tracker.ack(TP, offset, epoch)
    assert tracker.in_flight([TP]) == 0
    assert tracker.committable([TP]) == {TP: 6}  # past 4 and 5, whose results are published


def test_exactly_once_revocation_drops_every_queued_input():
    """Without finish_issued_on_revoke (exactly-once: the open transaction is aborted) a revocation
    accepts no queued input of the partition, whatever was issued."""
    tracker = OffsetTracker(finish_issued_on_revoke=False)
    tracker.assign([TP])
    epoch = tracker.track(TP, range(4))
    tracker.issue([_In(3, epoch)])
    tracker.begin_revoke([TP])
    assert not any(tracker.accepts(TP, epoch, o) for o in range(4))


def test_stale_epochs_are_not_accepted():
    """An input read under an older epoch of a partition is never accepted, issued or not."""
    tracker = tracker_with(TP)
    old = tracker.track(TP, [0])
    tracker.issue([_In(0, old)])
    tracker.revoke([TP])
    tracker.assign([TP])
    new = tracker.track(TP, [0])
    assert not tracker.accepts(TP, old, 0)
    assert tracker.accepts(TP, new, 0)
