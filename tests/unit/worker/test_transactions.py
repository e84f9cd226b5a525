"""TransactionalCommitter at shutdown: an abort of the last transaction ends the drain at once, and an
abort just before it is rewound while the drain waits (no waiting out TAGSTREAM_DRAIN_TIMEOUT_S)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest
from kafka.structs import TopicPartition
from worker_fakes import FakeConsumer

from worker.delivered_hints import decode, decode_stalled
from worker.errors import BrokerError, Failure
from worker.offsets import OffsetTracker
from worker.telemetry import Metrics
from worker.transactions import Barrier, TransactionalCommitter

TP = TopicPartition("in", 0)


class TxnProducer:
    """The transactional calls of a ProducerClient, counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.offsets: list[tuple[dict, dict | None]] = []  # (positions, metadata) per send_offsets

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, positions, group_metadata, metadata=None) -> None:
        self.calls.append("offsets")
        self.offsets.append((dict(positions), metadata))

    def commit_transaction(self) -> None:
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")


@dataclass
class Item:
    topic: str
    partition: int
    offset: int
    epoch: int


class Handoff:
    def __init__(self) -> None:
        self.barriers: list[Barrier] = []

    def put_barrier(self, barrier: Barrier) -> None:
        self.barriers.append(barrier)


class Consumer(FakeConsumer):
    def group_metadata(self):
        return None


def committer_with_work() -> tuple[TransactionalCommitter, TxnProducer, Consumer, Handoff]:
    """A committer in an open transaction over inputs 10-14 of one partition, none committed yet."""
    consumer, producer, tracker, handoff = Consumer([TP]), TxnProducer(), OffsetTracker(False), Handoff()
    tracker.assign([TP])
    tracker.track(TP, range(10, 15))
    committer = TransactionalCommitter(consumer, producer, tracker, Metrics(), interval_s=60)  # type: ignore[arg-type]
    committer.attach(handoff)
    committer.begin()
    committer.before_drain(handoff)
    return committer, producer, consumer, handoff


def draining(committer: TransactionalCommitter, errors: list[BaseException]) -> threading.Thread:
    """The consumer thread past its drain loop (a started thread): waits for the last commit, then
    would leave the group; what commit_now raised goes to ``errors``."""

    def drain() -> None:
        try:
            committer.commit_now(timeout_s=10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=drain)
    thread.start()
    return thread


def test_an_abort_at_the_final_barrier_ends_the_drain_at_once_naming_why():
    committer, producer, consumer, handoff = committer_with_work()
    committer.request_abort("a model call stalled")
    assert committer.commit(handoff.barriers[-1], flush=lambda: True) is False  # returns: no rewind waited for
    assert producer.calls == ["begin", "abort"]
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        committer.commit_now(timeout_s=10)
    assert time.monotonic() - started < 1.0
    assert caught.value.failure is Failure.FINAL_COMMIT_FAILED and "a model call stalled" in str(caught.value)
    assert consumer.seeks == []  # the next owner reads from the last commit: nothing is re-read here


def test_an_abort_just_before_the_final_barrier_is_rewound_while_the_drain_waits():
    committer, producer, consumer, handoff = committer_with_work()
    errors: list[BaseException] = []
    waiting = draining(committer, errors)
    started = time.monotonic()
    committer.request_abort("partitions revoked")
    assert committer.abort_if_requested()  # the sink, between outputs: returns once rewound
    assert consumer.seeks == [(TP, 10)]
    assert committer.commit(handoff.barriers[-1], flush=lambda: True)
    waiting.join(10)
    assert not waiting.is_alive() and errors == []
    assert time.monotonic() - started < 2.0
    assert producer.calls == ["begin", "abort", "begin", "commit"]  # nothing after the rewind to commit


def test_inputs_of_a_stalled_call_are_counted_in_a_transaction_of_their_own_after_the_final_abort():
    """Exactly-once aborts its final transaction when a model call stalls; the given-up inputs are
    then counted in one more transaction that holds no output and commits the last committed
    position again (nothing past it is skipped), with the counts in the offset's metadata."""
    committer, producer, _consumer, handoff = committer_with_work()
    tracker = committer._tracker
    tracker.mark_committed({TP: 10})  # the last transaction committed up to 10
    tracker.mark_stalled([Item(TP.topic, TP.partition, o, tracker.epoch(TP)) for o in (11, 13)])
    committer.request_abort("a model call stalled")
    assert committer.commit(handoff.barriers[-1], flush=lambda: True) is False
    assert producer.calls == ["begin", "abort", "begin", "offsets", "commit"]
    positions, metadata = producer.offsets[-1]
    assert positions == {TP: 10}
    assert decode(metadata[TP], 10) == set() and decode_stalled(metadata[TP], 10) == {11: 1, 13: 1}
    with pytest.raises(BrokerError):  # the worker still exits non-zero: its last transaction was aborted
        committer.commit_now(timeout_s=10)


