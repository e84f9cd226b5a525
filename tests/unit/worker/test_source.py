"""The consumer stage with a fake consumer: ingest, tokenization per poll, backpressure, rebalance."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from kafka.structs import TopicPartition
from worker_fakes import FakeConsumer, Record

from worker.committer import Committer
from worker.errors import Failure, WorkerError
from worker.events import ParseConfig
from worker.handoff import InputHandoff
from worker.offsets import OffsetTracker
from worker.source import Source
from worker.telemetry import Health, Metrics

TP0, TP1 = TopicPartition("in", 0), TopicPartition("in", 1)


class CountingRunner:
    """Stands in for ModelRunner.tokenize: one id per word, and counts the calls."""

    version = "v1"
    tokenizer_key = "tok1"

    def __init__(self) -> None:
        self.calls = 0

    def tokenize(self, texts):
        self.calls += 1
        return [[1] * len(t.split()) for t in texts]


def make_source(capacity=100, grace=0.0):
    consumer = FakeConsumer([TP0, TP1])
    tracker = OffsetTracker()
    tracker.assign([TP0, TP1])
    handoff: InputHandoff = InputHandoff(capacity)
    runner = CountingRunner()
    metrics = Metrics()
    source = Source(
        consumer, topics=["in"], pattern=None, parse_config=ParseConfig(), tracker=tracker,
        committer=Committer(consumer, tracker, interval_s=0.0), handoff=handoff, current_runner=lambda: runner,
        metrics=metrics, health=Health(), revoke_grace_s=grace,
    )
    return source, consumer, tracker, handoff, runner, metrics


def records(tp, start, n, bad=()):
    out = []
    for i in range(start, start + n):
        value = b"{broken" if i in bad else json.dumps({"id": f"e{i}", "text": "a b c"}).encode()
        out.append(Record(tp.topic, tp.partition, i, value))
    return out


def run_once(source):
    stop = threading.Event()
    consumer = source._consumer

    def poll_then_stop(*a, **k):
        stop.set()
        return FakeConsumer.poll(consumer, *a, **k)

    consumer.poll = poll_then_stop
    source.run(stop)
    del consumer.poll


def test_one_tokenizer_call_per_poll():
    """A poll's records are parsed, tracked and tokenized in one tokenizer call."""
    source, consumer, tracker, handoff, runner, metrics = make_source()
    consumer.polls.append({TP0: records(TP0, 0, 5), TP1: records(TP1, 0, 4)})
    run_once(source)
    events, letters, *_ = handoff.take(0)
    assert len(events) == 9 and letters == []
    assert runner.calls == 1
    assert all(e.token_ids == [1, 1, 1] and e.tokenizer_key == "tok1" for e in events)
    assert tracker.in_flight() == 9
    assert metrics.value("tagstream_events_in_total", {"topic": "in"}) == 9


def test_bad_records_are_handed_over_as_dead_letters():
    """Malformed records travel as dead letters, still tracked so their offsets are committed later."""
    source, consumer, tracker, handoff, _, _ = make_source()
    consumer.polls.append({TP0: records(TP0, 0, 4, bad={1, 3})})
    run_once(source)
    events, letters, *_ = handoff.take(0)
    assert [e.offset for e in events] == [0, 2]
    assert [(d.offset, d.reason.label) for d in letters] == [(1, "invalid_json"), (3, "invalid_json")]
    assert tracker.in_flight() == 4


