"""Wiring: build the stages, connect them with bounded hand-offs, run, drain, exit.

    consumer thread     Source: poll -> parse -> tokenize (per poll) -> InputHandoff (pauses when full)
                        also: commits (the Committer), rebalance callbacks, lag
    batcher thread      InputHandoff -> Batcher -> batch queue (one batch waiting per stream)
                        also: swaps in a reloaded bundle between batches, purges revoked inputs
    model threads       batch queue -> Runner.classify -> sink queue (capacity 4); one per
                        inference stream, each on threads/streams intra-op threads
                        (worker/model_stage.py)
    sink thread         sink queue -> producer.send; delivery callbacks ack offsets in the tracker
    watcher thread      BundleWatcher: verifies and loads new bundles in the background (none
                        in a feeder: its model process reloads, and the link offers the result)
    telemetry thread    /metrics, /healthz, /readyz

Start-up fails fast (settings, bundle, broker, topics) before anything is consumed, and the
model is warmed up at the largest batch first. The model comes from a ``ModelHost``
(worker/inference.py): loaded here (worker/local_model.py), or, in a feeder process of a pod
with ``TAGSTREAM_PROCESSES`` > 1, served by the pod's model process (worker/procs/).

``stop()`` (SIGTERM/SIGINT) starts the drain: fetching stops, the batcher flushes, the producer
flushes, acknowledged offsets are committed, all within ``drain_timeout_s``; then ``wait()``
returns 0. A fatal error anywhere takes the same path (committing only what was acknowledged) and
``wait()`` returns its exit code.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from model.cpus import available_cpus
from worker.affinity import PinPlan, pin_this_thread, plan_pinning, release_this_thread
from worker.batcher import Batch, Batcher, BatchLimits
from worker.call_journal import CallJournal, DeathCounts, process_identity
from worker.committer import Committer, OffsetCommitter, commit_failure
from worker.errors import BrokerError, Failure, SettingsError, WorkerError
from worker.events import DeadLetter, Event, ParseConfig
from worker.handoff import InputHandoff
from worker.heap import HeapFreezer
from worker.inference import ModelHost, Runner
from worker.kafka.base import ConsumerClient, ProducerClient, open_clients
from worker.kafka.tls import check_tls
from worker.model_stage import STOP, ModelStage, Results
from worker.offsets import OffsetTracker
from worker.reload import RunnerSlot
from worker.settings import WorkerSettings
from worker.sink import Router, Sink
from worker.source import Source
from worker.stages import StageClock, name_native_threads
from worker.telemetry import Health, Metrics, TelemetryServer, get_logger
from worker.transactions import Barrier, TransactionalCommitter, transactional_id

log = get_logger("tagstream.worker")

IDLE_WAIT_S = 0.1  # batcher wake-up when idle: bounds how fast it notices a shutdown or a revocation
SINK_QUEUE_BATCHES = 4  # model threads -> sink: enough to overlap, small enough to bound memory
COMMIT_FAILURE_LOG_EVERY_S = 10.0  # at most one commit_failed line this often (the metric counts them all)
SINK_IDLE_S = 0.05  # the sink thread's wait for work: bounds how late a refused output is resent
DRAIN_RESERVE_MAX_S = 3.0  # of the drain deadline, kept for flush + commit + close
# A send that failed waiting for metadata up to this long after an outage ended is sent again, not
# taken for a missing topic: the clients block up to 15 s (SEND_MAX_BLOCK_MS, SEND_MAX_BLOCK_S).
OUTAGE_WINDOW_S = 20.0
# The consumer's close during an outage (Health.in_outage): its LeaveGroup, heartbeat and fetches
# would go unanswered. Each client waited ~5 s for them on a frozen broker before this; the group
# moves the partitions after the session timeout either way.
CLOSE_UNREACHABLE_S = 1.0
# The close when the last look found the broker away but not yet for as long as an outage counts (a
# broker that has just stopped, as when a node drains the broker and the worker at once; or a
# coordinator moving): the close and a static member's removal get this long. The removal's admin
# client had waited 15 s to bootstrap from a stopped broker (its start-up wait); a moving coordinator
# is found within it.
CLOSE_BROKER_AWAY_S = 2.0


def consumer_close_budget(health: Health, remaining_s: float) -> tuple[float, bool]:
    """How long the consumer's close may take, and whether it may leave the group (ask the
    coordinator): all of the drain's remainder only while the broker answered at the last look."""
    if health.in_outage():
        return CLOSE_UNREACHABLE_S, False
    budget = max(0.5, remaining_s)
    if health.broker_down_for() > 0:
        return min(CLOSE_BROKER_AWAY_S, budget), True
    return budget, True


