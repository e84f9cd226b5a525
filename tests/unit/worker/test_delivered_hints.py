"""Delivered hints: outputs acknowledged past a committed position ride in the commit's metadata,
and the partition's next reader skips those inputs, only when it reads from that position."""

from __future__ import annotations

import threading

from kafka.structs import TopicPartition
from worker_fakes import FakeConsumer, Record

from worker.call_journal import CallJournal
from worker.committer import Committer
from worker.delivered_hints import (
    MAX_OFFSETS,
    PREFIX,
    decode,
    decode_died,
    decode_stalled,
    encode,
    read_hints,
)
from worker.errors import Failure
from worker.events import Event, ParseConfig
from worker.handoff import InputHandoff
from worker.offsets import OffsetTracker
from worker.source import Source
from worker.telemetry import Health, Metrics

TP = TopicPartition("in", 0)


# -- the format ----------------------------------------------------------------------------------
def test_a_hint_names_exactly_the_offsets_past_its_position_as_ranges():
    text = encode(100, [99, 100, 103, 104, 105, 107, 110, 111])
    assert text == f"{PREFIX} 100 3-5,7,10-11"  # 99 and 100 are not past the position
    assert decode(text, 100) == {103, 104, 105, 107, 110, 111}
    assert decode(text + "\x00", 100) == decode(text, 100)  # as a commit made by librdkafka reads back
    assert encode(100, [50, 100]) == "" and encode(7, []) == ""


def test_a_hint_too_long_keeps_the_ranges_nearest_its_position_and_invents_none():
    delivered = list(range(1001, 3000, 2))  # 1,000 single offsets: far past the size limit
    text = encode(1000, delivered, max_bytes=200)
    assert len(text) <= 200
    kept = decode(text, 1000)
    assert kept and kept <= set(delivered)
    assert sorted(kept) == delivered[: len(kept)]  # a prefix: the first re-read


def test_a_hint_is_used_only_when_it_is_ours_well_formed_and_written_with_that_commit():
    text = encode(100, [101, 102])
    assert decode(text, 101) == frozenset()  # another commit's position
    assert decode(text, None) == frozenset()
    for foreign in ("", "some other tool's note", f"{PREFIX} 100 x-2", f"{PREFIX} 100 0-3",
                    f"{PREFIX} 100 5-3", f"{PREFIX} 100", f"{PREFIX} 100 1-{MAX_OFFSETS + 1}"):
        assert decode(foreign, 100) == frozenset(), foreign


# -- the tracker and the committer ---------------------------------------------------------------
def stuck_partition(hints: bool) -> tuple[OffsetTracker, int]:
    """Offsets 0-9 read; all acknowledged but 2 (a stalled batch holds the position at 2)."""
    tracker = OffsetTracker(delivered_hints=hints)
    tracker.assign([TP])
    epoch = tracker.track(TP, range(10))
    for offset in (0, 1, 3, 4, 5):
        tracker.ack(TP, offset, epoch)
    return tracker, epoch


def first_commit(tracker: OffsetTracker) -> tuple[Committer, FakeConsumer, list[float]]:
    """A committer on a clock the test moves, after its first interval's commit."""
    now = [0.0]
    consumer = FakeConsumer([TP])
    committer = Committer(consumer, tracker, interval_s=1.0, clock=lambda: now[0])
    now[0] = 1.0
    committer.commit_if_due()
    return committer, consumer, now


def test_the_committer_names_the_outputs_past_a_held_position_and_commits_again_as_they_grow():
    tracker, epoch = stuck_partition(hints=True)
    committer, consumer, now = first_commit(tracker)
    assert consumer.commits == [{TP: 2}]
    assert decode(consumer.metadata[0][TP], 2) == {3, 4, 5}
    now[0] = 2.0
    committer.commit_if_due()
    assert len(consumer.commits) == 1  # nothing new past the position: no commit
    for offset in (6, 7):
        tracker.ack(TP, offset, epoch)
    now[0] = 3.0
    committer.commit_if_due()
    assert consumer.commits[-1] == {TP: 2}  # the same position, a longer hint
    assert decode(consumer.metadata[-1][TP], 2) == {3, 4, 5, 6, 7}


