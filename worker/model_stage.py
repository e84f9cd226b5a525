"""The model threads: formed batches in, labelled results out.

    batcher --put()--> batch queue (one batch waits per stream) --> model threads (run())
        --> Runner.classify --> to_sink(Results), or dead letters for inputs the model rejects

The stage also keeps what the rest of the worker asks of it:
- the count of batches issued and finished, which an exactly-once barrier waits on
  (``wait_for_issued``): a transaction commits only outputs that are all in the sink queue;
- which of its threads are still running: with none left, batches still queued are abandoned
  (read again after the restart) instead of waited for;
- the batch in each thread's model call (worker/model_calls.py): a call that stalls past
  TAGSTREAM_MODEL_STALL_S is given up (``give_up_stalled``), so the drain does not wait for it.
  In a pod's feeder the model process gives such a call up and says so (ModelCallStalled); either
  way its inputs are reported (``on_stalled``), to be run alone by the next worker. With a journal
  (worker/call_journal.py) the inputs of each call are on disk while it runs, so that a worker
  that dies in the call counts them when it starts again;
- the gate (worker/call_gate.py): a batch run alone waits for the other streams' calls and keeps
  them out, so that a death in its call names its input only.

The threads themselves are the worker's (``Worker._spawn``: named, watched by /healthz, their
failures fatal); each runs ``run()`` until ``put_stops()``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from worker.batcher import Batch
from worker.call_gate import CallGate
from worker.call_journal import CallJournal
from worker.errors import Failure, InferenceError, ModelCallStalled, WorkerError
from worker.events import DeadLetter, Event
from worker.inference import Classified, Runner
from worker.model_calls import ModelCalls
from worker.offsets import OffsetTracker, input_id
from worker.sink import input_dead_letter
from worker.source import tokenize_events
from worker.stages import StageClock
from worker.telemetry import Health, Metrics, get_logger

log = get_logger("tagstream.worker")

STOP = object()  # in the batch queue: the thread that takes it ends; in the sink queue: the sink ends


@dataclass
class Results:
    """One batch's outputs, on their way to the sink."""

    events: list[Event]
    classified: Classified
    labels: list[str]
    model_name: str
    model_version: str


