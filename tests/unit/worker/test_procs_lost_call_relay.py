"""A call the pod's model process was lost in: its inputs of partitions the feeder no longer holds
reach the feeder that holds them now, through the supervisor (worker/procs/feeder.py); those no
feeder holds go to the call journal, for the next pod (worker/procs/lost_calls.py)."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from worker.call_journal import CallJournal
from worker.kafka.base import TopicPartition
from worker.offsets import OffsetTracker
from worker.procs.feeder import _watch_supervisor, relay_to
from worker.procs.lost_calls import UncountedInputs
from worker.procs.supervisor import Supervisor
from worker.settings import load_settings


def test_a_feeder_relays_only_the_inputs_of_partitions_it_does_not_hold():
    ours, theirs = Pipe()
    relay = relay_to(theirs, lambda: [TopicPartition("in", 0)])
    relay([("in", 0, 7), ("in", 1, 3), ("other", 0, 2)], True, False)
    assert ours.recv() == ("lost_call", [("in", 1, 3), ("other", 0, 2)], True, False)
    relay([("in", 0, 8)], False, True)  # all held: counted by this feeder itself, nothing to relay
    assert not ours.poll(0.1)


def test_the_supervisor_passes_a_lost_calls_inputs_to_every_other_feeder(tmp_path):
    supervisor = Supervisor(load_settings(input_topics="in", bundle_path=tmp_path), feeders=3)
    pipes = [Pipe() for _ in range(3)]
    for feeder, (supervisor_end, _) in zip(supervisor._feeders, pipes, strict=True):
        feeder.control = supervisor_end
    supervisor.relay_lost_call(supervisor._feeders[1], ("lost_call", [("in", 2, 5)], True, True))
    assert [end.poll(0.2) for _, end in pipes] == [True, False, True]
    assert pipes[0][1].recv() == pipes[2][1].recv() == ("count", [("in", 2, 5)], True, True)


def test_a_feeder_counts_what_it_hears_of_partitions_it_holds_and_still_stops_when_told():
    tracker = OffsetTracker(delivered_hints=True)
    tracker.assign([TopicPartition("in", 2)])
    stopped = threading.Event()

    class Worker:
        def __init__(self) -> None:
            self.tracker = tracker

        def stop(self) -> None:
            stopped.set()

    supervisor_end, feeder_end = Pipe()
    watcher = threading.Thread(target=_watch_supervisor, args=(feeder_end, Worker()))
    watcher.start()
    supervisor_end.send(("count", [("in", 2, 5), ("in", 3, 1)], True, True))
    supervisor_end.send(("count", [("in", 2, 6)], False, False))
    supervisor_end.send(("stop",))
    watcher.join(5)
    assert stopped.is_set()
    assert tracker.died_counts(TopicPartition("in", 2)) == {5: (1, 1)}
    assert tracker.stalled_counts(TopicPartition("in", 2)) == {6: 1}


def test_relayed_inputs_no_feeder_counted_go_to_the_journal_when_the_pod_stops(tmp_path):
    """A rebalance may leave a partition with no owner while its call is relayed: before, nobody
    counted its inputs and the next pod ran them in a batch again. Each feeder tells the supervisor
    what it counts; when the pod stops (the model process is gone), what none counted goes to the
    call journal it holds, and the next pod's supervisor reads it back."""
    supervisor = Supervisor(load_settings(input_topics="in", bundle_path=tmp_path), feeders=3)
    supervisor._journal = CallJournal.open(tmp_path, "g", streams=0)
    assert supervisor._journal is not None
    pipes = [Pipe() for _ in range(3)]
    for feeder, (supervisor_end, _) in zip(supervisor._feeders, pipes, strict=True):
        feeder.control = supervisor_end
    lost = [("in", 2, 5), ("in", 3, 1), ("in", 4, 8)]
    supervisor.relay_lost_call(supervisor._feeders[1], ("lost_call", lost, True, True))
    pipes[0][1].send(("marked", [("in", 2, 5)]))  # feeder 0 holds partition 2
    supervisor._on_feeder_message(supervisor._feeders[0])
    pipes[2][1].send(("marked", [("in", 4, 8)]))  # feeder 2's last words, read as the pod stops
    assert supervisor._journal.counts == {}  # nothing kept while the feeders may still count
    supervisor._cleanup()
    next_pod = CallJournal.open(tmp_path, "g", streams=0)
    assert next_pod is not None and next_pod.counts == {TopicPartition("in", 3): {1: (1, 1)}}  # nobody held 3
    next_pod.close()


def test_the_tally_keeps_per_call_what_no_feeder_counted_and_nothing_when_all_were():
    kept: list[tuple] = []
    uncounted = UncountedInputs(lambda inputs, alone: kept.append((inputs, alone)))
    uncounted.to_count([("in", 0, 1), ("in", 1, 2)], False)
    uncounted.marked([("in", 0, 1), ("in", 1, 2)])  # all counted: nothing to keep
    uncounted.to_count([("in", 5, 9)], True)
    uncounted.marked([["in", 6, 3]])  # as a pipe may give it: a list
    uncounted.to_count([("in", 6, 3), ("in", 7, 4)], False)
    uncounted.close()
    assert kept == [([("in", 5, 9)], True), ([("in", 7, 4)], False)]
    uncounted.close()  # settled once
    assert len(kept) == 2


def test_a_hung_calls_inputs_no_feeder_counted_are_kept_in_the_journal_when_the_pod_stops(tmp_path):
    """The model process gives a hung call up and exits, naming its inputs to the supervisor; each
    feeder counts those of partitions it holds and says so. When the pod stops (every feeder's last
    words read), what none counted goes to the journal: a rebalance left its partition unowned."""
    supervisor = Supervisor(load_settings(input_topics="in", bundle_path=tmp_path), feeders=2)
    supervisor._journal = CallJournal.open(tmp_path, "g", streams=0)
    model_end, model = Pipe()
    supervisor._model_control = model_end
    pipes = [Pipe() for _ in range(2)]
    for feeder, (supervisor_end, _) in zip(supervisor._feeders, pipes, strict=True):
        feeder.control = supervisor_end
    model.send(("stalled_call", [("in", 0, 1), ("in", 1, 2), ("in", 2, 3)], False))
    model.close()  # and exits
    pipes[0][1].send(("marked", [("in", 0, 1)]))  # its own request, on the STALLED answer
    pipes[1][1].send(("marked", [("in", 2, 3)]))  # heard (STALLED_INPUTS): its partition now
    supervisor._read_model_messages()
    supervisor._cleanup()  # the pod stops: the feeders' last messages are read first
    next_pod = CallJournal.open(tmp_path, "g", streams=0)
    assert next_pod is not None and next_pod.counts == {TopicPartition("in", 1): {2: (1, 0)}}
    next_pod.close()


def test_a_tracker_tells_which_inputs_it_counted_those_of_partitions_it_holds():
    tracker = OffsetTracker(delivered_hints=True)
    tracker.assign([TopicPartition("in", 0)])
    told: list[list] = []
    tracker.on_marked = told.append
    assert tracker.mark_stalled_at([("in", 0, 4), ("in", 1, 5)], died=True) == 1
    tracker.mark_stalled_at([("in", 1, 6)])  # none held: nothing to tell
    assert told == [[("in", 0, 4)]]
