"""The consumer stage: poll, parse, tokenize per poll, hand over; backpressure; rebalances.

One thread owns the ``KafkaConsumer`` (it is not thread-safe): it polls every
``POLL_TIMEOUT_MS`` even while paused, which keeps ``max.poll.interval.ms`` satisfied, so the
group never evicts a worker that is merely busy. When the batcher has ``capacity``
inputs waiting, every assigned partition is paused; below half it resumes.

Rebalances (kafka-python runs the listener on its I/O loop, so it is asynchronous and awaits
instead of blocking the heartbeats):

- revoked: inputs of those partitions still queued past the highest one already issued to
  the model are dropped (the batcher purges them); batches already in the model or the producer
  are finished, and so are queued inputs below that offset (batches leave in length order, not
  offset order: dropping one of those would hold the commit back below published results, which
  the next owner would publish again). The listener waits up to ``revoke_grace_s`` for their
  acknowledgements, commits the acknowledged prefix, then forgets the partitions. Whatever was
  dropped is redelivered to the next owner: never committed unprocessed.
- lost (session expired): forget without committing; another member owns them already.
- assigned: start tracking under a fresh epoch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from worker.call_journal import CallJournal, DeathCounts
from worker.committer import OffsetCommitter
from worker.delivered_hints import read_hints
from worker.errors import BrokerError, Failure, WorkerError
from worker.events import DeadLetter, Event, ParseConfig, parse_record
from worker.handoff import InputHandoff
from worker.inference import Runner
from worker.kafka.base import ConsumerClient, Sleep, TopicPartition
from worker.offsets import OffsetTracker, ResumePoint
from worker.retention import DeletedInputWatch
from worker.sink import input_dead_letter
from worker.stages import StageClock
from worker.telemetry import Health, Metrics, get_logger

log = get_logger("tagstream.worker.source")

POLL_TIMEOUT_MS = 100  # how long one poll may wait for data: bounds shutdown and backpressure reaction
# While paused a poll returns nothing and would wait its whole timeout, by which time a fast model
# has emptied the hand-off and then sits idle until the client has fetched again. A short wait
# resumes at the half mark, with work still queued.
PAUSED_POLL_TIMEOUT_MS = 5
LAG_INTERVAL_S = 5.0  # how often the per-partition lag gauges are refreshed


class Source:
    """Owns the consumer: the poll loop, backpressure, rebalance handling and the commit calls."""

    def __init__(
        self,
        consumer: ConsumerClient,
        *,
        topics: list[str],
        pattern: str | None,
        parse_config: ParseConfig,
        tracker: OffsetTracker,
        committer: OffsetCommitter,
        handoff: InputHandoff[Event, DeadLetter],
        current_runner: Callable[[], Runner],
        metrics: Metrics,
        health: Health,
        revoke_grace_s: float,
        max_poll_records: int = 500,
        clock: StageClock | None = None,
        journal: CallJournal | DeathCounts | None = None,
    ) -> None:
        self._consumer = consumer
        self._clock = clock or StageClock(metrics, enabled=False)
        self._topics = topics
        self._pattern = pattern
        self._parse_config = parse_config
        self._tracker = tracker
        self._committer = committer
        self._handoff = handoff
        self._current_runner = current_runner
        self._metrics = metrics
        self._health = health
        self._revoke_grace_s = revoke_grace_s
        self._max_poll_records = max_poll_records
        self._paused = False
        self._in_counters: dict[str, Any] = {}
        # Per partition, the offset after the last one counted in events_in: a record read again
        # (after a rebalance or a rewind) is not counted twice.
        self._counted_upto: dict[TopicPartition, int] = {}
        self._lag_at = 0.0
        self._end_offsets: dict[TopicPartition, int] = {}
        # Per partition: when it was last read from (monotonic) and its last record's timestamp (ms).
        self._last_read: dict[TopicPartition, tuple[float, int]] = {}
        self._rewind: dict[TopicPartition, ResumePoint] = {}  # where revoked partitions resume
        # Assigned from elsewhere: their commits' hints are read before their records are handed on.
        self._hints_wanted: set[TopicPartition] = set()
        self._deleted = DeletedInputWatch(consumer, metrics)  # inputs deleted before they were read
        # Inputs that earlier processes on this host died in model calls with (worker/call_journal.py),
        # counted beside the commits' hints; usually empty. A pod's feeder: the counts its supervisor read.
        self._journal = journal
        self._died_in = journal.counts if journal is not None else {}
        if self._died_in:
            tracker.runs_alone = True

    # -- the loop --------------------------------------------------------------------------
    def subscribe(self) -> None:
        self._consumer.subscribe(
            topics=None if self._pattern is not None else self._topics, pattern=self._pattern, handler=self
        )

    def run(self, stopping: threading.Event) -> None:
        """Poll until ``stopping`` is set; then hand over to ``drain`` (called by the app)."""
        while not stopping.is_set():
            records = self._poll(PAUSED_POLL_TIMEOUT_MS if self._paused else POLL_TIMEOUT_MS)
            if self._hints_wanted:
                self._read_hints()
            if records:
                self._ingest(records)
            self._deleted.check()  # before the commit below: a new partition's committed offset is the group's
            self._apply_backpressure()
            self._watch_broker()
            self._watch_model()
            t = self._clock.start()
            self._committer.service()
            if not self._health.broker_down_for():  # no commit attempts into a known outage
                self._committer.commit_if_due()
            self._clock.stop("commit", t)
            self._refresh_lag()
            self._metrics.in_flight.set(self._tracker.in_flight())

    def drain(self, deadline: float, downstream_done: Callable[[], bool]) -> int:
        """Stop fetching, let in-flight inputs finish, commit; returns the inputs left unacknowledged.

        Keeps polling (paused) so the group keeps this member while it drains; stops waiting
        at ``deadline`` (time.monotonic) or once downstream has finished (no more acks can come).
        """
        self._pause_all()
        self._committer.before_drain(self._handoff)
        self._handoff.close()
        while time.monotonic() < deadline:
            if self._tracker.in_flight() == 0 or downstream_done():
                break
            self._poll(timeout_ms=20)
            self._pause_all()  # a rebalance during the drain brings unpaused partitions
            self._committer.service()
            self._committer.commit_if_due()
        left = self._tracker.in_flight()
        self._metrics.in_flight.set(left)
        # The drain has waited: what is still in flight now will not be acknowledged before the
        # consumer closes, so the revocation that closing brings commits at once instead of
        # waiting revoke_grace_s more (past drain_timeout_s, towards the orchestrator's SIGKILL).
        self._revoke_grace_s = 0.0
        try:
            self._committer.commit_now(timeout_s=max(1.0, deadline - time.monotonic()))
        except Exception as exc:
            raise BrokerError(
                f"the final offset commit failed ({exc}): results already published for inputs after the last"
                " committed offsets will be published again after the restart (duplicates, nothing lost)",
                Failure.FINAL_COMMIT_FAILED,
            ) from exc
        return left

    def _poll(self, timeout_ms: int = POLL_TIMEOUT_MS) -> dict:
        t = self._clock.start()
        try:
            records = self._consumer.poll(timeout_ms, self._max_poll_records)
        except BrokerError as exc:
            if exc.failure in (Failure.KAFKA_TRANSIENT, Failure.COMMIT_FAILED, Failure.BROKER_UNREACHABLE):
                self._metrics.count_failure(exc.failure)
                log.warning("poll_failed_retrying", error=str(exc), kind=exc.failure.label)
                self._health.loop_turned()
                return {}
            raise
        self._clock.stop("fetch", t, sum(len(b) for b in records.values()) if self._clock.enabled and records else 0)
        self._health.loop_turned()
        return records

    def _ingest(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Parse one poll's records, tokenize its texts in one call, and hand them over."""
        clock = self._clock
        received = time.monotonic()
        events: list[Event] = []
        letters: list[DeadLetter] = []
        parse, config = parse_record, self._parse_config
        n = 0
        for tp, batch in records.items():
            t = clock.start()
            # Re-read after a rebalance with their outputs already acknowledged: tracked, not re-run.
            delivered = self._tracker.delivered(tp, batch[0].offset)
            skip = {r.offset for r in batch if r.offset in delivered} if delivered else None
            stalled = self._tracker.stalled_counts(tp)  # usually empty
            died = self._tracker.died_counts(tp)  # a pod's model process died in calls with them; usually empty
            journal = self._died_in.get(tp) if self._died_in else None  # this host's worker did; usually None
            try:
                epoch = self._tracker.track(tp, [r.offset for r in batch])
            except KeyError:
                continue  # revoked between fetch and now: the next owner reads them
            self._count_in(tp, batch)
            self._deleted.read(tp, batch[0].offset, batch[-1].offset)
            self._last_read[tp] = (received, batch[-1].timestamp)
            t = clock.stop("track", t)
            for record in batch:
                if skip and record.offset in skip:
                    continue
                item = parse(record, config, received, epoch)
                if (stalled or died or journal) and type(item) is Event:
                    hung = stalled.get(record.offset, 0) if stalled else 0
                    deaths, alone = died.get(record.offset, (0, 0)) if died else (0, 0)
                    if journal:  # never in the hint's counts too (worker/call_journal.py): they add up
                        more, more_alone = journal.get(record.offset, (0, 0))
                        deaths, alone = deaths + more, alone + more_alone
                    if hung or deaths:
                        item = _after_stalls(item, hung, deaths, alone)
                if type(item) is Event:
                    events.append(item)
                else:
                    letters.append(item)  # type: ignore[arg-type]
            n += len(batch)
            clock.stop("parse", t, len(batch))
        t = clock.start()
        if events:
            runner = self._current_runner()
            events, rejected = tokenize_events(runner, events, self._metrics)
            letters.extend(rejected)
        t = clock.stop("tokenize", t, len(events))
        self._handoff.put(events, letters)
        clock.stop("track", t, n)

    def _count_in(self, tp: TopicPartition, batch: list[Any]) -> None:
        """Count records in events_in once each, however often they are read."""
        upto = self._counted_upto.get(tp, -1)
        last = batch[-1].offset
        if batch[0].offset < upto and self._started_over(tp, batch[0].offset):
            upto = batch[0].offset
        if last < upto:
            return
        new = len(batch) if batch[0].offset >= upto else sum(1 for r in batch if r.offset >= upto)
        self._counted_upto[tp] = last + 1
        counter = self._in_counters.get(tp.topic)
        if counter is None:
            counter = self._in_counters[tp.topic] = self._metrics.events_in.labels(topic=tp.topic)
        counter.inc(new)

    def _started_over(self, tp: TopicPartition, first: int) -> bool:
        """Whether a read from ``first``, below what was counted, is of a log that started over; if
        so, what was kept of the old log is reset.

        Re-reads (after a rebalance, a rewind, an aborted transaction) resume at or past the
        position last committed; only a log that starts over (the topic deleted and created again,
        its offsets from 0) is read below it: librdkafka resets to it within the assignment,
        kafka-python after the deletion's revocation. Its records are new: they count in events_in,
        and the partition's position counts from them."""
        committed = self._tracker.last_commit(tp)
        if committed is None or first >= committed:
            return False
        self._tracker.started_over(tp, first)
        self._end_offsets.pop(tp, None)  # the old log's: the lag waits for the new one's
        self._deleted.forget({tp})  # its expected offsets were the old log's too
        log.warning(
            "input_offsets_started_over", partition=_name(tp), read_from=first, committed_before=committed,
            hint="the input topic was deleted and created again (or truncated) under this worker: its records are"
            " read from the start of the new log",
        )
        return True

    # -- backpressure ----------------------------------------------------------------------
    def _apply_backpressure(self) -> None:
        if not self._paused and self._handoff.over_capacity:
            self._paused = True
            self._pause_all()
            self._metrics.paused.set(1)
            log.debug("paused", pending=self._handoff.pending)
        elif self._paused and self._handoff.below_resume_mark:
            self._paused = False
            assigned = self._consumer.assignment()
            if assigned:
                self._consumer.resume(assigned)
            self._metrics.paused.set(0)
            log.debug("resumed", pending=self._handoff.pending)
        elif self._paused:
            self._pause_all()  # partitions assigned since the pause start unpaused

    def _pause_all(self) -> None:
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.pause(assigned)

    # -- broker health ------------------------------------------------------------------------
    def _watch_broker(self) -> None:
        """Tell health whether the group coordinator answers; past the outage limit, give up."""
        known = self._consumer.coordinator_known()
        self._health.broker_seen(known, silent_s=0.0 if known else self._consumer.silent_for())
        down_s = self._health.broker_down_for()
        if down_s > self._health.broker_outage_s:
            raise BrokerError(
                f"no broker has answered for {down_s:.0f} s (TAGSTREAM_BROKER_OUTAGE_S={self._health.broker_outage_s:g}):"
                f" exiting so that a restart reconnects; check the brokers at the bootstrap servers",
                Failure.BROKER_OUTAGE,
            )

    def _watch_model(self) -> None:
        """Past TAGSTREAM_MODEL_STALL_S in one model call, give up: a hung call never returns, and
        the partitions it holds would wait for ever while the loop turns."""
        if self._health.model_stalled():
            raise WorkerError(
                f"a model call has run for {self._health.model_busy_for():.0f} s (TAGSTREAM_MODEL_STALL_S="
                f"{self._health.model_stall_s:g}): the device or the model process hangs; exiting so that a restart"
                " gets a working one (raise the limit if the model is merely this slow)",
                Failure.MODEL_STALLED,
            )

    # -- lag ---------------------------------------------------------------------------------
    def _refresh_lag(self) -> None:
        """Every LAG_INTERVAL_S: in-flight inputs, and the lag of every assigned partition
        (end offset - committed position; 0 when caught up, never missing).

        A partition with nothing in flight counts from the client's read position when that is
        further: the transaction markers and aborted records at the end of a transactional input
        are never returned by a poll, so the committed offset (after the last record read) stays
        behind them. Counted from there, an idle transactional topic kept a lag of 1 or more for
        ever, which fired TagstreamStalled (lag and no output)."""
        now = time.monotonic()
        if now - self._lag_at < LAG_INTERVAL_S:
            return
        self._lag_at = now
        # The partitions this worker holds: kafka-python keeps revoked ones in its assignment until the
        # group join completes, and asking the coordinator for their committed offsets meanwhile
        # queued behind the JoinGroup it holds (until every member rejoins: 45 s with one SIGKILLed),
        # timed out after 30 s and took the connection down; their lag series came back too.
        held = set(self._tracker.assigned())
        assigned = {tp for tp in self._consumer.assignment() if tp in held}
        try:
            self._end_offsets.update(self._consumer.end_offsets(assigned))
        except BrokerError as exc:
            log.debug("end_offsets_unavailable", error=str(exc))  # keep the last known ones
        unknown = [tp for tp in assigned if self._tracker.committed_position(tp) is None]
        committed: dict[TopicPartition, int | None] = {}
        if unknown:  # nothing read from these yet: the group's committed offset says where we are
            try:
                committed = self._consumer.committed(unknown)
            except BrokerError as exc:
                log.debug("committed_offsets_unavailable", error=str(exc))
        for tp in assigned:
            end = self._end_offsets.get(tp)
            position = read = self._tracker.committed_position(tp)
            if position is None:
                position = committed.get(tp)
            if position is None and end == 0:
                position = 0  # an empty partition nobody committed on: nothing to catch up
            if read is not None and end is not None and read < end and self._tracker.in_flight([tp]) == 0:
                # Read from, and every record a poll returned is done: what the client skipped is too.
                # (Only where it has read: a client without a position yet would go and fetch one.)
                read_to = self._consumer.position(tp)
                if read_to is not None:
                    position = max(read, read_to)
            if end is not None and position is not None:
                lag = max(0, end - position)
                self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
                age = self._read_age(tp, lag, now)
                self._metrics.consumer_lag_seconds.labels(topic=tp.topic, partition=str(tp.partition)).set(age)

    def _read_age(self, tp: TopicPartition, lag: int, now: float) -> float:
        """How old the records are that this worker reads from ``tp`` (seconds since their
        timestamp), while it has lag and reads: far behind, this nears the topic's retention, past
        which inputs are deleted unread. 0 when caught up, and when it has not read there for two
        refreshes: a lag of trailing transaction markers on an idle topic must not age for ever
        (a worker that reads nothing at all is TagstreamStalled's)."""
        last = self._last_read.get(tp)
        if lag == 0 or last is None or now - last[0] > 2 * LAG_INTERVAL_S or last[1] <= 0:
            return 0.0
        return max(0.0, time.time() - last[1] / 1000.0)

    # -- rebalance (called on kafka-python's I/O loop) -----------------------------------------
    async def on_revoked(self, revoked: set[TopicPartition], sleep: Sleep | None) -> None:
        if not revoked:
            return
        self._tracker.begin_revoke(revoked)  # queued inputs past the issued ones are dropped, the rest finish
        deadline = time.monotonic() + self._revoke_grace_s
        # At-least-once: wait for running work and commit what was delivered. Exactly-once: abort
        # the open transaction (its outputs are discarded) and resume at the last committed one.
        committed = await self._committer.settle(revoked, sleep, deadline)
        # kafka-python keeps its fetch position for a partition assigned back to this member
        # in the same rebalance; dropped inputs are then re-read from here (see on_assigned).
        self._rewind = self._committer.resume_points(revoked)
        dropped = self._tracker.revoke(revoked)
        self._deleted.forget(revoked)
        self._forget_lag(revoked)
        self._health.assigned = len(self._tracker.assigned())
        log.info(
            "partitions_revoked", partitions=_names(revoked), committed={_name(tp): o for tp, o in committed.items()},
            dropped_for_redelivery=dropped,
        )

    def on_lost(self, lost: set[TopicPartition]) -> None:
        self._rewind = {}  # lost partitions restart from the group's committed offsets
        dropped = self._tracker.revoke(lost)
        self._deleted.forget(lost)
        self._forget_lag(lost)
        self._health.assigned = len(self._tracker.assigned())
        log.warning("partitions_lost", partitions=_names(lost), dropped_for_redelivery=dropped)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        rewind, self._rewind = self._rewind, {}
        back = sorted(assigned & rewind.keys())
        self._tracker.assign(assigned)
        self._deleted.assigned(assigned, {tp: rewind[tp].position for tp in back})
        for tp in back:
            # Assigned straight back: the fetch position is past the inputs dropped at
            # revocation, so re-read from the first of them, skipping those already delivered.
            self._consumer.seek(tp, rewind[tp].position)
            point = rewind[tp]
            self._tracker.skip_delivered(tp, point.delivered, point.stalled, point.position, point.stalled_new, point.died)
        self._hints_wanted.update(assigned.difference(back))  # exactly-once reads only their stalled counts
        self._health.assigned = len(self._tracker.assigned())
        log.info(
            "partitions_assigned", partitions=_names(assigned),
            rewound={_name(tp): rewind[tp].position for tp in back},
        )

    def _read_hints(self) -> None:
        """What the partitions' last owner had already delivered past its commit (worker/delivered_hints.py)."""
        wanted, self._hints_wanted = self._hints_wanted, set()
        skipping = read_hints(self._consumer, self._tracker, wanted)
        if self._journal is not None and self._journal.counts:  # counts of inputs committed past are done with
            self._journal.forget_below({tp: self._tracker.known_commit(tp) for tp in wanted})
        if skipping:
            log.info("delivered_hints_read", skipping=skipping,
                     why="outputs already acknowledged past the committed offsets: these inputs are not labelled again")
        counted = {}
        for tp in wanted:
            hung, died = self._tracker.stalled_counts(tp), self._tracker.died_counts(tp)
            if hung or died:
                counted[_name(tp)] = {"hung": len(hung), "died": len(died)}
        if counted:
            log.warning("stall_counts_read", inputs=counted,
                        why="model calls hung on these inputs or a pod's model process died in them: each runs"
                            " alone, and is dead-lettered once convicted (stalled_twice)")

    def _forget_lag(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._end_offsets.pop(tp, None)
            self._last_read.pop(tp, None)
            for gauge in (self._metrics.consumer_lag, self._metrics.consumer_lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))


