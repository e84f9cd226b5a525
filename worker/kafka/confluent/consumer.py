"""The confluent consumer (``ConsumerClient``): see the package docstring for how it bridges librdkafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import confluent_kafka as ck
import structlog
from confluent_kafka import KafkaError, KafkaException

from worker.errors import BrokerError, Failure
from worker.kafka import diagnose
from worker.kafka.base import (
    SILENT_BROKER_S,
    RebalanceHandler,
    Record,
    TopicPartition,
    UnreadableRecord,
    run_bounded,
)
from worker.kafka.confluent.config import STATS_INTERVAL_MS, consumer_config, new_client
from worker.kafka.confluent.errors import (
    QUIET_CODES,
    UNREADABLE_CODES,
    ClientErrors,
    E,
    failure_for_error,
    kafka_error,
    translate,
)
from worker.kafka.confluent.records import (
    UNDECODABLE_HEADERS,
    ConsumedRecord,
    message_headers,
    their_offsets,
    their_partitions,
)
from worker.kafka.diagnose import bootstrap_timeout_error

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = structlog.get_logger("tagstream.worker.kafka")

LOW, HIGH = 0, 1  # get_watermark_offsets answers (log start offset, high watermark)
# Backpressure pauses the whole assignment for tens of milliseconds at a time. librdkafka's pause
# discards what it has prefetched for a partition and its resume fetches it again, which left a
# fast worker idle half a second after each resume (bench/kafka_path_bench.py, null bundle: 3,100
# events/s against 9,300 without pauses). Such a pause first only stops consume() calls: the
# prefetch queue fills to queued.max.messages.kbytes and the fetcher stops by itself. One that lasts
# longer becomes librdkafka's pause, so that polls serve rebalance callbacks and statistics again.
SOFT_PAUSE_S = 1.0
END_OFFSETS_TIMEOUT_S = 1.0  # the lag refresh blocks the poll loop at most this long
# A static member whose session expired (no coordinator answered for session.timeout.ms, e.g. two
# of three brokers down) gets its member id reset by librdkafka, which then still sends the offset
# commit it was retrying from the expired session: with the instance id and an empty member id, which
# the broker refuses as fenced (FENCED_INSTANCE_ID), and librdkafka makes that fatal (seen with
# librdkafka 2.16.0, bench/outsider/rolling.sh MODE=majority; librdkafka PR #5585 addresses the same
# mechanism, and whether a release with it avoids this is untested). No other worker has the id: the message
# says so, so that nobody hunts for a duplicate pod. The restart that follows is needed all the same
# (the client is unusable) and loses nothing: the commit was refused.
SELF_FENCE_WINDOW_S = 60.0
SELF_FENCED_NOTE = (
    "this worker's own group session expired shortly before (its partitions were lost: no group"
    " coordinator answered for TAGSTREAM_SESSION_TIMEOUT_MS), and librdkafka then sent an offset commit"
    " of the expired session, which the broker refuses as fenced; no other worker uses this"
    " group.instance.id. The worker exits to be restarted; nothing unacknowledged was committed"
)
PATTERN_REFRESH_S = 10.0  # how often a pattern subscription looks for new matching topics


def _bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run a blocking librdkafka call that has no timeout of its own, waiting at most ``timeout_s``."""
    finished, value = run_bounded(call, timeout_s, "tagstream-kafka-call")
    if not finished:
        raise BrokerError(f"{what}: no answer within {timeout_s:g} s", Failure.KAFKA_TRANSIENT)
    return value


