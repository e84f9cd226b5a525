"""Inputs deleted before they were read (worker/retention.py), with a fake consumer."""

from __future__ import annotations

from kafka.structs import TopicPartition
from worker_fakes import Clock, FakeConsumer

from worker.errors import BrokerError, Failure
from worker.retention import CHECK_INTERVAL_S, DeletedInputWatch
from worker.telemetry import Metrics

TP0, TP1 = TopicPartition("in", 0), TopicPartition("in", 1)


def make_watch():
    consumer = FakeConsumer([TP0, TP1])
    metrics = Metrics()
    clock = Clock()
    return DeletedInputWatch(consumer, metrics, clock), consumer, metrics, clock


def deleted(metrics: Metrics, topic: str = "in") -> float:
    return metrics.value("tagstream_inputs_deleted_unread_total", {"topic": topic})


def test_a_gap_the_log_start_has_passed_is_counted_up_to_the_log_start():
    watch, consumer, metrics, _ = make_watch()
    watch.read(TP0, 0, 9)
    consumer.starts[TP0] = 40  # retention deleted 10..39 while the worker was behind them
    watch.read(TP0, 40, 49)
    assert watch.check() == 30
    assert deleted(metrics) == 30


def test_gaps_of_markers_aborted_records_or_compaction_are_not_counted():
    watch, consumer, metrics, _ = make_watch()
    consumer.starts[TP0] = 0
    watch.read(TP0, 0, 9)
    watch.read(TP0, 11, 20)  # offset 10: a transaction marker
    watch.read(TP0, 30, 31)  # 21..29: an aborted transaction
    assert watch.check() == 0
    assert deleted(metrics) == 0
    assert consumer.start_offset_calls == 1


def test_only_the_part_of_a_gap_below_the_log_start_counts():
    watch, consumer, _metrics, _ = make_watch()
    watch.read(TP0, 0, 9)
    watch.read(TP0, 20, 29)  # 10..19 not returned: 10..14 deleted, 15..19 aborted records
    consumer.starts[TP0] = 15
    assert watch.check() == 5


def test_without_a_gap_the_broker_is_not_asked():
    watch, consumer, _, _ = make_watch()
    for start in range(0, 100, 10):
        watch.read(TP0, start, start + 9)
        assert watch.check() == 0
    assert consumer.start_offset_calls == 0


def test_log_start_offsets_are_asked_at_most_once_a_second():
    watch, consumer, metrics, clock = make_watch()
    consumer.starts[TP0] = 100
    watch.read(TP0, 0, 9)
    watch.read(TP0, 20, 29)
    assert watch.check() == 10
    watch.read(TP0, 40, 49)  # another gap at once: waits for the next second
    assert watch.check() == 0
    assert consumer.start_offset_calls == 1
    clock.now += CHECK_INTERVAL_S
    assert watch.check() == 10
    assert deleted(metrics) == 20


def test_a_new_assignment_is_judged_against_the_groups_committed_offset():
    watch, consumer, metrics, _ = make_watch()
    watch.assigned({TP0, TP1}, rewound={})
    consumer.group_committed = {TP0: 100, TP1: None}
    consumer.starts = {TP0: 250, TP1: 500}
    watch.read(TP0, 250, 300)  # the group stopped at 100; the client reset to the log start
    watch.read(TP1, 500, 510)  # nothing committed: started where the reset put it, nothing claimed
    assert watch.check() == 150
    assert deleted(metrics) == 150


def test_a_partition_rewound_at_its_assignment_is_judged_from_the_rewind_point():
    watch, consumer, _, _ = make_watch()
    watch.read(TP0, 0, 99)
    watch.assigned({TP0}, rewound={TP0: 60})  # assigned straight back: re-read from 60
    consumer.starts[TP0] = 0
    watch.read(TP0, 60, 99)
    assert watch.check() == 0
    assert consumer.group_committed == {}  # the rewind point is known: the group is not asked


def test_an_unanswered_broker_keeps_the_gaps_for_the_next_check():
    watch, consumer, metrics, clock = make_watch()
    watch.read(TP0, 0, 9)
    watch.read(TP0, 30, 39)

    def down(tps):
        raise BrokerError("no broker answered", Failure.BROKER_UNREACHABLE)

    consumer.start_offsets = down
    assert watch.check() == 0
    del consumer.start_offsets
    consumer.starts[TP0] = 30
    clock.now += CHECK_INTERVAL_S
    assert watch.check() == 20
    assert deleted(metrics) == 20
