"""Inputs of a model call the pod's model process was lost in, that their feeder no longer owns.

A feeder counts the inputs of a lost call of partitions it holds; the rest it sends to the
supervisor (worker/procs/feeder.py), which passes them to every other feeder. Each counts those it
holds and says which. An input none of them held (its partition between two owners: a rebalance,
as the pod starts or a feeder restarts) was forgotten, and the next pod ran it in a batch again:
one pod start more for an input that kills the model process. The supervisor now writes such
inputs to the call journal it holds (worker/call_journal.py) once every feeder it told has answered
or exited, and the next pod's feeders count them. The journal keeps deaths only: a hang (a silent
model process the supervisor killed) is kept as a death, which convicts later, never sooner.

A call the model process gives up as hung (it exits next) is the same: each feeder counts the
inputs it holds, its own requests' on their STALLED answer and the others' as it hears them
(STALLED_INPUTS). The model process tells the supervisor the call's inputs, each feeder tells it
every input it counts (``OffsetTracker.on_marked``), and when the pod stops the supervisor keeps
what none counted.

No I/O here: the supervisor sends and receives, and ``keep`` writes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from worker.inference import InputId


@dataclass
class _Relay:
    inputs: dict[InputId, None]  # not counted yet, in order
    alone: bool
    waiting: set[int] = field(default_factory=set)  # feeders told that have not answered


class LostCallRelays:
    """The relays in flight, and a stalled call's tally; ``keep(inputs, alone)`` is given what no
    feeder counted."""

    def __init__(self, keep: Callable[[list[InputId], bool], None]) -> None:
        self._keep = keep
        self._relays: dict[int, _Relay] = {}
        self._ids = itertools.count(1)
        self._stalled: _Relay | None = None  # the call the model process gave up as hung
        self._marked: set[InputId] = set()  # every input a feeder counted in this pod (rare: stalls, deaths)

    def stalled_call(self, inputs: Sequence[InputId], alone: bool) -> None:
        """The model process gave up a hung call over ``inputs`` (and exits)."""
        self._stalled = _Relay(dict.fromkeys(_key(i) for i in inputs), alone)

    def marked(self, inputs: Sequence[InputId]) -> None:
        """A feeder counted ``inputs`` in its commits' hint."""
        self._marked.update(_key(i) for i in inputs)

    def open(self, inputs: Sequence[InputId], alone: bool, told: Sequence[int]) -> int:
        """A relay of ``inputs`` sent to the feeders ``told``; its id (the feeders echo it)."""
        relay_id = next(self._ids)
        self._relays[relay_id] = _Relay(dict.fromkeys(_key(i) for i in inputs), alone, set(told))
        self._settle(relay_id)
        return relay_id

    def counted(self, relay_id: int, feeder: int, inputs: Sequence[InputId]) -> None:
        """Feeder ``feeder`` counted ``inputs`` of the relay (those of partitions it holds)."""
        relay = self._relays.get(relay_id)
        if relay is None:
            return
        for input_ in inputs:
            relay.inputs.pop(_key(input_), None)
        relay.waiting.discard(feeder)
        self._settle(relay_id)

    def gone(self, feeder: int) -> None:
        """Feeder ``feeder`` exited: it will answer no relay."""
        for relay_id in list(self._relays):
            self._relays[relay_id].waiting.discard(feeder)
            self._settle(relay_id)

    def close(self) -> None:
        """The pod stops (every feeder has exited): what no feeder counted is kept."""
        for relay_id in list(self._relays):
            self._relays[relay_id].waiting.clear()
            self._settle(relay_id)
        stalled, self._stalled = self._stalled, None
        if stalled is not None:
            left = [i for i in stalled.inputs if i not in self._marked]
            if left:
                self._keep(left, stalled.alone)

    def _settle(self, relay_id: int) -> None:
        relay = self._relays[relay_id]
        if relay.waiting and relay.inputs:
            return
        del self._relays[relay_id]
        if relay.inputs:
            self._keep(list(relay.inputs), relay.alone)


def _key(input_: Sequence) -> InputId:
    """An input as a hashable (topic, partition, offset), whatever sequence the pipe gave."""
    return str(input_[0]), int(input_[1]), int(input_[2])
