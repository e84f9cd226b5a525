"""Publishing results and dead letters; an input is acknowledged once its output is settled.

Every record is sent asynchronously through the ``ProducerClient``; the producer reports each
outcome to this sink (``delivered`` / ``failed``, on its I/O thread), which acknowledges the
input's offset to the ``OffsetTracker`` and counts it. Routing (label -> topic) is resolved once
per (input topic, label) and cached.

No record can stop the worker. A refusal that concerns one record (``Failure.RECORD_REJECTED``:
too large for the producer's ``max_request_size`` or the topic's ``max.message.bytes``, or
invalid) walks that record down a ladder, on the sink thread:

    0  the result or dead letter, in the normal stream of sends (a batch the broker finds too
       large as a whole is split and resent by the client library itself)
    1  a bounded dead letter: the first dead_letter_max_bytes of the input, its size and sha256
       (a refused result becomes a dead letter with reason ``record_rejected``)
    2  skipped: counted in tagstream_records_skipped_total, logged, and acknowledged so the
       partition moves on

Any other delivery failure (the producer's retries ran out: the broker is gone) is fatal, the
input is never acknowledged, and the restart redelivers it.

Multi-label results are routed by every tag they carry: the record goes to each distinct topic
of its tags (a tag without a route goes to the output topic; so does a record with no tag), and
its input is settled once, when every copy is (``_Fanout``), so the offset tracker still sees one
acknowledgement per input; a copy refused as a record sends the input down the ladder.

Exactly-once (``transactions`` given, see ``worker/transactions.py``): outputs of inputs from an
epoch that is over (a revocation or an abort since) are dropped unsent; a refusal dooms the open
transaction, so the sink remembers the input and asks for an abort, and when the input comes
round again it takes its next step at once (the bounded copy, then the skip); delivered outputs
are counted in the metrics only once their transaction commits.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from worker.errors import BrokerError, Failure
from worker.events import (
    DeadLetter,
    Event,
    bounded_copy,
    dead_letter_headers,
    result_value,
    single_label_values,
)
from worker.inference import Classified
from worker.kafka.base import ProducerClient, TopicPartition
from worker.offsets import OffsetTracker
from worker.settings import WorkerSettings
from worker.stages import StageClock
from worker.telemetry import Metrics, get_logger, observe_many

if TYPE_CHECKING:
    from worker.transactions import Barrier, TransactionalCommitter

log = get_logger("tagstream.worker.sink")


class Router:
    """Output topic per (input topic, label), from output_topic and routes; cached."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._cache: dict[tuple[str, str], str] = {}
        self._dlq_cache: dict[str, str] = {}

    def result_topic(self, source_topic: str, label: str) -> str:
        key = (source_topic, label)
        topic = self._cache.get(key)
        if topic is None:
            topic = self._cache[key] = self._settings.route_topic_for(source_topic, label)
        return topic

    def output_topic(self, source_topic: str) -> str:
        """Where a result goes that no route claims (a multi-label result with no tag)."""
        return self._settings.output_topic_for(source_topic)

    def dead_letter_topic(self, source_topic: str) -> str:
        topic = self._dlq_cache.get(source_topic)
        if topic is None:
            topic = self._dlq_cache[source_topic] = self._settings.dlq_topic_for(source_topic)
        return topic


@dataclass(slots=True)
class _Retry:
    """The token of a send past step 0: the bounded dead letter replacing a refused output."""

    item: DeadLetter
    step: int


