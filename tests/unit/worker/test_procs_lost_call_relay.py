"""A call the pod's model process was lost in: its inputs of partitions the feeder no longer holds
reach the feeder that holds them now, through the supervisor (worker/procs/feeder.py)."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from worker.kafka.base import TopicPartition
from worker.offsets import OffsetTracker
from worker.procs.feeder import _watch_supervisor, relay_to
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
