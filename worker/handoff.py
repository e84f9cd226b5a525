"""The bounded hand-offs between stages.

``InputHandoff`` (source -> inference) never blocks the producer side: the consumer thread
must keep polling to stay in its group, so instead of blocking it reads ``pending`` and pauses
its partitions once ``capacity`` inputs wait (backpressure), resuming below half of it.
``pending`` counts inputs from ``put`` until the batcher ``release``s them (after they
leave the batcher), so the batcher's contents count too.

The inference -> sink hand-off is a plain ``queue.Queue`` of small fixed capacity: blocking
there is what we want, it stalls inference while the producer catches up.
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

E = TypeVar("E")
D = TypeVar("D")


class InputHandoff(Generic[E, D]):
    """Events and dead letters from the source to the batcher."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cond = threading.Condition()
        self._events: list[E] = []
        self._letters: list[D] = []
        self._pending = 0
        self._closed = False

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

    def take(self, timeout: float) -> tuple[list[E], list[D], bool]:
        """Everything waiting, after up to ``timeout`` seconds; and whether input has ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._events and not self._letters and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            events, self._events = self._events, []
            letters, self._letters = self._letters, []
            return events, letters, self._closed

    def release(self, n: int) -> None:
        """``n`` inputs have left the batcher's hands (batched, forwarded or dropped)."""
        with self._cond:
            self._pending -= n

    def close(self) -> None:
        """No more input will come (shutdown): the batcher flushes what it holds."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