class Sink:
    """Sends results and dead letters; acknowledges inputs when their outputs are settled."""

    def __init__(
        self,
        producer: ProducerClient,
        router: Router,
        tracker: OffsetTracker,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
        *,
        dead_letter_max_bytes: int = 65_536,
        transactions: TransactionalCommitter | None = None,
        clock: StageClock | None = None,
        broker_down: Callable[[], bool] = lambda: False,
        stopping: threading.Event | None = None,
        broker_was_away: Callable[[], bool] | None = None,
    ) -> None:
        self._producer = producer
        # While no broker answers, a send that timed out waiting for metadata says nothing about the
        # topic: the sink waits for the broker (the worker's outage limit ends the wait) and sends again.
        # So does one whose wait overlapped an outage that has ended (broker_was_away): it was seen
        # timing out 8 s after the broker's return, and exiting "topic missing" then was wrong.
        self._broker_down = broker_down
        self._broker_was_away = broker_was_away or broker_down
        self._stopping = stopping or threading.Event()
        self._router = router
        self._tracker = tracker
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self._clock = clock or StageClock(metrics, enabled=False)
        self._out_counters: dict[str, Any] = {}
        self._e2e = metrics.end_to_end_latency
        # Refused outputs wait here for the sink thread (the producer's thread must not send).
        self._refused: deque[tuple[Event | DeadLetter, int, BrokerError]] = deque()
        self._wake = threading.Event()
        self._transactions = transactions
        # Exactly-once: the ladder step each refused input takes next, across aborts and re-reads.
        self._poisoned: dict[tuple[str, int, int], int] = {}
        # Exactly-once: counts of outputs delivered in the open transaction, applied at its commit.
        self._txn_out: dict[str, int] = {}
        self._txn_letters: dict[str, int] = {}
        self._txn_lock = threading.Lock()
        producer.set_handler(self)

    # -- the sink thread -------------------------------------------------------------------------
    def publish_results(
        self, events: list[Event], classified: Classified, labels: list[str], model_name: str, model_version: str
    ) -> None:
        """One result record per event, in the events' order (multi-label: one per routed topic);
        the whole batch built, then sent."""
        clock = self._clock
        t = clock.start()
        now = time.monotonic()
        n = len(events)
        windows: list[int | None] = list(classified.windows) if classified.windows else [None] * n
        rows: Any = zip(events, classified.top_indices, classified.top_scores, windows, range(n), strict=True)
        if self._transactions is not None:
            rows = list(self._exactly_once_rows(rows))
        if classified.tags is None and not classified.windows:  # the usual case: built per batch
            outgoing = self._single_label_outgoing(rows, labels, model_name, model_version, now)
        else:
            outgoing = self._outgoing_one_by_one(rows, classified.tags, labels, model_name, model_version, now)
        t = clock.stop("result_build", t, n)
        send = self._send
        for topic, value, event, token in outgoing:
            send(topic, value, event.key, event.headers, token)
        clock.stop("produce", t, len(outgoing))

    def _single_label_outgoing(
        self, rows: Any, labels: list[str], model_name: str, model_version: str, now: float
    ) -> list[tuple[str, bytes, Event, Any]]:
        """Single-label results read by head: the records of the batch built at once."""
        events, top_indices, top_scores = [], [], []
        for event, indices, scores, _, _ in rows:
            events.append(event)
            top_indices.append(indices)
            top_scores.append(scores)
        values = single_label_values(events, top_indices, top_scores, labels, model_name=model_name,
                                     model_version=model_version, now=now)
        topic_for = self._router.result_topic
        return [(topic_for(event.topic, labels[indices[0]]), value, event, event)
                for event, indices, value in zip(events, top_indices, values, strict=True)]

    def _outgoing_one_by_one(
        self, rows: Any, all_tags: list[list[tuple[int, float]]] | None, labels: list[str], model_name: str,
        model_version: str, now: float,
    ) -> list[tuple[str, bytes, Event, Any]]:
        """Multi-label results (one copy per routed topic) and results of bundles read in windows."""
        topic_for = self._router.result_topic
        outgoing: list[tuple[str, bytes, Event, Any]] = []
        for event, indices, scores, window_count, i in rows:
            top_k = [(labels[j], p) for j, p in zip(indices, scores, strict=True)]
            latency_ms = (now - event.received) * 1000.0
            if all_tags is None:
                label = labels[indices[0]]
                value = result_value(
                    event, label=label, score=scores[0], top_k=top_k, model_name=model_name,
                    model_version=model_version, latency_ms=latency_ms, windows=window_count,
                )
                outgoing.append((topic_for(event.topic, label), value, event, event))
                continue
            tags = [(labels[j], p) for j, p in all_tags[i]]
            value = result_value(
                event, tags=tags, top_k=top_k, model_name=model_name, model_version=model_version,
                latency_ms=latency_ms, windows=window_count,
            )
            topics = list(dict.fromkeys(topic_for(event.topic, name) for name, _ in tags))
            if not topics:
                topics = [self._router.output_topic(event.topic)]
            token: Any = _Fanout(event, len(topics)) if len(topics) > 1 else event
            outgoing.extend((topic, value, event, token) for topic in topics)
        return outgoing

    def publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Each letter to its dead-letter topic: original key and bytes (or a bounded copy), reason headers."""
        if self._transactions is not None:
            letters = [x for x in letters if self._current(x) and not self._take_poisoned_step(x)]
        for letter in letters:
            self._metrics.count_failure(letter.reason)
            log.warning(
                "dead_lettered", topic=letter.topic, partition=letter.partition, offset=letter.offset,
                reason=letter.reason.label, detail=letter.detail, bounded=letter.bounded,
            )
            self._send(*self._dead_letter_record(letter), letter)

    @property
    def refused_waiting(self) -> bool:
        return bool(self._refused)

    def settle_pending(self) -> None:
        """Between outputs (sink thread): an abort that was asked for, refused outputs, then the
        producer's topics left idle (worker/kafka/topic_use.py)."""
        if self._transactions is not None and self._transactions.abort_if_requested():
            self._aborted()
        if self._refused:
            self.resend_refused()
        self._producer.forget_idle_topics()  # at most every few seconds does it do anything

    def commit_transaction(self, barrier: Barrier, timeout_s: float) -> None:
        """Exactly-once: commit the open transaction at ``barrier`` (everything before it was sent)."""
        assert self._transactions is not None
        if self._transactions.commit(barrier, lambda: self.flush(timeout_s)):
            with self._txn_lock:
                out, self._txn_out = self._txn_out, {}
                letters, self._txn_letters = self._txn_letters, {}
            for topic, n in out.items():
                self._metrics.events_out.labels(topic=topic).inc(n)
            for reason, n in letters.items():
                self._metrics.dead_letters.labels(reason=reason).inc(n)
        else:
            self._aborted()

    def _aborted(self) -> None:
        """The open transaction was aborted: what it held is re-read, so forget its bookkeeping."""
        self._refused.clear()
        with self._txn_lock:
            self._txn_out, self._txn_letters = {}, {}

    def wait_for_refusals(self, timeout_s: float) -> None:
        """Block up to ``timeout_s`` until a refused output waits (the sink thread's idle wait)."""
        if self._wake.wait(timeout_s):
            self._wake.clear()

    def resend_refused(self) -> None:
        """Walk every refused output one step down the ladder (module docstring), each sent alone."""
        while self._refused:
            item, step, error = self._refused.popleft()
            self._resend(item, step, error)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every output is settled, refused ones included; False if the time ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._producer.flush(max(0.1, deadline - time.monotonic())):
                return False
            if not self._refused:
                return True
            if time.monotonic() >= deadline:
                return False
            self.resend_refused()

    # -- the producer's I/O thread ------------------------------------------------------------------
    def delivered(self, token: Any) -> None:
        if type(token) is _Fanout:
            refused = token.arrived(None)
            if refused is _NOT_YET:
                return
            if refused is not None:  # a copy was refused as a record: the input takes the ladder
                self._refuse(token.item, None, refused)
                return
            token = token.item
        item = token.item if type(token) is _Retry else token
        self._tracker.ack(TopicPartition(item.topic, item.partition), item.offset, item.epoch)
        if self._transactions is not None:  # counted when the transaction commits
            with self._txn_lock:
                if type(item) is Event:
                    self._txn_out[item.topic] = self._txn_out.get(item.topic, 0) + 1
                else:
                    reason = item.reason.label  # type: ignore[union-attr]
                    self._txn_letters[reason] = self._txn_letters.get(reason, 0) + 1
            return
        if type(item) is Event:
            self._events_out(item.topic).inc()
            if item.timestamp_ms > 0:
                self._e2e.observe(max(0.0, time.time() - item.timestamp_ms / 1000.0))
        else:
            self._metrics.dead_letters.labels(reason=item.reason.label).inc()  # type: ignore[union-attr]

    def delivered_many(self, tokens: list[Any]) -> None:
        """``delivered`` for each token, with the bookkeeping and metrics of plain results done in
        bulk: one hand-over to the tracker, one counter increment per topic, one histogram update."""
        if self._transactions is not None:
            for token in tokens:
                self.delivered(token)
            return
        acks: list[tuple[TopicPartition, int, int]] = []
        out: dict[str, int] = {}
        ages: list[float] = []
        now = time.time()
        for token in tokens:
            if type(token) is not Event:  # dead letters, copies of multi-label results, retries
                self.delivered(token)
                continue
            acks.append((TopicPartition(token.topic, token.partition), token.offset, token.epoch))
            out[token.topic] = out.get(token.topic, 0) + 1
            if token.timestamp_ms > 0:
                ages.append(max(0.0, now - token.timestamp_ms / 1000.0))
        self._tracker.ack_many(acks)
        for topic, n in out.items():
            self._events_out(topic).inc(n)
        observe_many(self._e2e, ages)

    def _events_out(self, topic: str) -> Any:
        """The events_out counter of ``topic`` (its labelled child, looked up once)."""
        counter = self._out_counters.get(topic)
        if counter is None:
            counter = self._out_counters[topic] = self._metrics.events_out.labels(topic=topic)
        return counter

    def failed(self, token: Any, error: BrokerError) -> None:
        txn = self._transactions
        if txn is not None and (error.failure is Failure.TRANSACTION_ABORTED or txn.abort_pending):
            return  # the open transaction is being aborted: its inputs are read again
        if type(token) is _Fanout and error.failure is Failure.RECORD_REJECTED:
            refused = token.arrived(error)
            if refused is not _NOT_YET:
                self._refuse(token.item, None, refused)
            return
        retry = token if type(token) is _Retry else None
        item = token.item if retry is not None else token
        if error.failure is Failure.RECORD_REJECTED:
            self._refuse(item, retry, error)
            return
        if type(token) is _Fanout:
            item = token.item
        failure = error.failure
        if failure in (Failure.KAFKA_TRANSIENT, Failure.KAFKA_FATAL, Failure.INTERNAL, Failure.COMMIT_FAILED):
            failure = Failure.DELIVERY_FAILED  # the producer already retried: this is final
        self._on_fatal(
            BrokerError(
                f"the broker did not acknowledge the output for {item.topic}[{item.partition}]@{item.offset}:"
                f" {error}; it will be redelivered after restart",
                failure,
            )
        )

    # -- helpers ------------------------------------------------------------------------------------
    def _refuse(self, item: Event | DeadLetter, retry: _Retry | None, error: BrokerError) -> None:
        """An output of ``item`` was refused as a record (producer I/O thread): its next ladder step."""
        step = 1 if retry is None else retry.step + 1
        if self._transactions is not None:
            # The refusal dooms the transaction: remember the input's next step for its re-read.
            self._poisoned[(item.topic, item.partition, item.offset)] = step
            self._transactions.request_abort(f"{item.topic}[{item.partition}]@{item.offset} refused: {error}")
            return
        self._refused.append((item, step, error))
        self._wake.set()

    def _send(self, topic: str, value: bytes | None, key: bytes | None, headers: list, token: Any) -> None:
        try:
            self._producer.send(topic, value, key, headers, token)
        except BrokerError as exc:
            if exc.failure is Failure.BROKER_UNREACHABLE or (
                exc.failure in (Failure.TOPIC_MISSING, Failure.DELIVERY_FAILED) and self._broker_was_away()
            ):
                self._send_after_outage(topic, value, key, headers, token, exc)
                return
            if exc.failure is not Failure.RECORD_REJECTED:
                raise
            # The producer refused it before sending (its own size check): this record alone.
            if type(token) is _Fanout:
                refused = token.arrived(exc)
                if refused is not _NOT_YET:
                    self._refused.append((token.item, 1, refused))
                return
            retry = token if type(token) is _Retry else None
            self._refused.append((token if retry is None else retry.item, 1 if retry is None else retry.step + 1, exc))

    def _send_after_outage(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list, token: Any, error: BrokerError
    ) -> None:
        """The send timed out while no broker answered: wait for one (the worker's outage limit ends
        the wait), then send again. A topic that is really missing times out again with the broker
        up, past the outage window (app.py), and is fatal then."""
        # The client's own words (a metadata timeout), not the BrokerError's hint that the topic may
        # not exist: with no broker answering, that hint pointed at the wrong fix.
        log.warning(
            "send_waits_for_the_broker", topic=topic, error=str(error.__cause__ or error),
            hint="no broker answered when this record was sent: it is sent again once one does"
            " (TAGSTREAM_BROKER_OUTAGE_S bounds the wait)",
        )
        while self._broker_down():
            if self._stopping.wait(0.5):
                raise error
        if self._stopping.is_set():
            raise error
        self._send(topic, value, key, headers, token)

    def _resend(self, item: Event | DeadLetter, step: int, error: BrokerError) -> None:
        """Take a refused output one step down the ladder (module docstring)."""
        letter = item if isinstance(item, DeadLetter) else input_dead_letter(
            item, Failure.RECORD_REJECTED, f"its result was refused: {error}"
        )
        if step > 1 or letter.bounded:
            self._skip(letter, error)
            return
        bounded = bounded_copy(letter, self._dead_letter_max_bytes, why=f"refused whole: {error}")
        if type(item) is Event:  # a new dead letter (a dead letter's own reason was counted already)
            self._metrics.count_failure(bounded.reason)
        log.warning(
            "dead_letter_bounded", topic=item.topic, partition=item.partition, offset=item.offset,
            reason=bounded.reason.label, original_size=bounded.original_size, error=str(error),
        )
        self._send(*self._dead_letter_record(bounded), _Retry(bounded, 1))

    def _skip(self, letter: DeadLetter, error: BrokerError) -> None:
        """The last step: nothing about this input could be published. Count, log, move on."""
        reason = Failure.DEAD_LETTER_REJECTED
        self._metrics.count_failure(reason)
        self._metrics.records_skipped.labels(reason=reason.label).inc()
        log.error(
            "record_skipped", topic=letter.topic, partition=letter.partition, offset=letter.offset,
            reason=reason.label, dead_letter_reason=letter.reason.label, original_size=letter.original_size,
            original_sha256=letter.original_sha256, error=str(error),
        )
        self._tracker.ack(TopicPartition(letter.topic, letter.partition), letter.offset, letter.epoch)

    def _current(self, item: Event | DeadLetter) -> bool:
        return self._tracker.accepts((item.topic, item.partition), item.epoch, item.offset)

    def _exactly_once_rows(self, rows: Any) -> Any:
        """Exactly-once: only inputs of the current epoch, and refused ones straight to their next step."""
        for row in rows:
            event = row[0]
            if self._current(event) and not self._take_poisoned_step(event):
                yield row

    def _take_poisoned_step(self, item: Event | DeadLetter) -> bool:
        """If this input was refused in an aborted transaction, take its next ladder step now."""
        step = self._poisoned.pop((item.topic, item.partition, item.offset), None)
        if step is None:
            return False
        self._resend(item, step, BrokerError("refused in an earlier, aborted transaction", Failure.RECORD_REJECTED))
        return True

    def _dead_letter_record(self, letter: DeadLetter) -> tuple[str, bytes | None, bytes | None, list]:
        value = letter.value
        if value is None and letter.key is None:
            value = b""  # Kafka needs a key or a value; the reason header says it was null
        return self._router.dead_letter_topic(letter.topic), value, letter.key, dead_letter_headers(letter)


