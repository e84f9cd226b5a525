"""Exactly-once processing: outputs and input offsets committed in one Kafka transaction.

``TAGSTREAM_PROCESSING_GUARANTEE=exactly_once`` replaces the at-least-once ``Committer`` with
``TransactionalCommitter`` (the same entry points for the source) and makes the producer
transactional. Every commit interval:

    consumer thread   puts a Barrier (with the consumer's group metadata) into the input hand-off
    batcher thread    finishes every input before the barrier (flushes the batcher, waits for the
                      model threads), then passes the barrier to the sink queue
    sink thread       has sent every output before the barrier; at the barrier: flush (all
                      acknowledged), send_offsets_to_transaction(acknowledged positions, group
                      metadata), commit_transaction, begin_transaction

So a transaction holds exactly the outputs of the inputs below the offsets it commits, and a
reader with ``isolation_level=read_committed`` sees each input's outcome once.

Aborts. Anything that fails a transaction (a failed flush or commit, a record the broker refuses
inside it, a revocation) aborts it: its outputs are discarded, and every partition is re-read from
the last committed transaction (the tracker starts a new epoch, so queued and running work is
dropped; the consumer seeks back). A record the broker refused is remembered, so when it comes
round again its bounded dead letter goes instead (and if that is refused too, it is skipped):
a refusal cannot loop. A fenced producer (a newer worker with the same transactional id) or a
fenced group member is fatal: this worker is a zombie and exits. The producer bounds every
transactional call, so a client library that never returns (librdkafka after a broker restart)
fails the transaction like any other failure instead of holding the sink thread; an abort that
cannot wait for the consumer thread's rewind (it has stopped) ends the sink with a clear error.

A stalled model call (TAGSTREAM_MODEL_STALL_S) aborts the final transaction too, since the inputs
it gave up hold back what may be committed. So that an input that hangs the model every time does
not restart the worker for ever, the inputs of the given-up call are then counted in one more
transaction, which holds no output and commits the last committed positions again with the counts
in the offsets' metadata (worker/delivered_hints.py): the next worker runs those inputs alone, and
dead-letters one that hangs again. Commits also carry the counts of inputs read from such a hint.
Counts not committed yet are recorded so after every abort, not only the final one, and before
the consumer thread may leave the group: an abort for a revocation is the last chance to commit
them for partitions that move to another member.

Fencing (what kafka-python 3.0.12 offers, and its limits):

- ``send_offsets_to_transaction`` gets the consumer's ``group_metadata()`` (KIP-447: group id,
  generation, member id, instance id), so the broker refuses offsets from a member whose
  generation is over: a worker that lost its partitions in a rebalance cannot commit them.
- The transactional id is ``<group_id>.<group_instance_id>`` when static membership is on (in
  Kubernetes, the pod name): a restarted worker's ``init_transactions`` fences its predecessor
  and aborts the transaction it left open at once. Without an instance id the id is unique per
  process, so a crashed worker's open transaction holds back read_committed readers of its
  output partitions until ``transaction.timeout.ms`` (TAGSTREAM_TRANSACTION_TIMEOUT_MS) expires.
- kafka-python implements the classic (eager) rebalance protocol only; every rebalance revokes
  every partition, and the open transaction is aborted (at most one commit interval of work is
  redone).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from worker.errors import BrokerError, Failure, WorkerError
from worker.kafka.base import ConsumerClient, ProducerClient, Sleep, TopicPartition
from worker.offsets import OffsetTracker, ResumePoint
from worker.telemetry import Metrics, get_logger

log = get_logger("tagstream.worker.transactions")

REWIND_WAIT_S = 30.0  # the sink waits this long for the consumer thread to rewind after an abort


@dataclass(frozen=True)
class Barrier:
    """A transaction boundary travelling through the pipeline after the inputs it closes."""

    seq: int
    group_metadata: Any  # the consumer's membership when the barrier was made (KIP-447)
    final: bool = False  # the last one before the worker stops


def transactional_id(group_id: str, instance_id: str | None, process: str | None = None) -> str:
    """Stable across restarts with static membership; else ``process``: the worker's call-journal set
    (``CallJournal.identity``: its state folder's id and the set's name, held by one live worker at a
    time and taken by the next one to start on that folder), for a pod's feeder that set and its
    index (worker/procs/plan.py); without a journal (TAGSTREAM_STATE_DIR empty), this process's pid.

    A producer that starts with its predecessor's id fences it and aborts the transaction it left
    open. Under any other id that transaction stays open until the broker times it out
    (TAGSTREAM_TRANSACTION_TIMEOUT_MS), and read_committed readers of the output partitions it
    wrote to see nothing past it meanwhile."""
    if instance_id:
        return f"{group_id}.{instance_id}"
    return f"{group_id}.{socket.gethostname()}.{process or os.getpid()}"


class TransactionalCommitter:
    """Barriers and rewinds on the consumer thread; commits and aborts on the sink thread."""

    def __init__(
        self,
        consumer: ConsumerClient,
        producer: ProducerClient,
        tracker: OffsetTracker,
        metrics: Metrics,
        *,
        interval_s: float,
        on_result: Callable[[dict[TopicPartition, int], BaseException | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._tracker = tracker
        self._metrics = metrics
        self._interval_s = interval_s
        self._on_result = on_result
        self._clock = clock
        self._next_at = clock() + interval_s
        self._handoff: Any = None
        self._seq = 0
        # Set by a revocation or a refused record (any thread; a plain flag: a commit that races
        # it is still consistent), honoured by the sink before its next output or commit.
        self._abort_requested = False
        self._abort_why = ""  # what asked for it, for the log line and the drain's error
        self._rewind_requested = threading.Event()  # sink -> consumer thread
        self._rewound = threading.Event()  # consumer thread -> sink
        self._final_done = threading.Event()
        self._final_aborted: str | None = None  # why the last transaction was aborted, if it was
        self._final_put = False  # the last barrier is out: no more after it (consumer thread)
        self._source_done = threading.Event()  # the consumer thread rewinds no more (it has stopped)
        self._in_transaction = False

    def attach(self, handoff: Any) -> None:
        """The hand-off the barriers go into (set once the pipeline is built)."""
        self._handoff = handoff

    # -- the sink thread -----------------------------------------------------------------------
    def begin(self) -> None:
        if not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    @property
    def abort_pending(self) -> bool:
        """An abort was asked for and has not happened yet (any thread)."""
        return self._abort_requested

    def request_abort(self, why: str) -> None:
        """Doom the open transaction (any thread): the sink aborts it before committing anything."""
        if not self._abort_requested:
            log.warning("transaction_abort_requested", reason=why)
            self._abort_why = why
        self._abort_requested = True

    def abort_if_requested(self) -> bool:
        """Abort now if asked to (sink thread, between outputs); True when it did."""
        if not self._abort_requested:
            return False
        self._abort_and_rewind(self._abort_why)
        return True

    def commit(self, barrier: Barrier, flush: Callable[[], bool]) -> bool:
        """Commit the open transaction at ``barrier`` (sink thread); False when it was aborted instead."""
        if self._final_done.is_set():
            return True  # the last transaction is committed: nothing is open, nothing comes after it
        def abort(why: str) -> None:
            if barrier.final:
                self._abort_last(why, barrier.group_metadata)
            else:
                self._abort_and_rewind(why)

        if self._abort_requested:
            abort(self._abort_why)
            return False
        if not flush() or self._abort_requested:
            abort("the outputs were not all acknowledged")
            return False
        # Stalled counts not committed yet ride along, at the last committed position where nothing
        # advanced (after a rewind, an aborted call's partition holds nothing past it).
        stalled = self._tracker.stalled_positions()
        positions = stalled | self._tracker.committable()
        try:
            if positions:
                self._producer.send_offsets_to_transaction(
                    positions, barrier.group_metadata, metadata=self._tracker.hints(positions)
                )
            self._producer.commit_transaction()
        except BrokerError as exc:
            if exc.failure in (Failure.PRODUCER_FENCED, Failure.INSTANCE_FENCED):
                raise
            self._report(positions, exc)
            abort(f"the commit failed: {exc}")
            return False
        self._in_transaction = False
        self._tracker.mark_committed(positions)
        self._metrics.transactions.labels(result="committed").inc()
        self._report(positions, None)
        if stalled:
            _log_counted({tp: positions[tp] for tp in stalled})
        if barrier.final:
            self._final_done.set()
        else:
            self.begin()
        return True

    def _abort_and_rewind(self, why: str) -> None:
        """Abort the open transaction, count the inputs of stalled model calls (``_record_stalled``:
        a revocation may be under way, and after it the partitions may be another member's), then
        have the consumer thread re-read from the last commit."""
        self._abort(why)
        self._record_stalled(None, final=False)
        self._rewound.clear()
        self._rewind_requested.set()
        # Nothing may be sent until the old epochs are over, or stale outputs would join the next
        # transaction: wait for the consumer thread (it turns every 100 ms), unless it has stopped.
        deadline = time.monotonic() + REWIND_WAIT_S
        while not self._rewound.wait(0.05):
            if self._source_done.is_set():
                raise WorkerError(
                    "a transaction was aborted after the consumer stopped: its inputs are read again after the"
                    " restart", Failure.FINAL_COMMIT_FAILED,
                )
            if time.monotonic() >= deadline:
                raise WorkerError("the consumer did not rewind after an aborted transaction", Failure.INTERNAL)
        self.begin()

    def _abort_last(self, why: str, group_metadata: Any) -> None:
        """Abort the final transaction (the worker is stopping): nothing is re-read here, as the
        next owner of the partitions reads from the last commit, and the drain learns at once
        instead of waiting out its timeout for a commit that is not coming. First, count the inputs
        of stalled model calls (``_record_stalled``): the consumer thread waits for ``_final_done``
        before it leaves the group, and a member that has left cannot commit (UnknownMemberId)."""
        self._abort(why, final=True)
        self._final_aborted = why
        try:
            self._record_stalled(group_metadata)
        finally:
            self._final_done.set()

    def _record_stalled(self, group_metadata: Any | None, final: bool = True) -> None:
        """After an abort: count the inputs of stalled model calls in a transaction of their own,
        at the last committed positions (see the module docstring). Failing costs no input, only
        the count (after the final abort: the next worker runs them in batches again; before it,
        they ride on the next commit). ``group_metadata`` None: the consumer's membership now."""
        positions = self._tracker.stalled_positions()
        if not positions:
            return
        if group_metadata is None:  # rare: read the membership (a short lock) only when needed
            group_metadata = self._consumer.group_metadata()
        hints = self._tracker.hints(positions)
        try:
            self.begin()
            self._producer.send_offsets_to_transaction(positions, group_metadata, metadata=hints)
            self._producer.commit_transaction()
        except BrokerError as exc:
            log.warning("stalled_inputs_not_counted", error=str(exc), consequence=(
                "the next worker runs them in batches again, and may stall on them again" if final
                else "they ride on the next commit, unless their partitions move first"))
            with contextlib.suppress(BrokerError):
                self._producer.abort_transaction()
            return
        finally:
            self._in_transaction = False
        self._tracker.mark_committed(positions)
        self._report(positions, None)
        _log_counted(positions)

    def _abort(self, why: str, final: bool = False) -> None:
        try:
            if self._in_transaction:
                self._producer.abort_transaction()
        except BrokerError as exc:
            if exc.failure in (Failure.PRODUCER_FENCED, Failure.INSTANCE_FENCED):
                raise
            raise WorkerError(f"the transaction could not be aborted: {exc}", Failure.DELIVERY_FAILED) from exc
        self._in_transaction = False
        self._abort_requested = False
        self._metrics.transactions.labels(result="aborted").inc()
        self._metrics.count_failure(Failure.TRANSACTION_ABORTED)
        log.warning("transaction_aborted", reason=why, final=final)

    # -- the consumer thread (the source's committer interface) -----------------------------------
    def service(self) -> None:
        """After an abort: new epochs for every partition and seeks back to the last commit."""
        if self._rewind_requested.is_set():
            self._rewind(self._consumer.assignment())

    def _rewind(self, partitions: Iterable[TopicPartition]) -> None:
        self._rewind_requested.clear()
        seeks = self._tracker.restart_from_committed(partitions)
        for tp, position in seeks.items():
            self._consumer.seek(tp, position)
        log.info("rewound_to_last_transaction", positions={f"{tp.topic}[{tp.partition}]": o for tp, o in seeks.items()})
        self._rewound.set()

    def commit_if_due(self) -> None:
        """Every interval, a barrier after what was read so far, if anything was."""
        now = self._clock()
        if now < self._next_at:
            return
        self._next_at = now + self._interval_s
        if self._handoff is not None and not self._final_put and self._tracker.uncommitted():
            self._put_barrier(final=False)

    def before_drain(self, handoff: Any) -> None:
        """The last barrier: the sink commits everything before it, then reports done."""
        self._put_barrier(final=True)
        self._final_put = True

    def commit_now(self, partitions: Iterable[TopicPartition] | None = None, timeout_s: float = 10.0) -> dict:
        """At shutdown: wait for the sink's final transaction (the source must not leave the group first)."""
        deadline = time.monotonic() + timeout_s
        try:
            # An abort just before the final barrier (a stalled model call given up, a revocation)
            # waits for this thread's rewind: keep serving it while waiting.
            while not self._final_done.wait(0.05):
                self.service()
                if time.monotonic() >= deadline:
                    break
            if self._final_aborted is not None:
                raise BrokerError(
                    f"the final transaction was aborted ({self._final_aborted}): the inputs after the last"
                    " commit are read again after the restart", Failure.FINAL_COMMIT_FAILED,
                )
            if not self._final_done.is_set() and self._tracker.uncommitted():
                raise BrokerError(
                    f"the final transaction did not commit within {timeout_s:.0f} s", Failure.FINAL_COMMIT_FAILED
                )
        finally:
            self._source_done.set()  # the consumer thread leaves: an abort from now on cannot wait for its rewind
        return {}

    async def settle(self, partitions: set[TopicPartition], sleep: Sleep | None, deadline: float) -> dict:
        """Revocation: abort the open transaction (its outputs are discarded) and wait for it.

        The revoked partitions keep their state for the source's revocation (which resumes them
        at their last commit if they come straight back); any others are rewound here.
        """
        self.request_abort("partitions revoked")
        if sleep is not None:
            # The sink aborts and asks for a rewind, or (at the final barrier) aborts for good.
            while not self._rewind_requested.is_set() and not self._final_done.is_set() and time.monotonic() < deadline:
                await sleep(0.01)
        if self._rewind_requested.is_set():  # the sink aborted and waits for this thread
            self._rewind(self._consumer.assignment() - partitions)
        return {}

    def resume_points(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, ResumePoint]:
        """Exactly-once resumes at the last committed transaction: nothing after it is delivered."""
        return self._tracker.committed_points(partitions)

    # -- helpers ----------------------------------------------------------------------------------
    def _put_barrier(self, final: bool) -> None:
        self._seq += 1
        self._handoff.put_barrier(Barrier(self._seq, self._consumer.group_metadata(), final=final))

    def _report(self, positions: dict[TopicPartition, int], error: BaseException | None) -> None:
        if self._on_result is not None:
            self._on_result(positions, error)


def _log_counted(positions: dict[TopicPartition, int]) -> None:
    log.info("stalled_inputs_counted", positions={f"{tp.topic}[{tp.partition}]": p for tp, p in positions.items()},
             why="inputs of a model call given up as stalled: the next worker runs them alone, then dead-letters"
             " one that stalls again")