def test_without_hints_a_held_position_is_not_committed_again():
    tracker, epoch = stuck_partition(hints=False)
    committer, consumer, now = first_commit(tracker)
    tracker.ack(TP, 6, epoch)
    now[0] = 2.0
    committer.commit_if_due()
    assert consumer.commits == [{TP: 2}]


def test_the_next_reader_skips_the_named_inputs_only_when_it_reads_from_the_hints_position():
    for first, skipped in ((2, {3, 4, 5}), (0, set())):  # from elsewhere (a reset), nothing is skipped
        tracker = OffsetTracker(delivered_hints=True)
        tracker.assign([TP])
        consumer = FakeConsumer([TP])
        consumer.group_committed[TP] = 2
        consumer.group_metadata_stored[TP] = encode(2, [3, 4, 5])
        assert read_hints(consumer, tracker, [TP]) == {"in[0]": 3}
        assert tracker.delivered(TP, first) == skipped
        epoch = tracker.track(TP, range(first, 8))
        assert tracker.in_flight() == 8 - first - len(skipped)  # the skipped ones count as acknowledged
        for offset in set(range(first, 8)) - skipped:
            tracker.ack(TP, offset, epoch)
        assert tracker.committable() == {TP: 8}


def test_a_reader_that_commits_before_reaching_the_hinted_inputs_passes_the_rest_of_the_hint_on():
    """A reader that stops soon after it started from a hint (a pod failing as it starts) used to
    name in its commit only what it had acknowledged itself: the hint's later inputs were labelled
    again by whoever came next. What it has not read yet is passed on with its commit."""
    tracker = OffsetTracker(delivered_hints=True)
    tracker.assign([TP])
    consumer = FakeConsumer([TP])
    consumer.group_committed[TP] = 2
    consumer.group_metadata_stored[TP] = encode(2, [3, 10, 11, 12])
    read_hints(consumer, tracker, [TP])
    assert tracker.delivered(TP, 2) == {3, 10, 11, 12}
    epoch = tracker.track(TP, range(2, 6))  # read up to 5 only: 3 is skipped, 10-12 not reached
    for offset in (2, 4, 5):
        tracker.ack(TP, offset, epoch)
    positions = tracker.committable()
    assert positions == {TP: 6}
    assert decode(tracker.hints(positions)[TP], 6) == {10, 11, 12}


def test_a_hint_arriving_after_reading_began_is_ignored():
    tracker = OffsetTracker(delivered_hints=True)
    tracker.assign([TP])
    tracker.track(TP, [2])
    tracker.skip_delivered_from(TP, 2, {3, 4})
    assert tracker.delivered(TP, 3) == set()


# -- the source --------------------------------------------------------------------------------------
class Runner:
    version, tokenizer_key = "v1", "tok"

    def tokenize(self, texts):
        return [[1] for _ in texts]


# -- inputs that hung the model -------------------------------------------------------------------
def test_a_hint_carries_the_inputs_of_stalled_calls_with_their_counts_whole():
    text = encode(100, [103, 104], {100: 1, 102: 2, 99: 1})  # 99: below the position, already committed
    assert text == f"{PREFIX} 100 3-4 stalled=0:1,2:2"
    assert decode(text, 100) == {103, 104} and decode_stalled(text, 100) == {100: 1, 102: 2}
    only = encode(100, [], {100: 1})
    assert decode(only, 100) == frozenset() and decode_stalled(only, 100) == {100: 1}
    short = encode(1000, range(1001, 3000, 2), {1000: 1}, max_bytes=120)  # the marks are kept whole
    assert len(short) <= 120 and decode_stalled(short, 1000) == {1000: 1}
    for bad in (f"{PREFIX} 100 . stalled=-1:1", f"{PREFIX} 100 . stalled=0:0", f"{PREFIX} 100 . other=0:1"):
        assert decode_stalled(bad, 100) == {}, bad