class PickyRunner(CountingRunner):
    """A tokenizer that raises on any text holding ``poison`` (or on every text)."""

    def __init__(self, poison: str | None) -> None:
        super().__init__()
        self.poison = poison

    def tokenize(self, texts):
        if self.poison is None or any(self.poison in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return super().tokenize(texts)


def test_a_text_the_tokenizer_cannot_take_is_dead_lettered_and_the_rest_of_the_poll_goes_on():
    """The tokenizer raising on a poll's texts retries them one by one: the one that fails alone becomes an
    inference_failed dead letter (its id and text), the others are handed on tokenized; nothing stops."""
    source, consumer, tracker, handoff, _, metrics = make_source()
    runner = PickyRunner("poison")
    source._current_runner = lambda: runner
    batch = records(TP0, 0, 4)
    batch[2] = Record("in", 0, 2, json.dumps({"id": "e2", "text": "a poison c"}).encode())
    consumer.polls.append({TP0: batch})
    run_once(source)
    events, letters, *_ = handoff.take(0)
    assert [e.offset for e in events] == [0, 1, 3] and all(e.token_ids == [1, 1, 1] for e in events)
    [letter] = letters
    assert (letter.offset, letter.reason.label) == (2, "inference_failed") and "TypeError" in letter.detail
    assert json.loads(letter.value) == {"id": "e2", "text": "a poison c"}
    assert tracker.in_flight() == 4  # the dead letter's offset is committed once it is published
    assert metrics.value("tagstream_failures_total", {"kind": "batch_failed"}) == 1


def test_a_tokenizer_that_fails_on_every_text_alone_too_stops_the_worker():
    """When no text of the poll tokenizes, alone either, the tokenizer is broken: model_failed, not dead letters."""
    source, consumer, *_ = make_source()
    runner = PickyRunner(None)
    source._current_runner = lambda: runner
    consumer.polls.append({TP0: records(TP0, 0, 3)})
    with pytest.raises(WorkerError, match="every text") as caught:
        run_once(source)
    assert caught.value.failure is Failure.MODEL_FAILED


def test_backpressure_pauses_and_resumes():
    """Past capacity every partition is paused; below half of it they resume; polling goes on."""
    source, consumer, _, handoff, _, metrics = make_source(capacity=10)
    consumer.polls.append({TP0: records(TP0, 0, 12)})
    run_once(source)
    assert consumer.paused() == {TP0, TP1}
    assert metrics.value("tagstream_consumer_paused") == 1
    handoff.take(0)
    handoff.release(6)  # 6 pending: still above the resume mark (5)
    run_once(source)
    assert consumer.paused() == {TP0, TP1}
    handoff.release(2)  # 4 pending
    run_once(source)
    assert consumer.paused() == set()
    assert metrics.value("tagstream_consumer_paused") == 0


def test_revocation_commits_acknowledged_and_drops_the_rest():
    """On revocation the acknowledged prefix is committed and unfinished work is left for redelivery."""
    source, consumer, tracker, _, _, _ = make_source(grace=0.0)
    epoch = tracker.track(TP0, [0, 1, 2])
    tracker.ack(TP0, 0, epoch)
    tracker.ack(TP0, 1, epoch)
    asyncio.run(source.on_revoked({TP0}, sleep=None))
    assert consumer.commits[-1][TP0] == 2
    assert tracker.epoch(TP0) is None and not tracker.is_current(TP0, epoch)


def test_revocation_waits_for_in_flight_work():
    """With a grace period, revocation waits until in-flight inputs are acknowledged, then commits them."""
    source, consumer, tracker, _, _, _ = make_source(grace=5.0)
    epoch = tracker.track(TP0, [0, 1])

    async def sleep_and_ack(_delay):
        tracker.ack(TP0, 0, epoch)
        tracker.ack(TP0, 1, epoch)

    asyncio.run(source.on_revoked({TP0}, sleep=sleep_and_ack))
    assert consumer.commits[-1][TP0] == 2


def test_revocation_commits_past_every_published_result_though_batches_left_out_of_offset_order():
    """The batcher groups inputs by length, so a later input can be published while an earlier one
    still waits: the revocation runs the waiting ones up to the highest issued offset, drops the rest,
    and commits past every published result (none would be published again by the next owner)."""
    from worker.batcher import Batcher, BatchLimits

    source, consumer, tracker, handoff, _, _ = make_source(grace=5.0)
    words = [3, 9, 9, 3, 3, 9]  # the first batch, grown from offset 0 by length, takes 0, 3 and 4
    consumer.polls.append({TP0: [Record("in", 0, i, json.dumps({"id": f"e{i}", "text": "w " * n}).encode())
                                 for i, n in enumerate(words)]})
    run_once(source)
    events, *_ = handoff.take(0)
    batcher: Batcher = Batcher(BatchLimits(max_batch_size=3, max_batch_tokens=1000, max_wait_s=0.0))
    for event in events:
        batcher.add(event, event.n_tokens, 0.0)
    published: list[int] = []

    def run(batch):  # what the batcher thread and a model thread do with a batch
        tracker.issue(batch.items)
        for event in batch.items:
            if tracker.accepts(("in", 0), event.epoch, event.offset):
                published.append(event.offset)
                tracker.ack(TP0, event.offset, event.epoch)
            else:
                tracker.abandon(TP0, event.offset, event.epoch)

    first = batcher.next_batch(1.0)
    assert first is not None and [e.offset for e in first.items] == [0, 3, 4]
    run(first)

    async def batcher_reacts(_delay):  # the batcher thread notices the revocation while the listener waits
        for event in batcher.remove_if(lambda e: not tracker.accepts(("in", 0), e.epoch, e.offset)):
            tracker.abandon(TP0, event.offset, event.epoch)
        while (batch := batcher.next_batch(1.0, flush=True)) is not None:
            run(batch)

    asyncio.run(source.on_revoked({TP0}, sleep=batcher_reacts))
    assert sorted(published) == [0, 1, 2, 3, 4]  # 5, past every issued input, was dropped
    assert consumer.commits[-1][TP0] == 5


def test_drain_commits_and_stops_when_acknowledged():
    """drain pauses fetching, closes the hand-off, waits for acks and commits them."""
    import time

    source, consumer, tracker, handoff, _, _ = make_source()
    epoch = tracker.track(TP1, [0, 1])
    threading.Timer(0.05, lambda: (tracker.ack(TP1, 0, epoch), tracker.ack(TP1, 1, epoch))).start()
    left = source.drain(deadline=time.monotonic() + 5, downstream_done=lambda: False)
    assert left == 0
    assert consumer.paused() == {TP0, TP1}
    assert handoff.take(0)[2] is True
    assert consumer.commits[-1][TP1] == 2


def test_after_the_drain_the_revocation_closing_brings_does_not_wait_again():
    """Once the drain has waited (here until downstream finished, an input still unacknowledged), the
    revocation that closing the consumer brings commits the acknowledged prefix at once: nothing more
    will be acknowledged, and waiting its grace would run past drain_timeout_s."""
    import time

    source, consumer, tracker, _, _, _ = make_source(grace=5.0)
    epoch = tracker.track(TP0, [0, 1, 2])
    tracker.ack(TP0, 0, epoch)
    left = source.drain(deadline=time.monotonic() + 5, downstream_done=lambda: True)
    assert left == 2
    waits: list[float] = []

    async def record_wait(delay):
        waits.append(delay)

    asyncio.run(source.on_revoked({TP0}, sleep=record_wait))
    assert waits == []
    assert consumer.commits[-1][TP0] == 1


def test_partition_assigned_straight_back_resumes_at_the_dropped_inputs():
    """A partition revoked with unacknowledged inputs and assigned straight back is re-read from the
    first of them, and inputs already delivered are not run again."""
    source, consumer, tracker, handoff, _, _ = make_source(grace=0.0)
    epoch = tracker.track(TP0, [0, 1, 2, 3])
    tracker.ack(TP0, 0, epoch)
    tracker.ack(TP0, 2, epoch)  # delivered out of order, past a gap at 1
    asyncio.run(source.on_revoked({TP0}, sleep=None))
    source.on_assigned({TP0, TP1})
    assert consumer.seeks == [(TP0, 1)]
    consumer.polls.append({TP0: records(TP0, 1, 3)})
    run_once(source)
    events, *_ = handoff.take(0)
    assert [e.offset for e in events] == [1, 3]  # 2 already has its result
    new_epoch = tracker.epoch(TP0)
    tracker.ack(TP0, 1, new_epoch)
    tracker.ack(TP0, 3, new_epoch)
    assert tracker.committable() == {TP0: 4}
    source.on_assigned({TP0})  # a later assignment does not rewind again
    assert consumer.seeks == [(TP0, 1)]


def test_records_read_again_are_counted_in_events_in_once():
    """A partition re-read after a rebalance does not count its records in events_in a second time."""
    source, consumer, _tracker, _handoff, _, metrics = make_source(grace=0.0)
    consumer.polls.append({TP0: records(TP0, 0, 5)})
    run_once(source)
    asyncio.run(source.on_revoked({TP0}, sleep=None))  # nothing acknowledged: all five are dropped
    source.on_assigned({TP0})
    consumer.polls.append({TP0: records(TP0, 0, 7)})  # re-read 0-4, then two new ones
    run_once(source)
    assert metrics.value("tagstream_events_in_total", {"topic": "in"}) == 7


def _read_and_commit(source, consumer, tracker, handoff, start, n):
    consumer.polls.append({TP0: records(TP0, start, n)})
    run_once(source)
    events, *_ = handoff.take(0)
    for e in events:
        tracker.ack(TP0, e.offset, e.epoch)
    source._committer.commit_now()


def test_a_log_that_starts_over_under_the_same_assignment_counts_its_records_in_events_in():
    """librdkafka resets to offset 0 of an input topic deleted and created again, with no rebalance: those
    records are new (a re-read never starts below the committed position), so they count in events_in, and
    the partition's committed position follows the new log."""
    source, consumer, tracker, handoff, _, metrics = make_source()
    _read_and_commit(source, consumer, tracker, handoff, 0, 5)
    assert tracker.last_commit(TP0) == 5
    _read_and_commit(source, consumer, tracker, handoff, 0, 3)  # the new log's first three records
    assert metrics.value("tagstream_events_in_total", {"topic": "in"}) == 8
    assert tracker.last_commit(TP0) == 3


def test_inputs_deleted_from_a_log_that_started_over_are_counted_against_the_new_log():
    """After a start-over, deletion gaps are judged by the new log's offsets: offset 3 deleted before it was
    read (the log starts at 4) counts, where the old log's expectation (5) would have hidden it."""
    source, consumer, tracker, handoff, _, metrics = make_source()
    _read_and_commit(source, consumer, tracker, handoff, 0, 5)
    _read_and_commit(source, consumer, tracker, handoff, 0, 3)  # the new log: 0-2
    consumer.starts = {TP0: 4}
    _read_and_commit(source, consumer, tracker, handoff, 4, 1)  # 3 was deleted unread
    assert metrics.value("tagstream_inputs_deleted_unread_total", {"topic": "in"}) == 1


def test_a_log_that_starts_over_forgets_the_old_logs_end_offset():
    """The old log's end offset is not kept for the lag of the new one: while the end offsets cannot be read
    (librdkafka still held partitions the new topic lacks, and the whole call failed), the lag showed the old
    end minus the new position, hundreds of records that did not exist."""
    import time

    from worker.errors import BrokerError, Failure

    source, consumer, tracker, handoff, _, metrics = make_source()
    consumer.ends = {TP0: 5, TP1: 0}
    _read_and_commit(source, consumer, tracker, handoff, 0, 5)
    source._lag_at = time.monotonic() - 60  # the refresh is due
    run_once(source)
    assert metrics.registry.get_sample_value("tagstream_consumer_lag", {"topic": "in", "partition": "0"}) == 0.0

    def unreadable(_tps):
        raise BrokerError("cannot read the end offsets: Unknown partition", Failure.KAFKA_TRANSIENT)

    consumer.end_offsets = unreadable
    _read_and_commit(source, consumer, tracker, handoff, 0, 2)  # the new log
    source._lag_at = time.monotonic() - 60
    run_once(source)
    assert metrics.registry.get_sample_value("tagstream_consumer_lag", {"topic": "in", "partition": "0"}) == 0.0


def test_a_log_that_starts_over_after_its_revocation_counts_its_records_in_events_in():
    """kafka-python revokes a deleted topic's partitions and assigns them again once it is created again:
    reading from below the position committed before the revocation is the new log, counted in events_in;
    a re-read from the committed position is not counted again."""
    source, consumer, tracker, handoff, _, metrics = make_source()
    _read_and_commit(source, consumer, tracker, handoff, 0, 5)
    asyncio.run(source.on_revoked({TP0}, sleep=None))
    source.on_assigned({TP0})
    _read_and_commit(source, consumer, tracker, handoff, 5, 2)  # resumes at the commit: two new records
    asyncio.run(source.on_revoked({TP0}, sleep=None))
    source.on_assigned({TP0})
    _read_and_commit(source, consumer, tracker, handoff, 0, 4)  # the topic deleted and created again
    assert metrics.value("tagstream_events_in_total", {"topic": "in"}) == 11


def test_lag_is_reported_for_every_assigned_partition_and_in_flight_returns_to_zero():
    """Each assigned partition has a lag series (0 when caught up), and in-flight is 0 once all is acknowledged."""
    import time

    source, consumer, tracker, handoff, _, metrics = make_source()
    consumer.ends = {TP0: 3, TP1: 10}
    consumer.group_committed = {TP1: 10}  # nothing read from TP1: the group is caught up there
    consumer.polls.append({TP0: records(TP0, 0, 3)})
    run_once(source)
    events, *_ = handoff.take(0)
    assert metrics.value("tagstream_in_flight_events") == 3
    epoch = tracker.epoch(TP0)
    for e in events:
        tracker.ack(TP0, e.offset, epoch)
    source._committer.commit_now()
    source._lag_at = time.monotonic() - 60  # the refresh is due
    run_once(source)
    lag = {
        p: metrics.registry.get_sample_value("tagstream_consumer_lag", {"topic": "in", "partition": p})
        for p in ("0", "1")
    }
    assert lag == {"0": 0.0, "1": 0.0}
    assert metrics.value("tagstream_in_flight_events") == 0


def test_partitions_revoked_but_still_in_the_clients_assignment_have_no_lag_and_cost_no_lookup():
    """kafka-python keeps the revoked partitions in its assignment until the group join completes, which
    lasts until every member has rejoined (45 s with a member SIGKILLed, seen from outside:
    bench/outsider/churn.sh). The lag refresh took them for partitions not read yet and asked the
    coordinator for their committed offsets: that request queued behind the held JoinGroup on the
    coordinator's connection, timed out after 30 s and took the connection down with it (errors in the
    log, the coordinator marked dead), and their lag series, just removed, came back for partitions the
    worker no longer held. Only the partitions the worker holds are refreshed."""
    import asyncio
    import time

    source, consumer, *_, metrics = make_source()
    consumer.ends = {TP0: 3, TP1: 10}
    consumer.group_committed = {TP0: 0, TP1: 10}
    consumer.polls.append({TP0: records(TP0, 0, 3)})
    run_once(source)
    source._lag_at = time.monotonic() - 60
    run_once(source)
    assert metrics.registry.get_sample_value("tagstream_consumer_lag", {"topic": "in", "partition": "1"}) == 0.0
    asyncio.run(source.on_revoked({TP0, TP1}, sleep=None))  # the client's assignment still lists both
    consumer.committed_asked.clear()
    source._lag_at = time.monotonic() - 60
    run_once(source)
    assert consumer.committed_asked == []
    for p in ("0", "1"):
        assert metrics.registry.get_sample_value("tagstream_consumer_lag", {"topic": "in", "partition": p}) is None


def test_lag_counts_from_the_read_position_past_what_no_poll_returns_once_nothing_is_in_flight():
    """Transaction markers and aborted records at a partition's end are skipped by the client: with nothing in
    flight the lag counts from its read position (0), not from after the last record read (which stayed 2);
    with an input in flight, from the committed offset as before."""
    import time

    source, consumer, tracker, handoff, _, metrics = make_source()
    consumer.ends = {TP0: 5, TP1: 0}
    consumer.positions = {TP0: 5}  # offsets 3 and 4: a marker and an aborted record, never returned
    consumer.polls.append({TP0: records(TP0, 0, 3)})
    run_once(source)
    events, *_ = handoff.take(0)
    epoch = tracker.epoch(TP0)

    def lag_after_refresh() -> float | None:
        source._lag_at = time.monotonic() - 60  # the refresh is due
        run_once(source)
        return metrics.registry.get_sample_value("tagstream_consumer_lag", {"topic": "in", "partition": "0"})

    for e in events[:2]:
        tracker.ack(TP0, e.offset, epoch)
    source._committer.commit_now()
    assert lag_after_refresh() == 3.0  # offset 2 in flight: counted from the commit (2)
    tracker.ack(TP0, events[2].offset, epoch)
    source._committer.commit_now()
    assert lag_after_refresh() == 0.0


def test_an_unreachable_coordinator_marks_the_broker_down_and_past_the_limit_stops_the_loop():
    """The poll loop tells health when the coordinator is gone, and raises BROKER_OUTAGE past the limit."""
    import pytest

    from worker.errors import BrokerError, Failure

    source, consumer, *_ = make_source()
    consumer.coordinator = False
    run_once(source)
    assert source._health.readiness()[1]["broker_reachable"] is False
    source._health.broker_outage_s = 0.0
    source._health._broker_down_since -= 1.0  # an outage that began a second ago
    with pytest.raises(BrokerError) as info:
        run_once(source)
    assert info.value.failure is Failure.BROKER_OUTAGE and "TAGSTREAM_BROKER_OUTAGE_S" in str(info.value)


def test_a_silent_broker_is_reported_down_since_it_last_answered():
    """The consumer tells how long its brokers have answered nothing (a frozen broker): the loop passes it
    on, so health dates the outage from the last answer."""
    source, consumer, *_ = make_source()
    consumer.coordinator, consumer.silent_s = False, 11.0
    run_once(source)
    assert source._health.broker_down_for() >= 11.0
    assert source._health.readiness()[1]["broker_reachable"] is False


def test_inputs_deleted_before_a_new_assignment_read_them_are_counted():
    """The group stopped at offset 10 and retention deleted 10..39: the first poll after the assignment starts at
    40. The loop judges it against the group's committed offset (10) in the same turn."""
    source, consumer, _tracker, handoff, _, metrics = make_source()
    source.on_assigned({TP0, TP1})
    consumer.group_committed = {TP0: 10}
    consumer.starts = {TP0: 40}
    consumer.polls.append({TP0: records(TP0, 40, 3)})
    run_once(source)
    assert metrics.value("tagstream_inputs_deleted_unread_total", {"topic": "in"}) == 30
    events, *_ = handoff.take(0)
    assert [e.offset for e in events] == [40, 41, 42]  # the records still there are labelled as usual


def test_inputs_of_a_swapped_out_tokenizer_are_tokenized_again_and_a_text_the_new_one_rejects_is_dead_lettered():
    """What the model thread does after a bundle swap that changed the tokenizer (worker/model_stage.py): the new
    tokenizer's ids and key for every input, and a text it rejects becomes an inference_failed dead letter
    instead of stopping the worker."""
    from worker.events import Event
    from worker.source import tokenize_events

    class NewTokenizer:
        tokenizer_key = "tok2"

        def tokenize(self, texts):
            if any("\ufffe" in t for t in texts):
                raise TypeError("TextEncodeInput must be Union[...]")
            return [[7] * len(t.split()) for t in texts]

    def event(offset, text):
        return Event(topic="in", partition=0, offset=offset, timestamp_ms=0, key=None, headers=[],
                     event_id=f"e{offset}", text=text, received=0.0, epoch=1, token_ids=[1], tokenizer_key="tok1")

    metrics = Metrics()
    events = [event(0, "a b"), event(1, "bad \ufffe text"), event(2, "c d e")]
    kept, letters = tokenize_events(NewTokenizer(), events, metrics)
    assert [e.offset for e in kept] == [0, 2]
    assert [(e.token_ids, e.tokenizer_key) for e in kept] == [([7, 7], "tok2"), ([7, 7, 7], "tok2")]
    assert [(x.offset, x.reason) for x in letters] == [(1, Failure.INFERENCE_FAILED)]
    with pytest.raises(WorkerError) as failed:  # every text rejected alone: the tokenizer is broken
        tokenize_events(NewTokenizer(), [event(3, "\ufffe"), event(4, "x \ufffe")], metrics)
    assert failed.value.failure is Failure.MODEL_FAILED


def test_the_age_of_what_a_lagging_worker_reads_is_reported_and_is_0_when_caught_up_or_not_reading():
    """tagstream_consumer_lag_seconds: while a partition has lag and the worker reads it, the age of its last record
    read (written 2 h ago here); 0 once caught up, and 0 when nothing was read there for two refreshes (a lag of
    trailing markers on an idle topic must not age for ever)."""
    import time

    from worker.source import LAG_INTERVAL_S

    source, consumer, tracker, handoff, _, metrics = make_source()
    written = int((time.time() - 7200) * 1000)
    consumer.ends = {TP0: 1000, TP1: 0}
    consumer.polls.append({TP0: [Record("in", 0, i, json.dumps({"id": f"e{i}", "text": "a b"}).encode(),
                                        timestamp=written) for i in range(3)]})

    def age_after_refresh() -> float | None:
        source._lag_at = time.monotonic() - 60  # the refresh is due
        run_once(source)
        return metrics.registry.get_sample_value("tagstream_consumer_lag_seconds", {"topic": "in", "partition": "0"})

    assert 7195 < age_after_refresh() < 7300  # 997 records behind, reading records written 2 h ago
    source._last_read[TP0] = (time.monotonic() - 3 * LAG_INTERVAL_S, written)
    assert age_after_refresh() == 0.0  # lag, but nothing read there for two refreshes
    events, *_ = handoff.take(0)
    for e in events:
        tracker.ack(TP0, e.offset, tracker.epoch(TP0))
    source._committer.commit_now()
    consumer.ends = {TP0: 3, TP1: 0}
    source._last_read[TP0] = (time.monotonic(), written)
    assert age_after_refresh() == 0.0  # caught up
