"""Model calls side by side, except a call that runs an input alone: that one runs by itself.

On a CPU the model runs two streams at once (worker/runner.py's ``resolve_streams``), in one
process or in a pod's model process. When the process dies in a call, nothing can say which of the
calls in flight killed it, so the inputs of all of them are counted (worker/call_journal.py, and
the pod's shared-memory slots). An input counted once runs alone the next time, to be blamed
alone; but if another stream's call ran beside it, an input in that call was counted too, and an
input that had been counted once already reached two counts and was dead-lettered
(``stalled_twice``) though the other call killed the process. So an *alone* call waits until no
other call is in flight and keeps the others out until it returns: one that kills the process
names its input only. Such calls are rare (inputs of calls that died or hung, and failed batches
retried one input at a time), and a GPU runs one stream anyway.

Waiting alone calls go first: new shared calls wait behind them, so a busy stream cannot starve one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class CallGate:
    """Shared entry for ordinary calls, exclusive for alone ones; a no-op for one stream."""

    def __init__(self, streams: int) -> None:
        self._needed = streams > 1
        self._cond = threading.Condition()
        self._shared: set[threading.Thread] = set()  # threads in an ordinary call
        self._alone: threading.Thread | None = None  # the thread in an alone call
        self._waiting_alone = 0

    @contextlib.contextmanager
    def enter(self, alone: bool) -> Iterator[None]:
        """Bracket one call of the calling thread (alone: with no other call in flight)."""
        if not self._needed:
            yield
            return
        me = threading.current_thread()
        with self._cond:
            if alone:
                self._waiting_alone += 1
                while self._alone is not None or self._shared:
                    self._cond.wait()
                self._waiting_alone -= 1
                self._alone = me
            else:
                while self._alone is not None or self._waiting_alone:
                    self._cond.wait()
                self._shared.add(me)
        try:
            yield
        finally:
            self.leave(me)

    def leave(self, thread: threading.Thread) -> None:
        """``thread``'s call is over, or given up as stalled (it may never return): let the others in."""
        with self._cond:
            if self._alone is thread:
                self._alone = None
            self._shared.discard(thread)
            self._cond.notify_all()