def test_a_hint_carries_the_inputs_a_pods_model_process_died_in_apart_and_older_hints_still_read():
    """Deaths ride in their own field, with how many were with the input alone; a hint without them
    is written and read as before, and a malformed death field spoils the whole hint (a hint is only
    ever an optimisation)."""
    text = encode(100, [103], {102: 1}, {100: (2, 1), 104: (1, 0), 99: (1, 1)})
    assert text == f"{PREFIX} 100 3 stalled=2:1 died=0:2:1,4:1:0"
    assert decode(text, 100) == {103} and decode_stalled(text, 100) == {102: 1}
    assert decode_died(text, 100) == {100: (2, 1), 104: (1, 0)}
    only = encode(100, [], died={101: (1, 1)})
    assert only == f"{PREFIX} 100 . died=1:1:1" and decode_stalled(only, 100) == {}
    assert decode_died(only, 100) == {101: (1, 1)}
    assert encode(100, [103], {102: 1}) == f"{PREFIX} 100 3 stalled=2:1"  # what older readers read
    assert decode_died(f"{PREFIX} 100 3 stalled=2:1", 100) == {}
    for bad in ("died=0:1:2", "died=0:0:0", "died=-1:1:0", "died=0:1", "died=0:1:0 stalled=0:1",
                "died=0:1:0 died=1:1:0", "stalled=0:1 other=1"):
        hint = f"{PREFIX} 100 3 {bad}"
        assert (decode(hint, 100), decode_stalled(hint, 100), decode_died(hint, 100)) == (frozenset(), {}, {}), bad


def test_inputs_a_pods_model_process_died_in_are_committed_as_deaths_and_come_back_with_the_partition():
    """A feeder counts the inputs of a call its model process died in as deaths (with or without
    the input alone) apart from hangs; the next commit carries them, and a rebalance that gives the
    partition straight back keeps them, as it keeps hang counts."""
    tracker, epoch = stuck_partition(hints=True)
    committer, consumer, _ = first_commit(tracker)
    tracker.mark_stalled([Event("in", 0, 2, 0, None, [], "e2", "t", 0.0, epoch)], died=True)
    tracker.mark_stalled_at([("in", 0, 2), ("in", 0, 6)], died=True, alone=True)
    tracker.mark_stalled_at([("in", 0, 6)])
    assert tracker.died_counts(TP) == {2: (2, 1), 6: (1, 1)} and tracker.stalled_counts(TP) == {6: 1}
    tracker.abandon(("in", 0), 2, epoch)
    committer.commit_now()
    assert consumer.commits[-1] == {TP: 2}
    assert decode_died(consumer.metadata[-1][TP], 2) == {2: (2, 1), 6: (1, 1)}
    assert decode_stalled(consumer.metadata[-1][TP], 2) == {6: 1}
    point = tracker.resume_points([TP])[TP]  # what the source keeps at revocation
    assert point.died == ((2, 2, 1), (6, 1, 1)) and point.stalled == ((6, 1),)
    again = OffsetTracker(delivered_hints=True)
    again.assign([TP])
    again.skip_delivered(TP, point.delivered, point.stalled, point.position, point.stalled_new, point.died)
    assert again.died_counts(TP) == {2: (2, 1), 6: (1, 1)} and again.runs_alone


def test_inputs_given_up_in_a_stalled_call_are_committed_with_their_count():
    tracker, epoch = stuck_partition(hints=True)
    committer, consumer, _ = first_commit(tracker)
    stalled = [Event("in", 0, 2, 0, None, [], "e2", "t", 0.0, epoch)]
    tracker.mark_stalled(stalled)
    tracker.abandon(("in", 0), 2, epoch)
    committer.commit_now()
    assert consumer.commits[-1] == {TP: 2}
    assert decode_stalled(consumer.metadata[-1][TP], 2) == {2: 1}


