"""TransactionalCommitter at shutdown: an abort of the last transaction ends the drain at once, and an
abort just before it is rewound while the drain waits (no waiting out TAGSTREAM_DRAIN_TIMEOUT_S)."""

from __future__ import annotations

import threading
import time

import pytest
from kafka.structs import TopicPartition
from worker_fakes import FakeConsumer

from worker.errors import BrokerError, Failure
from worker.offsets import OffsetTracker
from worker.telemetry import Metrics
from worker.transactions import Barrier, TransactionalCommitter

TP = TopicPartition("in", 0)


class TxnProducer:
    """The transactional calls of a ProducerClient, counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, positions, group_metadata) -> None:
        self.calls.append("offsets")

    def commit_transaction(self) -> None:
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")


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

    def drain() -> None:  # the consumer thread, past its drain loop: waiting for the last commit
        try:
            committer.commit_now(timeout_s=10)
        except BaseException as exc:
            errors.append(exc)

    waiting = threading.Thread(target=drain)
    waiting.start()
    started = time.monotonic()
    committer.request_abort("partitions revoked")
    assert committer.abort_if_requested()  # the sink, between outputs: returns once rewound
    assert consumer.seeks == [(TP, 10)]
    assert committer.commit(handoff.barriers[-1], flush=lambda: True)
    waiting.join(10)
    assert not waiting.is_alive() and errors == []
    assert time.monotonic() - started < 2.0
    assert producer.calls == ["begin", "abort", "begin", "commit"]  # nothing after the rewind to commit