def _after_stalls(event: Event, hung: int, died: int = 0, died_alone: int = 0) -> Event | DeadLetter:
    """An input that was in model calls that hung (given up as stalled, or killed in by a pod's
    supervisor: ``hung``, from the commits' hints) or that the worker died in (``died``, of them
    ``died_alone`` with it alone: this host's worker, from its journal; a pod's model process, from
    the hints): run alone the next time, so that a call that fails so again does so on it alone;
    after that, a dead letter. A death may come from outside the worker (a node's memory pressure,
    a kubelet's kill), so deaths alone convict only after two with the input alone. Without this
    an input that hangs or kills the model restarts the worker on it for ever."""
    stalls = hung + died
    if stalls >= 2 and (hung or died_alone >= 2):
        log.warning("input_dead_lettered_after_stalls", partition=f"{event.topic}[{event.partition}]",
                    offset=event.offset, stalls=stalls, died_in_calls=died)
        how = f" ({died} of them with the worker dying in the call)" if died else ""
        return input_dead_letter(
            event, Failure.STALLED_TWICE,
            f"a model call hung (TAGSTREAM_MODEL_STALL_S) or died on this input {stalls} times{how},"
            " the last time on it alone",
        )
    event.alone = True
    return event


def tokenize_events(runner: Runner, events: list[Event], metrics: Metrics) -> tuple[list[Event], list[DeadLetter]]:
    """Tokenize the events' texts in one call and set their token ids; returns the events kept and
    the dead letters of the ones the tokenizer rejects.

    When the call raises, each text is tokenized alone, and the ones that fail alone too become
    inference_failed dead letters, as a failed model batch is retried. Before this, one such text
    (a lone surrogate that the JSON fallback let through) stopped the worker at the same record
    after every restart. When every text fails alone, the tokenizer is broken, not the input: that
    is fatal (model_failed), as for the model. Used per poll by the source and, after a bundle swap
    that changed the tokenizer, by the model thread for inputs tokenized by the old one."""
    key = runner.tokenizer_key
    letters: list[DeadLetter] = []
    try:
        token_ids = runner.tokenize([e.text for e in events])
    except Exception as error:  # one text the tokenizer cannot take must not stop the worker
        metrics.count_failure(Failure.BATCH_FAILED)
        log.warning("tokenize_failed_retrying_singly", size=len(events), error=repr(error))
        kept: list[Event] = []
        token_ids = []
        for event in events:
            try:
                [ids] = runner.tokenize([event.text])
            except Exception as exc:
                letters.append(input_dead_letter(event, Failure.INFERENCE_FAILED, f"the tokenizer raised on this text: {exc!r}"))
                continue
            kept.append(event)
            token_ids.append(ids)
        if not kept and len(letters) > 1:
            raise WorkerError(f"the tokenizer fails on every text, alone too: {error!r}", Failure.MODEL_FAILED) from error
        events = kept
    for event, ids in zip(events, token_ids, strict=True):
        event.token_ids = ids
        event.tokenizer_key = key
    return events, letters


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _names(tps: set[TopicPartition]) -> list[str]:
    return sorted(_name(tp) for tp in tps)