def test_a_call_that_stalls_after_a_rebalance_gave_its_partition_straight_back_still_counts():
    """A rebalance revoked the partition while a call ran, and gave it straight back: the call stalls
    on the same record the new assignment reads again, so its count is kept (any epoch); and the
    counts held at revocation come back with the partition, as its delivered outputs do."""
    for tracker in (OffsetTracker(delivered_hints=True), OffsetTracker(False, delivered_hints=False)):
        tracker.assign([TP])
        old = tracker.track(TP, range(2, 6))
        tracker.mark_stalled([Event("in", 0, 3, 0, None, [], "e3", "t", 0.0, old)])
        points = tracker.resume_points([TP]) if tracker.delivered_hints else tracker.committed_points([TP])
        assert points[TP].stalled == ((3, 1),)
        tracker.revoke([TP])
        tracker.assign([TP])  # straight back, a new epoch
        tracker.skip_delivered(TP, points[TP].delivered, points[TP].stalled, points[TP].position)
        assert tracker.stalled_counts(TP) == {3: 1} and tracker.runs_alone
        tracker.mark_stalled([Event("in", 0, 4, 0, None, [], "e4", "t", 0.0, old)])  # the old epoch's call
        assert tracker.stalled_counts(TP) == {3: 1, 4: 1}
        assert tracker.mark_stalled_at([("in", 0, 3), ("in", 7, 3)]) == 1  # a pod's feeder hears of both; holds one
        assert tracker.stalled_counts(TP) == {3: 2, 4: 1}
        # Nothing read again yet: the counts are committed at the position the partition resumes from.
        assert tracker.committable() == {TP: 2} and tracker.stalled_positions() == {TP: 2}


def test_counts_in_no_commit_yet_are_still_due_after_the_partition_comes_straight_back():
    """Counts heard but not committed when a rebalance revoked the partition stay due when it comes
    straight back (the final transaction, aborted, must still record them); counts that were
    committed before do not make a commit due again."""
    tracker = OffsetTracker(False, delivered_hints=False)
    tracker.assign([TP])
    tracker.track(TP, range(2, 6))
    tracker.mark_committed({TP: 2})
    tracker.mark_stalled_at([("in", 0, 4)])
    points = tracker.committed_points([TP])
    tracker.revoke([TP])
    tracker.assign([TP])
    tracker.skip_delivered(TP, points[TP].delivered, points[TP].stalled, points[TP].position, points[TP].stalled_new)
    assert tracker.stalled_positions() == {TP: 2}
    tracker.mark_committed({TP: 2})  # the counts' transaction
    points = tracker.committed_points([TP])
    assert points[TP].stalled == ((4, 1),) and not points[TP].stalled_new
    tracker.revoke([TP])
    tracker.assign([TP])
    tracker.skip_delivered(TP, points[TP].delivered, points[TP].stalled, points[TP].position, points[TP].stalled_new)
    assert tracker.stalled_counts(TP) == {4: 1} and tracker.stalled_positions() == {}


def source_reading(
    delivered: list[int], stalled: dict[int, int], upto: int = 6, journal: CallJournal | None = None,
    died: dict[int, tuple[int, int]] | None = None,
) -> tuple[Source, FakeConsumer, InputHandoff]:
    """A source assigned TP, whose group commit at 2 has a hint of ``delivered``, ``stalled`` and
    ``died``, with records 2 to ``upto`` - 1 to read."""
    consumer = FakeConsumer([])
    consumer.group_committed[TP] = 2
    consumer.group_metadata_stored[TP] = encode(2, delivered, stalled, died)
    tracker = OffsetTracker(delivered_hints=True)
    handoff: InputHandoff = InputHandoff(100)
    source = Source(
        consumer, topics=["in"], pattern=None, parse_config=ParseConfig(), tracker=tracker,
        committer=Committer(consumer, tracker, interval_s=0.0), handoff=handoff, current_runner=lambda: Runner(),
        metrics=Metrics(), health=Health(), revoke_grace_s=0.0, journal=journal,
    )
    source.on_assigned({TP})
    consumer.polls.append({TP: [Record("in", 0, i, b'{"id": "e%d", "text": "t"}' % i) for i in range(2, upto)]})
    return source, consumer, handoff


def run_source_once(source: Source, consumer: FakeConsumer) -> None:
    stop = threading.Event()

    def poll_then_stop(*a, **k):
        stop.set()
        return FakeConsumer.poll(consumer, *a, **k)

    consumer.poll = poll_then_stop
    source.run(stop)