class ConfluentConsumer:
    """``ConsumerClient`` over ``confluent_kafka.Consumer``. Used from the source's thread only."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self.errors = ClientErrors("consumer")
        self._handler: RebalanceHandler | None = None
        self._closing = False
        self._lost_at: float | None = None  # when the session last expired (partitions lost): see _self_fenced
        self._assigning: dict[TopicPartition, int] | None = None  # seeks made inside on_assigned
        self._pending_seeks: dict[TopicPartition, int] = {}  # seeks librdkafka refused for now
        self._callback_error: BaseException | None = None  # raised by a handler inside consume()
        self._deferred: BaseException | None = None  # raised at the next poll, before reading more
        self._commits: deque[tuple[frozenset[tuple[str, int, int]], Callable[[BaseException | None], None]]] = deque()
        self._coordinator_state: str | None = None  # from the statistics: "up" when it answers
        self._silent_since: float | None = None  # from the statistics: see SILENT_BROKER_S and silent_for
        self._pattern: re.Pattern[str] | None = None
        self._pattern_topics: list[str] = []
        self._pattern_at = 0.0
        self._held: set[TopicPartition] = set()  # paused by not consuming (SOFT_PAUSE_S)
        self._held_since = 0.0
        self._paused: set[TopicPartition] = set()  # paused in librdkafka (assigned or not)
        # The assignment as last read from librdkafka; None once a rebalance callback ran (it
        # changes only there). The source asks for it several times a loop turn while paused.
        self._assigned: frozenset[TopicPartition] | None = None
        self._rebalancing = False
        config = consumer_config(settings)
        config.update(error_cb=self.errors, stats_cb=self._on_stats, on_commit=self._on_commit)
        self.client = new_client(ck.Consumer, config)

    # -- subscription and rebalances --------------------------------------------------------------------
    def subscribe(self, *, topics: list[str] | None, pattern: str | None, handler: RebalanceHandler) -> None:
        self._handler = handler
        if pattern is not None:
            self._pattern = re.compile(pattern)
            self._refresh_pattern(force=True)
        else:
            self._subscribe(list(topics or ()))

    def _subscribe(self, topics: list[str]) -> None:
        try:
            if topics:
                self.client.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                      on_lost=self._on_lost)
            else:
                self.client.unsubscribe()
        except KafkaException as exc:
            raise translate(exc, "cannot subscribe") from exc

    def _refresh_pattern(self, force: bool = False) -> None:
        """Subscribe to the topics the pattern matches now (librdkafka's regex lacks look-ahead)."""
        now = time.monotonic()
        if not force and now - self._pattern_at < PATTERN_REFRESH_S:
            return
        self._pattern_at = now
        assert self._pattern is not None
        try:
            names = self.client.list_topics(timeout=END_OFFSETS_TIMEOUT_S).topics
        except KafkaException as exc:
            log.debug("pattern_refresh_failed", error=str(exc))
            return
        matching = sorted(t for t in names if not t.startswith("__") and self._pattern.match(t))
        if matching != self._pattern_topics:
            self._pattern_topics = matching
            log.info("pattern_subscription", topics=matching)
            self._subscribe(matching)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self._rebalancing, self._assigned = True, None  # read afresh after consume() returns
        ours = {TopicPartition(p.topic, p.partition) for p in partitions}
        self._assigning = {}
        try:
            if self._handler is not None and not self._closing:
                self._handler.on_assigned(ours)
        except BaseException as exc:
            self._callback_error = self._callback_error or exc
        finally:
            seeks, self._assigning = self._assigning, None
        # Start where on_assigned sought, else at the group's committed offset (or the reset point).
        consumer.assign([ck.TopicPartition(p.topic, p.partition, seeks.get(TopicPartition(p.topic, p.partition),
                                                                              ck.OFFSET_INVALID))
                         for p in partitions])
        # librdkafka keeps a partition's pause through unassign and assign: a partition paused when it
        # was revoked would come back paused, and nothing would resume it (the source resumes what it
        # paused since). An assignment starts unpaused, as with kafka-python; a source under
        # backpressure pauses it again.
        retained, self._paused = self._paused & ours, self._paused - ours
        self._held -= ours
        if retained:
            consumer.resume(their_partitions(retained))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._run_revoke({TopicPartition(p.topic, p.partition) for p in partitions}, lost=False)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._lost_at = time.monotonic()
        self._run_revoke({TopicPartition(p.topic, p.partition) for p in partitions}, lost=True)

    def _self_fenced(self) -> bool:
        """Whether a fenced static member is this worker's own expired session (see SELF_FENCED_NOTE)."""
        return self._lost_at is not None and time.monotonic() - self._lost_at < SELF_FENCE_WINDOW_S

    def _run_revoke(self, partitions: set[TopicPartition], lost: bool) -> None:
        self._rebalancing, self._assigned = True, None  # confluent-kafka unassigns after this returns
        self._held -= partitions  # (librdkafka's own pauses outlive the assignment: see _on_assign)
        for tp in partitions:
            self._pending_seeks.pop(tp, None)
        if self._handler is None or self._closing:
            return  # close(): kafka-python calls no listener there either
        try:
            if lost:
                self._handler.on_lost(partitions)
            else:
                # Run to completion here; librdkafka heartbeats on its own threads meanwhile.
                asyncio.run(self._handler.on_revoked(partitions, asyncio.sleep))
        except BaseException as exc:
            self._callback_error = self._callback_error or exc

    # -- polling ----------------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        if self._pattern is not None:
            self._refresh_pattern()
        if self._pending_seeks:
            self._apply_pending_seeks()
        if self._held and self._holding():
            time.sleep(timeout_ms / 1000)
            return {}
        consume = self.client.consume
        try:
            messages = consume(max_records, 0)
            if not messages:
                messages = consume(1, timeout_ms / 1000)
                if messages and max_records > 1:
                    messages.extend(consume(max_records - 1, 0))
        except KafkaException as exc:
            raise translate(exc, "the consumer failed") from exc
        finally:
            if self._callback_error is not None:  # a handler raised: after these records, at the next poll
                self._deferred, self._callback_error = self._callback_error, None
            if self._rebalancing:
                self._rebalancing, self._assigned = False, None
        return self._records(messages) if messages else {}

    def _records(self, messages: list[Any]) -> dict[TopicPartition, list[Record]]:
        """Group by partition (offset order is kept within each), decoding each message once."""
        out: dict[TopicPartition, list[Any]] = {}
        batch: list[Any] = []
        last_topic, last_partition = None, -1
        held = self._pending_seeks
        for m in messages:
            if m.error() is not None:
                self._message_error(m, out)
                last_topic = None
                continue
            topic, partition = m.topic(), m.partition()
            if partition != last_partition or topic != last_topic:
                last_topic, last_partition = topic, partition
                tp = TopicPartition(topic, partition)
                # While a seek is pending, records of that partition are from before it: dropped.
                batch = [] if held and tp in held else out.get(tp) or out.setdefault(tp, [])
            try:
                headers = message_headers(m) or []
            except (SystemError, UnicodeDecodeError):
                headers = list(UNDECODABLE_HEADERS)
            batch.append(ConsumedRecord(topic, partition, m.offset(), m.timestamp()[1], m.key(), m.value(), headers))
        return out

    def _message_error(self, m: Any, out: dict[TopicPartition, list[Any]]) -> None:
        """A consumer error delivered as a message: one unreadable record, or news about the client."""
        err = m.error()
        code = err.code()
        if code in QUIET_CODES:
            return
        partition, offset = m.partition(), m.offset()
        if code in UNREADABLE_CODES and m.topic() and partition is not None and partition >= 0 and offset >= 0:
            # Dead-letter that offset by its location and read on after it (never backwards:
            # a later record of this partition already handed over means the client moved on).
            tp = TopicPartition(m.topic(), partition)
            records = out.setdefault(tp, [])
            if records and records[-1].offset >= offset:
                return
            records.append(UnreadableRecord(tp.topic, partition, offset, err.str()))
            self._pending_seeks[tp] = offset + 1
            return
        error = translate(err, "the consumer failed")
        error.failure = _consumer_failure(err, error.failure)
        if error.failure is Failure.INSTANCE_FENCED and self._self_fenced():
            error = BrokerError(f"{error}: {SELF_FENCED_NOTE}", Failure.INSTANCE_FENCED)
        if self._deferred is None:
            self._deferred = error  # raised at the next poll: the records of this one are handed over first

    def _apply_pending_seeks(self) -> None:
        assigned = self.assignment()
        for tp, offset in list(self._pending_seeks.items()):
            if tp not in assigned:
                del self._pending_seeks[tp]
                continue
            try:
                self.client.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException:
                continue  # the fetcher is not ready yet: next poll
            del self._pending_seeks[tp]

    # -- positions -------------------------------------------------------------------------------------------
    def assignment(self) -> set[TopicPartition]:
        assigned = self._assigned
        if assigned is None:
            try:
                assigned = frozenset(TopicPartition(p.topic, p.partition) for p in self.client.assignment())
            except (KafkaException, RuntimeError):
                return set()
            if not self._rebalancing:  # inside a callback it is about to change
                self._assigned = assigned
        return set(assigned)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        new = {TopicPartition(*tp) for tp in partitions} - self._held - self._paused
        if not new:
            return
        if not self._held:
            self._held_since = time.monotonic()
        self._held |= new  # a pause of part of the assignment becomes librdkafka's at the next poll

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        parts = {TopicPartition(*tp) for tp in partitions}
        self._held -= parts
        paused, self._paused = self._paused & parts, self._paused - parts
        if paused:
            self._call(self.client.resume, their_partitions(paused), "cannot resume")

    def _holding(self) -> bool:
        """Whether this poll may skip consume() (SOFT_PAUSE_S); otherwise the held partitions are
        paused in librdkafka now, so that consume() returns none of their records."""
        assigned = self.assignment()
        if assigned and assigned <= self._held | self._paused and time.monotonic() - self._held_since < SOFT_PAUSE_S:
            return True
        held, self._held = self._held & assigned, set()
        if held:
            self._call(self.client.pause, their_partitions(held), "cannot pause")
            self._paused |= held
        return False

    def seek(self, tp: TopicPartition, offset: int) -> None:
        tp = TopicPartition(*tp)
        if self._assigning is not None:  # inside on_assigned: becomes the assign() offset
            self._assigning[tp] = offset
            return
        try:
            self.client.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
            self._pending_seeks.pop(tp, None)
        except KafkaException as exc:
            if kafka_error(exc) is None or exc.args[0].code() != E._STATE:
                raise translate(exc, f"cannot seek {tp.topic}[{tp.partition}]") from exc
            self._pending_seeks[tp] = offset  # fetcher not started yet: retried before each poll

    @staticmethod
    def _call(call: Callable[[Any], Any], arg: Any, what: str) -> None:
        if not arg:
            return
        try:
            call(arg)
        except KafkaException as exc:
            raise translate(exc, what) from exc

    # -- commits ---------------------------------------------------------------------------------------------
    def commit_async(
        self, positions: dict[TopicPartition, int], on_done: Callable[[BaseException | None], None],
        metadata: dict[TopicPartition, str] | None = None,
    ) -> None:
        offsets = their_offsets(positions, metadata)
        try:
            self.client.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            on_done(translate(exc, "the offset commit failed"))
            return
        self._commits.append((_key(offsets), on_done))

    def _on_commit(self, err: KafkaError | None, partitions: list[Any]) -> None:
        """Every commit's result, asynchronous ones (matched by content) and synchronous echoes."""
        key = _key(partitions)
        match = next((i for i, (pending, _) in enumerate(self._commits) if pending == key), None)
        if match is None:
            return  # a synchronous commit's echo: its caller already has the result
        on_done = self._commits[match][1]
        del self._commits[match]
        failed = err if err is not None else next((p.error for p in partitions if p.error is not None), None)
        on_done(None if failed is None else translate(failed, "the offset commit failed"))

    def commit(
        self, positions: dict[TopicPartition, int], timeout_s: float, metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        offsets = their_offsets(positions, metadata)
        try:
            done = _bounded(lambda: self.client.commit(offsets=offsets, asynchronous=False), timeout_s,
                            "the offset commit failed")
        except KafkaException as exc:
            raise translate(exc, "the offset commit failed") from exc
        failed = next((p.error for p in done or () if p.error is not None), None)
        if failed is not None:
            raise translate(failed, "the offset commit failed")

    async def commit_in_rebalance(
        self, positions: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        # Asynchronous, and not waited for: a synchronous commit made inside the revoke callback was
        # not served by librdkafka until the callback returned (its cgrp thread sat in
        # wait-unassign-call), so it timed out after the 30 s it was given, in most starts of a
        # two-feeder pod, with the group's rebalance held up as long (37 s instead of 7). An
        # asynchronous one goes out with the generation it belongs to as the callback returns;
        # librdkafka waits for commits in progress before it completes the unassignment. Its
        # result arrives at a later poll: a failure is logged, and means re-reading (duplicates).
        def on_done(error: BaseException | None) -> None:
            if error is not None:
                log.warning("revoke_commit_failed", error=str(error), partitions=len(positions))

        self.commit_async(positions, on_done, metadata)

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks (see ``_watermarks``)."""
        return self._watermarks(partitions, HIGH, "cannot read the end offsets")

    def start_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Log start offsets (see ``_watermarks``): a deletion gap is judged just after the fetch
        that showed it, whose response carried the new log start."""
        return self._watermarks(partitions, LOW, "cannot read the log start offsets")

    def _watermarks(self, partitions: Iterable[TopicPartition], side: int, what: str) -> dict[TopicPartition, int]:
        """One side of each partition's watermarks (LOW: log start, HIGH: high watermark): from the
        latest fetch response, which librdkafka keeps, when there is one; else asked of the broker,
        one request per partition. Partitions of a topic that no longer exists are left out (an input
        topic deleted, in the seconds before the rebalance that revokes it: the whole lookup failed)."""
        deadline = time.monotonic() + END_OFFSETS_TIMEOUT_S
        out: dict[TopicPartition, int] = {}
        for tp in partitions:
            theirs = ck.TopicPartition(tp.topic, tp.partition)
            try:
                offset = self.client.get_watermark_offsets(theirs, cached=True)[side]
                if offset < 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        continue
                    offset = self.client.get_watermark_offsets(theirs, timeout=left)[side]
            except KafkaException as exc:
                if failure_for_error(exc) is Failure.TOPIC_MISSING:
                    continue
                raise translate(exc, what) from exc
            if offset >= 0:
                out[TopicPartition(*tp)] = offset
        return out

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {TopicPartition(p.topic, p.partition): (p.offset if p.offset >= 0 else None)
                for p in self._committed(partitions)}

    def committed_metadata(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        return {TopicPartition(p.topic, p.partition): (p.offset, p.metadata or "")
                for p in self._committed(partitions) if p.offset >= 0}

    def _committed(self, partitions: Iterable[TopicPartition]) -> list[Any]:
        """The group's commits of ``partitions`` in one OffsetFetch: librdkafka's TopicPartitions."""
        tps = their_partitions(partitions)
        if not tps:
            return []
        try:
            return list(self.client.committed(tps, timeout=END_OFFSETS_TIMEOUT_S))
        except KafkaException as exc:
            raise translate(exc, "cannot read the committed offsets") from exc

    def position(self, tp: TopicPartition) -> int | None:
        try:
            [got] = self.client.position([ck.TopicPartition(tp.topic, tp.partition)])
        except KafkaException:
            return None
        return got.offset if got.offset >= 0 else None  # negative: no position yet (OFFSET_INVALID)

    def group_metadata(self) -> Any:
        return self.client.consumer_group_metadata()

    # -- health and metadata -----------------------------------------------------------------------------------
    def _on_stats(self, stats: str) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            parsed = json.loads(stats)
            group = parsed.get("cgrp", {})
            self._coordinator_state = group.get("state")
            silent_s = brokers_silent_for(parsed.get("brokers") or {}, group.get("join_state"))
            self._silent_since = time.monotonic() - silent_s if silent_s else None

    def coordinator_known(self) -> bool:
        state = self._coordinator_state
        if state is None:  # no statistics yet: go by the error callback alone
            down = self.errors.all_down_at
            return down is None or time.monotonic() - down > 2 * STATS_INTERVAL_MS / 1000
        return state == "up" and self._silent_since is None

    def silent_for(self) -> float:
        since = self._silent_since
        return 0.0 if since is None else time.monotonic() - since

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        meta = self._metadata(topic)
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            return None
        return set(found.partitions)

    def topics(self) -> set[str]:
        return set(self._metadata(None).topics)

    def _metadata(self, topic: str | None) -> Any:
        try:
            return self.client.list_topics(topic=topic, timeout=diagnose.BOOTSTRAP_TIMEOUT_MS / 1000)
        except KafkaException as exc:
            raise bootstrap_timeout_error(self._settings, exc) from exc

    def close(self, timeout_s: float, leave_group: bool = True) -> None:
        self._closing = True  # librdkafka revokes inside close(): the handler is not told
        self._rebalancing, self._assigned = True, None
        reachable = self.coordinator_known()
        try:
            _bounded(self.client.close, max(0.5, timeout_s), "closing the consumer")
        except Exception as exc:
            if reachable:
                log.warning("consumer_close_failed", error=str(exc))
            else:  # what the worker expected (app.CLOSE_UNREACHABLE_S): a warning here only repeated the outage
                log.info("consumer_close_unanswered", error=str(exc), why="no broker answers")
        instance = self._settings.group_instance_id
        if instance and leave_group:
            from worker.kafka.kafkapython import remove_static_member

            remove_static_member(self._settings, timeout_s)


def _consumer_failure(err: KafkaError, failure: Failure) -> Failure:
    """What a consumer error delivered among the records means for the worker."""
    if failure is Failure.TOPIC_MISSING:
        return Failure.KAFKA_TRANSIENT  # a subscribed topic gone: not this worker's end
    if err.code() == E._FATAL and "group.instance.id" in err.str():
        # librdkafka reports a fenced static member as a generic fatal error, its cause in words only
        return Failure.INSTANCE_FENCED
    return failure



# While the group joins, the broker holds the JoinGroup (SyncGroup) until every member has rejoined:
# up to the rebalance timeout, or the session timeout of a member that died without leaving. Seen from
# outside (bench/outsider/pod.sh, a feeder SIGKILLed): 27 s of "broker unreachable" while the
# coordinator answered all it was asked.
HELD_JOIN_STATES = frozenset({"wait-join", "wait-sync"})


def brokers_silent_for(brokers: dict[str, Any], join_state: str | None = None) -> float:
    """Seconds since the brokers last answered anything, when they keep their connections but answer
    nothing (base.SILENT_BROKER_S); 0 otherwise. From librdkafka's statistics: a connection that is
    up waits for responses and has received nothing for that long, and no connection that is up
    has received anything for that long (``rxidle`` counts from a connection's last receive, so a
    request just sent on one idle for minutes would read as silent alone). Idle connections
    (nothing asked) only say when a broker last answered, and the group coordinator's says nothing
    while it holds a join (HELD_JOIN_STATES)."""
    holding = join_state in HELD_JOIN_STATES
    up = {name: b for name, b in brokers.items() if b.get("state") == "UP"}
    waiting = [b for name, b in up.items() if b.get("waitresp_cnt", 0) > 0 and not (holding and name == "GroupCoordinator")]
    heard = [b["rxidle"] for b in up.values() if isinstance(b.get("rxidle"), int | float) and b["rxidle"] >= 0]
    silent_us = SILENT_BROKER_S * 1_000_000
    if not waiting or not heard or max(b.get("rxidle", -1) for b in waiting) <= silent_us or min(heard) <= silent_us:
        return 0.0
    return float(min(heard)) / 1_000_000


def _key(partitions: Iterable[Any]) -> frozenset[tuple[str, int, int]]:
    return frozenset((p.topic, p.partition, p.offset) for p in partitions)
