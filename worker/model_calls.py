"""The batches inside the model threads' calls, so that a call that never returns can be given up.

A model call that hangs (a wedged GPU, a driver stuck in a kernel) never returns, and nothing can
interrupt a thread that waits inside it. ``TAGSTREAM_MODEL_STALL_S`` makes the worker exit when
one runs past the limit (``Source._watch_model``), but the drain then waited for the hung batch
like any other: up to ``TAGSTREAM_DRAIN_TIMEOUT_S`` more, with the partitions held and every
finished result waiting behind it for its commit.

``ModelCalls.call(items)`` brackets one call of a model thread (and ``Health.model_call``, which
/healthz reads). ``give_up_stalled()`` marks every thread whose call has run past the limit as
given up and returns its inputs: the worker abandons them (not committed past; the restarted
worker reads them again), counts the thread as ended, and the drain finishes with everything
else. Should such a call return after all, ``given_up()`` tells its thread to drop the answers
and end: its inputs are no longer the worker's to publish.

With a journal (worker/call_journal.py, the one-process worker), each call's inputs are also on
disk while it runs, so that a worker that dies in the call counts them at its next start. A call
given up here is counted in the commit's hint instead, and unmarked there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from worker.call_journal import CallJournal
from worker.inference import InputId
from worker.telemetry import Health

T = TypeVar("T")


class ModelCalls(Generic[T]):
    """The calls in flight per model thread; see the module docstring. How long each has run is
    Health's record (``Health.model_call``, which /healthz reads): this keeps only their inputs."""

    def __init__(self, health: Health, journal: CallJournal | None = None) -> None:
        self._health = health
        self._journal = journal
        self._lock = threading.Lock()
        self._calls: dict[threading.Thread, list[T]] = {}
        self._given_up: set[threading.Thread] = set()
        self._streams: dict[threading.Thread, int] = {}  # each model thread's file in the journal

    @contextlib.contextmanager
    def call(self, items: list[T], suspects: Sequence[InputId] = (), alone: bool = False) -> Iterator[None]:
        """Brackets one model call of the calling thread over ``items``; ``suspects``: the inputs
        the journal names if the process dies in the call (those of ``items`` the call runs), and
        ``alone``: one of them, run with no other call beside it."""
        thread = threading.current_thread()
        journal = self._journal
        with self._lock:
            self._calls[thread] = items
            stream = self._streams.setdefault(thread, len(self._streams))
        if journal is not None:
            journal.begin(stream, suspects, alone)
        try:
            with self._health.model_call():
                yield
        finally:
            with self._lock:
                running = self._calls.pop(thread, None) is not None
            if journal is not None and running:  # else given up: unmarked then
                journal.end(stream)

    def give_up_stalled(self) -> list[tuple[threading.Thread, list[T]]]:
        """Mark the threads whose call has run past TAGSTREAM_MODEL_STALL_S as given up; their inputs."""
        limit = self._health.model_stall_s
        if limit <= 0:
            return []
        with self._lock:
            stalled = [(thread, items) for thread, items in self._calls.items()
                       if self._health.model_call_age(thread.ident) > limit]
            for thread, _ in stalled:
                del self._calls[thread]
                self._given_up.add(thread)
        if self._journal is not None:
            for thread, _ in stalled:  # counted in the commit's hint: not at the next start too
                self._journal.end(self._streams[thread])
        return stalled

    def given_up(self, thread: threading.Thread | None = None) -> bool:
        """Whether ``thread`` (the calling one by default) was given up in a stalled call."""
        with self._lock:
            return (thread or threading.current_thread()) in self._given_up