def test_a_newly_assigned_partition_hands_on_only_the_inputs_its_last_owner_had_not_delivered():
    source, consumer, handoff = source_reading([3, 5], {}, upto=7)
    run_source_once(source, consumer)
    events, letters, *_ = handoff.take(0)
    assert [e.offset for e in events] == [2, 4, 6] and letters == []
    assert source._tracker.in_flight() == 3


def test_an_input_of_one_stalled_call_is_run_alone_and_of_two_is_dead_lettered():
    source, consumer, handoff = source_reading([3], {2: 1, 4: 2})
    run_source_once(source, consumer)
    events, letters, *_ = handoff.take(0)
    assert [(e.offset, e.alone) for e in events] == [(2, True), (5, False)]  # 3: delivered, skipped
    assert [(d.offset, d.reason) for d in letters] == [(4, Failure.STALLED_TWICE)]
    assert "2 times" in letters[0].detail


def test_a_pods_deaths_in_model_calls_convict_as_one_processs_do_and_add_to_the_journals(tmp_path):
    """Deaths a pod's model process counted in the hint follow the rule of the journal's: one runs
    alone; two convict only with two of them alone, or a hang beside; and a hint's deaths and this
    host's journal's add up (a partition moved between a pod and one process)."""
    journal = CallJournal.open(tmp_path, "g", streams=1)
    assert journal is not None
    journal.begin(0, [("in", 0, 6)], alone=True)
    journal.close()  # this host's worker died in a call of 6 alone
    journal = CallJournal.open(tmp_path, "g", streams=1)
    died = {2: (1, 0), 3: (2, 1), 4: (1, 1), 5: (2, 2), 6: (1, 1)}
    source, consumer, handoff = source_reading([], {4: 1}, upto=8, journal=journal, died=died)
    run_source_once(source, consumer)
    events, letters, *_ = handoff.take(0)
    # 2: one death; 3: two, one alone; 4: a death and a hang; 5: two alone; 6: one alone here, one there
    assert [(e.offset, e.alone) for e in events] == [(2, True), (3, True), (7, False)]
    assert [(d.offset, d.reason) for d in letters] == [
        (4, Failure.STALLED_TWICE), (5, Failure.STALLED_TWICE), (6, Failure.STALLED_TWICE)
    ]
    assert "2 times (2 of them with the worker dying in the call)" in letters[1].detail
    journal.close()


def test_deaths_in_model_calls_from_the_journal_add_to_the_hints_stalls_and_counts_below_the_commit_go(tmp_path):
    """The journal's counts (calls this host's worker died in) and the hint's (calls that hung) are
    never of the same call, so they add up: one in all runs alone; two are a dead letter when one
    was a hang, and deaths alone take two with the input alone (a death may come from outside)."""
    dead = CallJournal.open(tmp_path, "g", streams=1)
    assert dead is not None
    dead.begin(0, [("in", 0, 1), ("in", 0, 3), ("in", 0, 4), ("in", 0, 5)])
    dead.close()  # the worker died in that batch
    for alone in (3, 5, 5):
        again = CallJournal.open(tmp_path, "g", streams=1)
        assert again is not None
        again.begin(0, [("in", 0, alone)], alone=True)
        again.close()  # and in calls of one input, alone: 3 once, 5 twice
    journal = CallJournal.open(tmp_path, "g", streams=1)
    assert journal is not None
    assert journal.counts == {TP: {1: (1, 0), 3: (2, 1), 4: (1, 0), 5: (3, 2)}}
    source, consumer, handoff = source_reading([], {4: 1}, upto=7, journal=journal)
    run_source_once(source, consumer)
    events, letters, *_ = handoff.take(0)
    # 3: two deaths, one alone: runs alone again; 4: a hang and a death; 5: two deaths alone
    assert [(e.offset, e.alone) for e in events] == [(2, False), (3, True), (6, False)]
    assert [(d.offset, d.reason) for d in letters] == [(4, Failure.STALLED_TWICE), (5, Failure.STALLED_TWICE)]
    assert "2 times (1 of them with the worker dying in the call)" in letters[0].detail
    assert "3 times (3 of them" in letters[1].detail
    assert journal.counts[TP].keys() == {3, 4, 5}  # offset 1 is below the group's commit at 2: done with
    journal.close()