def test_the_drain_does_not_leave_the_group_before_the_stalled_counts_are_committed():
    """The consumer thread's commit_now (after which the consumer leaves the group) returns only once
    the counts' transaction is done: a member that has left cannot commit offsets (UnknownMemberId),
    and the counts would be lost, so the next pod hangs on the same inputs again."""
    committer, producer, _consumer, handoff = committer_with_work()
    tracker = committer._tracker
    tracker.mark_committed({TP: 10})
    tracker.mark_stalled([Item(TP.topic, TP.partition, 12, tracker.epoch(TP))])
    counting, done = threading.Event(), threading.Event()
    real = producer.commit_transaction

    def slow_commit() -> None:  # the counts' commit, in flight at the broker
        counting.set()
        assert done.wait(10)
        real()

    producer.commit_transaction = slow_commit  # type: ignore[method-assign]
    committer.request_abort("a model call stalled")
    sink = threading.Thread(target=committer.commit, args=(handoff.barriers[-1], lambda: True))
    sink.start()
    assert counting.wait(10)
    left: list[BaseException] = []
    consumer_thread = draining(committer, left)
    consumer_thread.join(0.5)
    assert consumer_thread.is_alive()  # still a member while the counts commit
    done.set()
    sink.join(10)
    consumer_thread.join(10)
    assert producer.calls[-3:] == ["begin", "offsets", "commit"]
    assert len(left) == 1 and isinstance(left[0], BrokerError)  # the last transaction was still aborted


def test_an_abort_for_a_revocation_commits_the_stalled_counts_before_the_partitions_can_move():
    """Counts not committed yet (heard from the model process as a rebalance began) are committed in
    a transaction of their own right after the abort, while this member still holds the partition:
    once the rebalance moves it, only the next owner could, and it never heard them."""
    committer, producer, _consumer, _handoff = committer_with_work()
    tracker = committer._tracker
    tracker.mark_committed({TP: 10})
    assert tracker.mark_stalled_at([(TP.topic, TP.partition, 12)]) == 1
    errors: list[BaseException] = []

    def revoking() -> None:  # the consumer thread, in on_revoked: waits for the abort, then rewinds
        try:
            asyncio.run(committer.settle({TP}, asyncio.sleep, time.monotonic() + 10))
        except BaseException as exc:
            errors.append(exc)

    consumer_thread = threading.Thread(target=revoking)
    consumer_thread.start()
    deadline = time.monotonic() + 10
    while not committer.abort_if_requested():  # the sink, between outputs
        assert time.monotonic() < deadline
        time.sleep(0.01)
    consumer_thread.join(10)
    assert errors == []
    assert producer.calls == ["begin", "abort", "begin", "offsets", "commit", "begin"]
    positions, metadata = producer.offsets[-1]
    assert positions == {TP: 10} and decode_stalled(metadata[TP], 10) == {12: 1}
    assert tracker.stalled_positions() == {}  # committed: the final commit need not carry them again


def test_an_exactly_once_commit_carries_the_stalled_counts_it_read_but_names_no_delivered_output():
    """Counts read from a hint ride on every commit until the inputs pass the position; delivered
    outputs are never named (exactly-once publishes nothing past its commit)."""
    tracker = OffsetTracker(False)
    tracker.assign([TP])
    tracker.skip_delivered_from(TP, 10, {11, 12}, {13: 1})
    assert tracker.delivered(TP, first=10) == set()  # an at-least-once hint's outputs are not skipped
    tracker.track(TP, range(10, 15))
    for offset in (10, 11, 12):
        tracker.ack(TP, offset, tracker.epoch(TP))
    positions = tracker.committable()
    assert positions == {TP: 13}
    hint = tracker.hints(positions)[TP]
    assert decode(hint, 13) == set() and decode_stalled(hint, 13) == {13: 1}


def test_stalled_counts_of_a_rewound_partition_ride_on_the_next_commit_at_its_last_position():
    """An abort before the final barrier rewinds the partition (nothing of it is tracked past the
    commit): the counts still reach the next transaction's offsets, at the last committed position."""
    tracker = OffsetTracker(False)
    consumer, producer, handoff = Consumer([TP]), TxnProducer(), Handoff()
    tracker.assign([TP])
    tracker.track(TP, range(10, 15))
    tracker.mark_committed({TP: 10})
    tracker.mark_stalled([Item(TP.topic, TP.partition, 12, tracker.epoch(TP))])
    assert tracker.restart_from_committed([TP]) == {TP: 10}
    committer = TransactionalCommitter(consumer, producer, tracker, Metrics(), interval_s=60)  # type: ignore[arg-type]
    committer.attach(handoff)
    committer.begin()
    committer.before_drain(handoff)
    assert committer.commit(handoff.barriers[-1], flush=lambda: True) is True
    positions, metadata = producer.offsets[-1]
    assert positions == {TP: 10} and decode_stalled(metadata[TP], 10) == {12: 1}
    assert tracker.stalled_positions() == {}  # committed: not sent again


def test_stalled_counts_of_a_partition_read_nothing_of_yet_are_committed_at_the_groups_position():
    """A rebalance just before the stall: the partition now held has nothing read in this assignment
    (no position of its own), so its counts go at the group's commit read when it was assigned."""
    tracker = OffsetTracker(False)
    tracker.assign([TP])
    tracker.mark_stalled_at([(TP.topic, TP.partition, 12)])
    assert tracker.stalled_positions() == {}  # no position known: nothing to commit at
    tracker.note_group_committed(TP, 10)
    assert tracker.stalled_positions() == {TP: 10}
    assert decode_stalled(tracker.hints({TP: 10})[TP], 10) == {12: 1}
    tracker.restart_from_committed([TP])  # an abort's rewind keeps both
    assert tracker.stalled_positions() == {TP: 10}
