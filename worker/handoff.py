"""The bounded hand-offs between stages.

``InputHandoff`` (source -> inference) never blocks the producer side: the consumer thread
must keep polling to stay in its group, so instead of blocking it reads ``pending`` and pauses
its partitions once ``capacity`` inputs wait (backpressure), resuming below half of it.
``pending`` counts inputs from ``put`` until the batcher ``release``s them (after they
leave the batcher), so the batcher's contents count too.

A *barrier* (exactly-once mode) marks a transaction boundary in the stream of inputs: ``take``
returns the inputs put before it together with the barrier, never an input put after it, so the
batcher can finish everything before the boundary and then pass the barrier on.

The inference -> sink hand-off is a plain ``queue.Queue`` of small fixed capacity: blocking
there is what we want, it stalls inference while the producer catches up.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Generic, NamedTuple, TypeVar

E = TypeVar("E")
D = TypeVar("D")


class Taken(NamedTuple, Generic[E, D]):
    events: list[E]
    letters: list[D]
    closed: bool  # no more input will come
    barrier: Any = None  # a barrier that followed these inputs (exactly-once), else None


class InputHandoff(Generic[E, D]):
    """Events and dead letters from the source to the batcher."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._events: list[E] = []
        self._letters: list[D] = []
        self._pending = 0
        self._closed = False
        # (events before it, letters before it, barrier), oldest first
        self._barriers: list[tuple[int, int, Any]] = []

    @property
    def pending(self) -> int:
        """Inputs put and not yet released (waiting here or in the batcher)."""
        return self._pending

    @property
    def over_capacity(self) -> bool:
        return self._pending >= self.capacity

    @property
    def below_resume_mark(self) -> bool:
        return self._pending <= self.capacity // 2

    def put(self, events: list[E], letters: list[D]) -> None:
        """Hand over one poll's worth of inputs (never blocks)."""
        if not events and not letters:
            return
        with self._cond:
            self._events.extend(events)
            self._letters.extend(letters)
            self._pending += len(events) + len(letters)
            self._cond.notify()

    def put_barrier(self, barrier: Any) -> None:
        """Mark a boundary after everything put so far (never blocks)."""
        with self._cond:
            self._barriers.append((len(self._events), len(self._letters), barrier))
            self._cond.notify()

    def take(self, timeout: float) -> Taken[E, D]:
        """Everything waiting up to the next barrier, after up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._events and not self._letters and not self._barriers and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._barriers:
                n_events, n_letters, barrier = self._barriers.pop(0)
                events, self._events = self._events[:n_events], self._events[n_events:]
                letters, self._letters = self._letters[:n_letters], self._letters[n_letters:]
                self._barriers = [(e - n_events, d - n_letters, b) for e, d, b in self._barriers]
                return Taken(events, letters, self._closed and not (self._barriers or self._events or self._letters), barrier)
            events, self._events = self._events, []
            letters, self._letters = self._letters, []
            return Taken(events, letters, self._closed)

    def release(self, n: int) -> None:
        """``n`` inputs have left the batcher's hands (batched, forwarded or dropped)."""
        with self._cond:
            self._pending -= n

    def close(self) -> None:
        """No more input will come (shutdown): the batcher flushes what it holds."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
