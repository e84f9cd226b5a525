"""Inputs of a model call the pod's model process was lost in or gave up, that no feeder counted.

Each feeder counts such a call's inputs of the partitions it holds (in its commits' hint):

- the model process died or was killed in the call: the feeders whose requests were in it count
  their own, and send the rest to the supervisor (worker/procs/feeder.py), which passes them to
  every other feeder, each counting those it holds;
- the model process gave the call up as hung: it answers its feeders STALLED and names every input
  of the call to every feeder (STALLED_INPUTS) before it exits.

An input none of them held (its partition between two owners: a rebalance, as the pod starts or a
feeder restarts) was forgotten, and the next pod ran it in a batch again: one pod start more for
an input that kills or hangs the model process. So the supervisor tallies: it hears each such
call's inputs (the relayed ones, and a hung call's from the model process as it exits), and every
input any feeder counts (``OffsetTracker.on_marked``). Either way the model process is gone and the
pod stops; when it does, every feeder's last words read, what no feeder counted is written to the
call journal (worker/call_journal.py), and the next pod's feeders count it. The journal keeps
deaths only: a hang is kept as a death, which convicts later, never sooner.

No I/O here: the supervisor sends and receives, and ``keep`` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from worker.inference import InputId


class UncountedInputs:
    """The supervisor's tally; ``keep(inputs, alone)`` is given, per call, what no feeder counted."""

    def __init__(self, keep: Callable[[list[InputId], bool], None]) -> None:
        self._keep = keep
        self._calls: list[tuple[dict[InputId, None], bool]] = []  # each call's inputs (in order), alone
        self._marked: set[InputId] = set()  # every input a feeder counted in this pod (rare: deaths, stalls)

    def to_count(self, inputs: Sequence[InputId], alone: bool) -> None:
        """The inputs of a call the model process was lost in or gave up, for the feeders to count."""
        self._calls.append((dict.fromkeys(_key(i) for i in inputs), alone))

    def marked(self, inputs: Sequence[InputId]) -> None:
        """A feeder counted ``inputs`` in its commits' hint."""
        self._marked.update(_key(i) for i in inputs)

    def close(self) -> None:
        """The pod stops, every feeder's messages read: what no feeder counted is kept."""
        calls, self._calls = self._calls, []
        for inputs, alone in calls:
            left = [i for i in inputs if i not in self._marked]
            if left:
                self._keep(left, alone)


def _key(input_: Sequence) -> InputId:
    """An input as a hashable (topic, partition, offset), whatever sequence the pipe gave."""
    return str(input_[0]), int(input_[1]), int(input_[2])