class ModelStage:
    """The batch queue, the model threads' body, and their bookkeeping (see the module's doc)."""

    def __init__(
        self,
        streams: int,
        *,
        tracker: OffsetTracker,
        metrics: Metrics,
        health: Health,
        clock: StageClock,
        to_sink: Callable[[Any], None],
        abandon: Callable[[list[Event]], None],
        on_stalled: Callable[..., None] | None = None,
        on_lost: Callable[[], None] | None = None,
        journal: CallJournal | None = None,
        debug: bool = False,
    ) -> None:
        self.streams = streams
        self._tracker = tracker
        self._metrics = metrics
        self._clock = clock
        self._to_sink = to_sink
        self._abandon = abandon  # inputs never to be committed past: the next owner reads them again
        # Inputs of a call given up as stalled, or that a pod's model process died in
        # (OffsetTracker.mark_stalled: events, died, alone).
        self._on_stalled = on_stalled
        # A thread failed for good with a batch in its call, before that batch counts as done: an
        # exactly-once worker aborts the open transaction (Worker._abort_for_lost_batch).
        self._on_lost = on_lost
        self._debug = debug  # a log line per batch
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=streams)  # TEI's prefetch of one per stream
        # Batches handed to the threads and finished by them: a barrier waits for the two to meet.
        self._issued = 0
        self._done = 0
        self._cond = threading.Condition()
        self._running = streams  # threads that have not ended (under _cond)
        self._retired: set[threading.Thread] = set()  # threads counted out of it (under _cond)
        self._calls: ModelCalls[Event] = ModelCalls(health, journal)
        self._gate = CallGate(streams)

    # -- the batcher's side ------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return self._running

    def put(self, batch: Batch[Event], runner: Runner) -> bool:
        """Queue a batch, blocking while every thread is busy; False (and nothing queued) once no
        thread is left to run it."""
        return self._put((batch, runner))

    def put_stops(self) -> None:
        """One stop per thread: each ends after the batches queued before it."""
        for _ in range(self.streams):
            self._put(STOP)

    def wait_for_issued(self) -> bool:
        """Block until every batch issued so far has finished (its outputs are in the sink queue);
        False when no thread is left to finish them."""
        with self._cond:
            while self._done < self._issued:
                if not self._running:
                    return False
                self._cond.wait(0.1)
        return True

    def given_up(self, thread: threading.Thread | None = None) -> bool:
        """Whether ``thread`` (this one by default) was given up in a stalled model call."""
        return self._calls.given_up(thread)

    def give_up_stalled(self, before_counting: Callable[[], None] | None = None) -> None:
        """TAGSTREAM_MODEL_STALL_S passed in a model call: its inputs are abandoned (read again after
        the restart) and its thread counted out, so the drain delivers and commits everything else
        instead of waiting for it. ``before_counting`` runs first when a call was given up (an
        exactly-once abort: see Worker._fail)."""
        stalled = self._calls.give_up_stalled()
        if stalled and before_counting is not None:
            before_counting()
        for thread, events in stalled:
            self._gate.leave(thread)  # it may never return: the other streams' calls go on
            if self._on_stalled is not None:
                self._on_stalled(events)
            self._abandon(events)
            self._batch_done()
            self._retire(thread)
            log.warning("model_call_given_up", thread=thread.name, inputs=len(events))

    # -- a model thread ----------------------------------------------------------------------------
    def run(self) -> None:
        """Run batches through the model until a stop (one thread per stream)."""
        try:
            while True:
                work = self._queue.get()
                if work is STOP:
                    return
                batch, runner = work
                try:
                    self._run_batch(batch, runner)
                except BaseException:
                    # Fatal (the thread's owner records it): nothing of this batch reached the sink,
                    # and it never will. Given up now, its inputs are not waited for by the drain or
                    # a rebalance (up to 10 s, holding the partitions); they are read again.
                    if not self._calls.given_up():  # else abandoned and counted when it was given up
                        if self._on_lost is not None:
                            self._on_lost()
                        self._abandon(batch.items)
                    raise
                finally:
                    if not self._calls.given_up():
                        self._batch_done()
                if self._calls.given_up():
                    return  # a stalled call that came back after all: this thread was counted out
        finally:
            self._retire(threading.current_thread())

    def _run_batch(self, batch: Batch[Event], runner: Runner) -> None:
        events, dropped = self._tracker.split(batch.items)
        self._abandon(dropped)
        if not events:
            return
        key = runner.tokenizer_key
        stale = [e for e in events if e.tokenizer_key != key]
        if stale:  # tokenized by a bundle swapped out since: redo with this one
            _, letters = tokenize_events(runner, stale, self._metrics)
            if letters:  # texts the new tokenizer rejects (still under the old key): dead letters, not a stopped worker
                events = [e for e in events if e.tokenizer_key == key]
                self._to_sink(letters)
                if not events:
                    return
        t = self._clock.start()
        alone = batch.reason == "alone"
        inputs = [input_id(e) for e in events]
        try:
            with (
                self._gate.enter(alone), self._calls.call(events, inputs, alone),
                self._reporting_stalled(events, events, alone),
            ):
                classified = runner.classify([e.token_ids for e in events], inputs=inputs, alone=alone)
        except InferenceError as exc:
            if not self._calls.given_up():
                self._retry_one_by_one(events, runner, exc)
            return
        if self._calls.given_up():
            return  # its inputs were abandoned: the restarted worker labels them
        self._clock.stop("inference", t, len(events))
        self._observe(batch, events, classified)
        if self._debug:
            first = events[0]
            log.debug(
                "batch", size=len(events), closed_by=batch.reason, padded_tokens=batch.padded_tokens,
                inference_ms=round(classified.seconds * 1000, 2), topic=first.topic, partition=first.partition,
                offset=first.offset, partitions=sorted({(e.topic, e.partition) for e in events}),
            )
        self._to_sink(Results(events, classified, runner.labels, runner.name, runner.version))

    def _retry_one_by_one(self, events: list[Event], runner: Runner, error: InferenceError) -> None:
        """A failed batch: classify each input alone; the ones that still fail are dead-lettered."""
        self._metrics.count_failure(Failure.BATCH_FAILED)
        log.warning("batch_failed_retrying_singly", size=len(events), error=str(error))
        ok: list[Event] = []
        parts: list[Classified] = []
        letters: list[DeadLetter] = []
        for event in events:
            one_input = [input_id(event)]
            try:
                # Given up, all of them are read again (none is published yet), and counted as stalled;
                # a death in the call names this one input (the journal, the gate, a pod's slot).
                with (
                    self._gate.enter(True), self._calls.call(events, one_input, True),
                    self._reporting_stalled(events, [event], True),
                ):
                    one = runner.classify([event.token_ids], inputs=one_input, alone=True)
            except InferenceError as exc:
                if self._calls.given_up():
                    return
                letters.append(input_dead_letter(event, Failure.INFERENCE_FAILED, str(exc)))
                continue
            if self._calls.given_up():
                return  # see _run_batch
            ok.append(event)
            parts.append(one)
        if not ok and len(events) > 1:
            raise WorkerError(f"the model fails on every input, alone too: {error}", Failure.MODEL_FAILED)
        if ok:
            self._to_sink(Results(ok, Classified.join(parts), runner.labels, runner.name, runner.version))
        if letters:
            self._to_sink(letters)

    @contextlib.contextmanager
    def _reporting_stalled(self, events: list[Event], in_call: list[Event], alone: bool) -> Iterator[None]:
        """A pod's model process gave up the call (ModelCallStalled): report ``events`` as one
        process's give_up_stalled does; or it died in the call: report the inputs ``in_call`` as
        deaths (``alone``: run alone), as one process's journal does. The error then ends this
        thread and the worker."""
        try:
            yield
        except ModelCallStalled as exc:
            counted = in_call if exc.died else events
            if self._on_stalled is not None:  # ``alone`` matters to deaths only (OffsetTracker.mark_stalled)
                self._on_stalled(counted, died=exc.died, alone=alone)
            log.warning("model_call_given_up", thread=threading.current_thread().name, inputs=len(counted),
                        by="model process", died=exc.died, reason=str(exc))
            raise

    def _observe(self, batch: Batch[Event], events: list[Event], classified: Classified) -> None:
        m = self._metrics
        longest = max(e.n_tokens for e in events)
        padded = longest * len(events)
        real = sum(e.n_tokens for e in events)
        m.batches.labels(reason=batch.reason).inc()
        m.batch_size.observe(len(events))
        m.batch_padded_tokens.observe(padded)
        m.batch_padding_ratio.observe(1.0 - real / padded if padded else 0.0)
        m.inference_seconds.observe(classified.seconds)

    # -- the counts -------------------------------------------------------------------------------
    def _put(self, work: Any) -> bool:
        while self._running:
            try:
                self._queue.put(work, timeout=0.5)
            except queue.Full:
                continue
            if work is not STOP:
                with self._cond:
                    self._issued += 1
                if not self._running:  # the last thread ended as this was queued: nobody takes it
                    self._abandon_queued()
            return True
        return False

    def _batch_done(self) -> None:
        with self._cond:
            self._done += 1
            self._cond.notify_all()

    def _retire(self, thread: threading.Thread) -> None:
        """Count a thread out (once): it ended, or was given up in a stalled call."""
        with self._cond:
            if thread in self._retired:
                return
            self._retired.add(thread)
            self._running -= 1
            last = self._running == 0
        if last:
            self._abandon_queued()

    def _abandon_queued(self) -> None:
        """No thread is left: the batches still queued for one never run (read again later)."""
        while True:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                return
            if work is not STOP:
                self._abandon(work[0].items)