class Worker:
    """One worker: everything between ``start()`` and ``wait()``'s exit code."""

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: Metrics | None = None,
        *,
        model: ModelHost | None = None,
        telemetry_host: str = "0.0.0.0",
        cpu_slot: int = 0,
        died_in: DeathCounts | None = None,
        transactional_process: str | None = None,
    ) -> None:
        self.settings = settings
        self._model = model  # None: load the bundle here (LocalModel), at start
        # A pod's feeder: deaths in model calls its supervisor counted from the journal (worker/call_journal.py).
        self._died_in = died_in
        # A pod's feeder: its name in the pod, for its transactional id (worker/transactions.py).
        self._transactional_process = transactional_process
        self._cpu_slot = cpu_slot  # which CPU of the mask its threads are pinned to (worker/affinity.py)
        self._pin: PinPlan | None = None
        self._model_threads_unpinned = False
        self._telemetry_host = telemetry_host
        self.metrics = metrics or Metrics()
        self.health = Health(broker_outage_s=settings.broker_outage_s, model_stall_s=settings.model_stall_s)
        self._exactly_once = settings.processing_guarantee == "exactly_once"
        self.tracker = OffsetTracker(finish_issued_on_revoke=not self._exactly_once, delivered_hints=not self._exactly_once)
        self.handoff: InputHandoff[Event, DeadLetter] = InputHandoff(settings.max_pending_events)
        self.telemetry: TelemetryServer | None = None
        self.slot: RunnerSlot | None = None
        self._stopping = threading.Event()
        self._commit_log_quiet_until = 0.0
        self._commit_failures_unlogged = 0
        self._stop_at: float | None = None
        self._fatal: WorkerError | None = None
        self._fatal_lock = threading.Lock()
        self._sink_queue: queue.Queue[Any] = queue.Queue(maxsize=SINK_QUEUE_BATCHES)
        self._streams = 1
        self._models: ModelStage | None = None  # the model threads' queue and counts, once started
        self._journal: CallJournal | None = None  # the model calls on disk (worker/call_journal.py)
        self._threads: dict[str, threading.Thread] = {}
        self._producer: ProducerClient | None = None
        self._consumer: ConsumerClient | None = None
        self._source: Source | None = None
        self._sink: Sink | None = None
        self._transactions: TransactionalCommitter | None = None
        self._limits = BatchLimits(settings.max_batch_size, settings.max_batch_tokens, settings.max_wait_ms / 1000)
        self.stage_clock = StageClock(self.metrics, enabled=settings.stage_timing)
        self.heap = HeapFreezer()
        # Of drain_timeout_s, the part kept for the final flush, commit and close.
        self._drain_reserve_s = min(DRAIN_RESERVE_MAX_S, settings.drain_timeout_s / 4)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Validate, load and warm up the model, connect, subscribe, start the stages.

        Raises WorkerError (with its Failure and exit code) when the worker cannot run.
        """
        try:
            self._start()
        except BaseException:
            self._close_connections()
            raise

    def _start(self) -> None:
        if self._model is None:
            from worker.local_model import LocalModel  # torch: imported only where the model runs

            self._model = LocalModel(self.settings)
        runner = self._model.open()
        self._streams = self._model.streams
        if getattr(self._model, "device", None) is not None:  # the model runs here (a feeder's does not)
            self._journal = CallJournal.open(self.settings.state_dir, self.settings.group_id, self._streams)
        self.slot = RunnerSlot(runner)
        self.metrics.set_model(runner.name, runner.version)
        self.health.model_ready = True
        with self._pinned():  # every thread started from here on: the clients' and the stages'
            self._start_telemetry()
            self._connect()
            self.heap.freeze()  # model, clients and all: out of the collector's scans (worker/heap.py)
            self._start_threads()
        if self.settings.stage_timing:
            name_native_threads()  # so per-thread CPU shows the stages and the client's threads

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        """Threads started inside run on one CPU (worker/affinity.py); the calling thread gets its
        own CPUs back after. The model threads leave the pin where the model computes on the CPU."""
        self._pin = plan_pinning(self.settings.cpu_pinning, available_cpus(), self._cpu_slot)
        device = getattr(self._model, "device", None)  # LocalModel's; a feeder's model is elsewhere
        self._model_threads_unpinned = device is not None and device.type == "cpu"
        if self._pin.cpu is None:
            log.info("cpu_pinning", cpu=None, reason=self._pin.reason)
            yield
            return
        log.info(
            "cpu_pinning", cpu=self._pin.cpu, reason=self._pin.reason,
            model_threads="unpinned (the model computes on the CPU)" if self._model_threads_unpinned else "pinned",
        )
        own = os.sched_getaffinity(0)
        pin_this_thread(self._pin.cpu)
        try:
            yield
        finally:
            release_this_thread(frozenset(own))

    def stop(self) -> None:
        """Begin a graceful drain (signal handlers, tests); returns at once."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
            log.info("stopping", drain_timeout_s=self.settings.drain_timeout_s)
        self._stopping.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the worker has drained and closed; the exit code (None on timeout)."""
        source = self._threads.get("source")
        if source is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            # Short joins keep the main thread responsive to signals.
            while source.is_alive():
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                source.join(0.2)
        for name, thread in self._threads.items():
            # batcher, model-N, sink: they end once the drain is done; one given up in a stalled
            # model call never will (exit_past_stuck_threads leaves it behind)
            if name != "watcher" and not (self._models is not None and self._models.given_up(thread)):
                thread.join(timeout=max(0.1, self._remaining()))
        self._close()
        if self._fatal is not None:
            return self._fatal.exit_code
        return 0

    def run(self) -> int:
        self.start()
        code = self.wait()
        return 0 if code is None else code

    @property
    def fatal(self) -> WorkerError | None:
        return self._fatal

    @property
    def metrics_port(self) -> int | None:
        return self.telemetry.port if self.telemetry else None

    # -- start-up steps ---------------------------------------------------------------------------
    def _start_telemetry(self) -> None:
        try:
            self.telemetry = TelemetryServer(
                self.metrics, self.health, self.settings.metrics_port, host=self._telemetry_host
            )
        except OSError as exc:
            raise SettingsError(
                f"TAGSTREAM_METRICS_PORT={self.settings.metrics_port}: cannot listen ({exc.strerror});"
                " pick a free port, or 0 for any"
            ) from exc
        self.telemetry.start()
        log.info("telemetry_listening", port=self.telemetry.port, paths=["/metrics", "/healthz", "/readyz"])

    def _connect(self) -> None:
        s = self.settings
        check_tls(s)  # a TLS problem is named at once, not after a bootstrap timeout
        process = self._transactional_process or process_identity(self._journal)
        txn_id = transactional_id(s.group_id, s.group_instance_id, process) if self._exactly_once else None
        self._consumer, self._producer = open_clients(s, transactional_id=txn_id)
        if txn_id is not None:
            # Fences an older worker with this id and aborts the transaction it left open.
            self._producer.init_transactions()
            log.info("transactions_ready", transactional_id=txn_id)
        for topic in s.input_topics:
            if not self._consumer.partitions_for_topic(topic):
                raise BrokerError(
                    f"input topic {topic!r} does not exist (TAGSTREAM_INPUT_TOPICS); create it, or fix the name",
                    Failure.TOPIC_MISSING,
                )

    def _start_threads(self) -> None:
        s = self.settings
        assert self.slot is not None and self._model is not None
        assert self._consumer is not None and self._producer is not None
        committer: OffsetCommitter
        if self._exactly_once:
            committer = self._transactions = TransactionalCommitter(
                self._consumer, self._producer, self.tracker, self.metrics,
                interval_s=s.commit_interval_ms / 1000, on_result=self._on_commit,
            )
            committer.attach(self.handoff)
            committer.begin()
        else:
            committer = Committer(
                self._consumer, self.tracker, interval_s=s.commit_interval_ms / 1000, on_result=self._on_commit
            )
        self._source = Source(
            self._consumer,
            topics=list(s.input_topics),
            pattern=s.subscription_pattern(),
            parse_config=ParseConfig(
                s.input_format, s.text_field, s.id_field, s.max_payload_bytes, s.dead_letter_max_bytes
            ),
            tracker=self.tracker,
            committer=committer,
            handoff=self.handoff,
            current_runner=lambda: self.slot.current,  # type: ignore[union-attr]
            metrics=self.metrics,
            health=self.health,
            revoke_grace_s=min(s.drain_timeout_s, 10.0),
            clock=self.stage_clock,
            journal=self._journal if self._journal is not None else self._died_in,
        )
        self._sink = Sink(
            self._producer, Router(s), self.tracker, self.metrics, self._fail,
            dead_letter_max_bytes=s.dead_letter_max_bytes, transactions=self._transactions, clock=self.stage_clock,
            broker_down=lambda: self.health.broker_down_for() > 0, stopping=self._stopping,
            broker_was_away=lambda: self.health.broker_away_within(OUTAGE_WINDOW_S),
        )
        self._source.subscribe()
        self._spawn("source", self._source_main)
        self._models = ModelStage(
            self._streams, tracker=self.tracker, metrics=self.metrics, health=self.health, clock=self.stage_clock,
            to_sink=self._to_sink, abandon=lambda items: self._abandon(items, release=False),
            on_stalled=self.tracker.mark_stalled, on_lost=self._abort_for_lost_batch, journal=self._journal,
            debug=s.log_level == "DEBUG",
        )
        self._spawn("sink", self._sink_main)
        for i in range(self._streams):
            self._spawn(f"model-{i}", self._model_main)
        self._spawn("batcher", self._batcher_main)
        reload_loop = self._model.watch(self.slot, self.metrics, self._stopping)
        if reload_loop is not None:
            self._spawn("watcher", reload_loop, daemon=True, watched=False)

    def _spawn(self, name: str, target: Callable[[], None], daemon: bool = False, watched: bool = True) -> None:
        def main() -> None:
            try:
                target()
            except BaseException as exc:
                self._fail(exc, stage=name)

        thread = threading.Thread(target=main, name=f"tagstream-{name}", daemon=daemon)
        self._threads[name] = thread
        thread.start()  # before /healthz watches it: a thread not started yet reads as dead
        if watched:
            self.health.watch(thread)

    # -- the stages -----------------------------------------------------------------------------
    def _source_main(self) -> None:
        assert self._source is not None
        try:
            self._source.run(self._stopping)
        except BaseException as exc:
            self._fail(exc, stage="source")  # recorded before the drain, whose own failure comes second
        finally:
            self.stop()  # whatever ended the loop, the rest drains
            deadline = (self._stop_at or time.monotonic()) + self.settings.drain_timeout_s
            try:
                left = self._source.drain(deadline - self._drain_reserve_s / 2, downstream_done=self._downstream_done)
                level = log.warning if left else log.info
                level("drained", unacknowledged_left_for_redelivery=left)
            except WorkerError as exc:
                self._fail(exc, stage="drain")
            finally:
                try:
                    assert self._consumer is not None
                    started = time.monotonic()
                    unreachable = self.health.in_outage()
                    budget_s, may_leave = consumer_close_budget(self.health, self._remaining())
                    self._consumer.close(budget_s, leave_group=self.settings.leave_group_on_stop and may_leave)
                    # How long the exit waited on the client (leaving the group, its I/O thread): a
                    # stop that outlasted its drain in CI left no trace of where the time went.
                    log.info("consumer_closed", seconds=round(time.monotonic() - started, 3),
                             broker_unreachable=unreachable, budget_s=round(budget_s, 1))
                except Exception as exc:
                    log.warning("consumer_close_failed", error=repr(exc))

    def _batcher_main(self) -> None:
        """Take inputs from the source, form batches, hand them to the model threads."""
        assert self.slot is not None and self._models is not None
        models = self._models
        batcher: Batcher[Event] = Batcher(self._limits)
        clock = self.stage_clock
        handoff = self.handoff
        tracker = self.tracker
        revocations = tracker.revocations
        try:
            while True:
                swapped = self.slot.swap_if_offered()
                if swapped is not None:
                    self._on_swap(swapped)
                if tracker.revocations != revocations:  # a rebalance began: drop what it revokes
                    revocations = tracker.revocations
                    self._abandon(batcher.remove_if(
                        lambda e: not tracker.accepts((e.topic, e.partition), e.epoch, e.offset)))
                now = time.monotonic()
                self.heap.tick(now)
                due = batcher.time_until_due(now)
                wait = IDLE_WAIT_S if due is None else min(due, IDLE_WAIT_S)
                events, letters, closed, barrier = handoff.take(wait)  # returns at once once closed
                t = clock.start()
                if closed and self._remaining() < self._drain_reserve_s:
                    # Shutting down and out of time: what has not run yet is redelivered after
                    # the restart; the time left is for flushing and committing what has.
                    late = [*batcher.remove_if(lambda _: True), *events]
                    self._abandon(late)
                    self._abandon(letters)
                    log.warning("drain_deadline_dropping", inputs=len(late) + len(letters))
                    return
                if letters:
                    keep, drop = tracker.split(letters)
                    self._abandon(drop, release=False)
                    if keep:
                        tracker.issue(keep)
                        self._to_sink(keep)
                    handoff.release(len(letters))
                if events:
                    kept, dropped = tracker.split(events)
                    if dropped:
                        self._abandon(dropped)
                    if tracker.runs_alone and any(e.alone for e in kept):
                        kept = self._run_alone(kept)
                    batcher.add_many(kept, [len(e.token_ids) for e in kept], [e.received for e in kept])
                flush = closed or barrier is not None  # a barrier closes every batch before it
                while (batch := batcher.next_batch(time.monotonic(), flush=flush)) is not None:
                    handoff.release(len(batch.items))
                    tracker.issue(batch.items)  # before a model thread checks them (see begin_revoke)
                    if not models.put(batch, self.slot.current):
                        self._abandon(batch.items, release=False)  # no model thread left
                clock.stop("batch", t, len(events))
                if barrier is not None:
                    self._pass_barrier(barrier)
                if closed and not events and not letters and barrier is None and len(batcher) == 0:
                    return
        finally:
            models.put_stops()
            for i in range(self._streams):
                model = self._threads.get(f"model-{i}")
                while model is not None and model.is_alive() and not models.given_up(model):
                    model.join(0.1)  # a thread given up in a stalled call never ends: not waited for
            self._put_stop_for_sink()

    def _run_alone(self, events: list[Event]) -> list[Event]:
        """Inputs that were in model calls given up as stalled go to the model in batches of their
        own (Event.alone), so that a call that hangs again names the input; returns the others."""
        assert self.slot is not None and self._models is not None
        others = []
        for event in events:
            if not event.alone:
                others.append(event)
                continue
            self.handoff.release(1)
            self.tracker.issue([event])
            n = event.n_tokens
            if not self._models.put(Batch([event], n, n, n, "alone"), self.slot.current):
                self._abandon([event], release=False)  # no model thread left
        return others

    def _model_main(self) -> None:
        """A model thread (worker/model_stage.py), on every core where the model computes on the CPU."""
        assert self._models is not None
        if self._pin is not None and self._pin.cpu is not None and self._model_threads_unpinned:
            release_this_thread(self._pin.allowed)  # its intra-op threads need every core
        self._models.run()

    def _sink_main(self) -> None:
        assert self._sink is not None
        sink = self._sink
        try:
            while True:
                sink.settle_pending()  # refused outputs; an abort asked for (exactly-once); idle topics
                try:
                    work = self._sink_queue.get(timeout=SINK_IDLE_S)
                except queue.Empty:
                    continue
                if work is STOP:
                    break
                if isinstance(work, Results):
                    sink.publish_results(work.events, work.classified, work.labels, work.model_name, work.model_version)
                elif isinstance(work, Barrier):
                    sink.commit_transaction(work, max(1.0, self._remaining()) if self._stop_at else 30.0)
                else:
                    sink.publish_dead_letters(work)
        finally:
            if not sink.flush(max(0.5, self._remaining())):
                log.warning("producer_flush_timed_out")

    # -- helpers of the stages -----------------------------------------------------------------------
    def _abandon(self, items: list[Event] | list[DeadLetter], release: bool = True) -> None:
        """Drop inputs of revoked partitions: the next owner reads them again."""
        for item in items:
            self.tracker.abandon((item.topic, item.partition), item.offset, item.epoch)
        if items:
            if release:
                self.handoff.release(len(items))
            log.debug("dropped_for_redelivery", count=len(items))

    def _on_swap(self, runner: Runner) -> None:
        self.heap.thaw(time.monotonic())  # the old model may hold reference cycles: collectable again
        self.metrics.set_model(runner.name, runner.version)
        self.metrics.bundle_reloads.labels(result="swapped").inc()
        log.info("bundle_swapped", name=runner.name, version=runner.version)

    def _to_sink(self, work: Any) -> None:
        """Queue work for the sink, blocking while it is full (backpressure), unless it died."""
        while True:
            try:
                self._sink_queue.put(work, timeout=0.5)
                return
            except queue.Full:
                sink = self._threads.get("sink")
                if sink is not None and not sink.is_alive():
                    return  # nothing will be acknowledged, so nothing is committed: redelivered

    def _pass_barrier(self, barrier: Barrier) -> None:
        """Exactly-once: once every batch issued before ``barrier`` is finished (its outputs are in
        the sink queue, ahead of it), the barrier follows them to the sink, which commits."""
        assert self._models is not None
        if self._models.wait_for_issued():
            self._to_sink(barrier)
        elif barrier.final and self._transactions is not None:
            # No model thread is left: what was issued before the barrier never finishes, so the
            # last transaction is aborted, not committed. It still reaches the sink, which ends the
            # drain at once and counts the inputs of a stalled call (TransactionalCommitter).
            self._transactions.request_abort("no model thread is left to finish the inputs before the last barrier")
            self._to_sink(barrier)
        # else nothing more will finish: this transaction is not committed (the final one aborts it)

    def _put_stop_for_sink(self) -> None:
        self._to_sink(STOP)

    # -- shutdown and failures ----------------------------------------------------------------------
    def _downstream_done(self) -> bool:
        sink = self._threads.get("sink")
        return sink is not None and not sink.is_alive()

    def _remaining(self) -> float:
        if self._stop_at is None:
            return self.settings.drain_timeout_s
        return self._stop_at + self.settings.drain_timeout_s - time.monotonic()

    def _close_connections(self) -> None:
        """After a failed start: close whatever was opened, quietly."""
        for client in (self._consumer, self._producer):
            if client is None:
                continue
            try:
                client.close(2.0)
            except Exception as exc:
                log.debug("close_after_failed_start", error=repr(exc))
        self._consumer = self._producer = None
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None
        if self._journal is not None:
            self._journal.close()

    def _close(self) -> None:
        if self._producer is not None:
            try:
                started = time.monotonic()
                self._producer.close(max(1.0, self._remaining()))
                log.info("producer_closed", seconds=round(time.monotonic() - started, 3))
            except Exception as exc:
                log.warning("producer_close_failed", error=repr(exc))
            self._producer = None
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None
        self.health.model_ready = False
        self.heap.release()
        if self._journal is not None:
            self._journal.close()

    def _fail(self, exc: BaseException, stage: str = "sink") -> None:
        """Record a fatal error (the first one wins) and start the drain."""
        error = exc if isinstance(exc, WorkerError) else WorkerError(f"the {stage} stage crashed: {exc!r}")
        with self._fatal_lock:
            first = self._fatal is None
            if first:
                self._fatal = error
        if first:
            self.metrics.count_failure(error.failure)
            log.error(
                "fatal", stage=stage, kind=error.failure.label, error=str(error), exit_code=error.exit_code,
                exc_info=not isinstance(exc, WorkerError),
            )
        if error.failure is Failure.MODEL_STALLED and self._models is not None:
            self._models.give_up_stalled(before_counting=self._abort_for_stall)
        self.stop()

    def _abort_for_stall(self) -> None:
        """A model call was given up (exactly-once): the open transaction is aborted before that batch
        counts as done and a barrier can pass it. Committed, it would hold outputs of inputs after the
        ones given up, whose offsets stay behind: a successor would publish them again."""
        if self._transactions is not None:
            self._transactions.request_abort("a model call stalled")

    def _abort_for_lost_batch(self) -> None:
        """A model thread failed for good with a batch in its call (a pod's model process lost, a call
        it gave up as stalled, a model that fails every input): as for a stall, exactly-once aborts
        the open transaction before that batch counts as done. Committed, it held the outputs of
        later batches past the lost one's offsets: 1,430 of 3,000 inputs published twice in
        test_exactly_once.py before this."""
        if self._transactions is not None:
            self._transactions.request_abort("a model thread failed with a batch in its call")

    def _on_commit(self, positions: dict, error: BaseException | None) -> None:
        if error is None:
            self.metrics.commits.labels(result="ok").inc()
            # A commit of nothing (an exactly-once worker's final, empty transaction) asks no broker and
            # says nothing of one: taken for an answer, it ended the outage an exit 4 was stopping for,
            # and the consumer's close then waited to leave the group (bench/outsider/frozen_exit.sh)
            if positions:
                self.health.commit_result(ok=True)
            return
        self.metrics.commits.labels(result="failed").inc()
        failure = commit_failure(error)
        self.metrics.count_failure(failure)
        now = time.monotonic()
        if now < self._commit_log_quiet_until:  # an outage fails every commit: say so every few seconds
            self._commit_failures_unlogged += 1
            return
        self._commit_log_quiet_until = now + COMMIT_FAILURE_LOG_EVERY_S
        # A timeout or a lost connection says the broker is away; a rebalance says nothing about it.
        original = error.failure if isinstance(error, WorkerError) else Failure.INTERNAL
        self.health.commit_result(
            ok=False, broker_unreachable=original in (Failure.BROKER_UNREACHABLE, Failure.KAFKA_TRANSIENT)
        )
        log.warning(
            "commit_failed", kind=failure.label, error=str(error), partitions=len(positions),
            failed_since_last_line=self._commit_failures_unlogged,
        )
        self._commit_failures_unlogged = 0


def exit_past_stuck_threads(code: int) -> None:
    """Exit with ``code`` at once if a thread of ours is still running once the worker has stopped (a
    model call that never returned: TAGSTREAM_MODEL_STALL_S): the interpreter would wait for it at
    exit for ever, and a hung process is never restarted. Returns when none is left."""
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not stuck:
        return
    log.error("exiting_past_stuck_threads", threads=stuck, exit_code=code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