def input_dead_letter(event: Event, reason: Failure, detail: str) -> DeadLetter:
    """A dead letter for an input that was parsed (its original bytes are no longer kept): the id
    and text as JSON, which is what the worker read from it."""
    try:
        value = orjson.dumps({"id": event.event_id, "text": event.text})
    except orjson.JSONEncodeError:  # a string that is not Unicode (a lone surrogate): escaped, ASCII JSON
        value = json.dumps({"id": event.event_id, "text": event.text}).encode()
    return DeadLetter(
        event.topic, event.partition, event.offset, event.timestamp_ms, event.key, value, event.headers,
        reason, detail[:500], event.epoch,
    )


_NOT_YET = object()  # _Fanout.arrived: copies are still out


class _Fanout:
    """The copies of one multi-label result sent to several topics. Callbacks come from the
    producer's I/O thread in any order; the input is settled when the last copy is: delivered
    when all were, down the ladder when any was refused as a record."""

    __slots__ = ("_left", "_lock", "_refused", "item")

    def __init__(self, item: Event, copies: int) -> None:
        self.item = item
        self._left = copies
        self._lock = threading.Lock()
        self._refused: BrokerError | None = None

    def arrived(self, refused: BrokerError | None) -> Any:
        """One copy settled; returns _NOT_YET, or (for the last copy) None or the first refusal."""
        with self._lock:
            if refused is not None and self._refused is None:
                self._refused = refused
            self._left -= 1
            return self._refused if self._left == 0 else _NOT_YET
