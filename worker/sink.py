"""Publishing results and dead letters; delivery callbacks acknowledge the input offsets.

Every record is sent asynchronously (``producer.send``); its future's callback, run on the
producer's I/O thread, acknowledges the input's offset to the ``OffsetTracker`` and records the
end-to-end latency. A delivery that fails after the producer's own retries is fatal: its offset
is never acknowledged (so never committed) and the worker exits for a restart, which redelivers
the input. Routing (label -> topic) is resolved once per (input topic, label) and cached.

Multi-label results are routed by every tag they carry: the record goes to each distinct topic
of its tags (a tag without a route goes to the output topic; so does a record with no tag), and
its input is acknowledged once, when the broker has acknowledged every copy (``_Fanout``), so
the offset tracker still sees one acknowledgement per input.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import errors as kafka_errors
from kafka.structs import TopicPartition

from worker.errors import BrokerError, Failure, failure_for_kafka_error
from worker.events import DeadLetter, Event, dead_letter_headers, result_value
from worker.offsets import OffsetTracker
from worker.runner import Classified
from worker.settings import WorkerSettings
from worker.telemetry import Metrics, get_logger

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


class Sink:
    """Sends results and dead letters; acknowledges inputs when the broker confirms."""

    def __init__(
        self,
        producer: Any,
        router: Router,
        tracker: OffsetTracker,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self._producer = producer
        self._router = router
        self._tracker = tracker
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._out_counters: dict[str, Any] = {}
        self._e2e = metrics.end_to_end_latency

    def publish_results(
        self, events: list[Event], classified: Classified, labels: list[str], model_name: str, model_version: str
    ) -> None:
        """One result record per event, in the events' order (multi-label: one per routed topic)."""
        now = time.monotonic()
        send = self._send
        windows: list[int | None] = list(classified.windows) if classified.windows else [None] * len(events)
        all_tags = classified.tags
        for i, (event, indices, scores) in enumerate(
            zip(events, classified.top_indices, classified.top_scores, strict=True)
        ):
            top_k = [(labels[j], p) for j, p in zip(indices, scores, strict=True)]
            latency_ms = (now - event.received) * 1000.0
            if all_tags is None:
                label = labels[indices[0]]
                value = result_value(
                    event, label=label, score=scores[0], top_k=top_k, model_name=model_name,
                    model_version=model_version, latency_ms=latency_ms, windows=windows[i],
                )
                send(self._router.result_topic(event.topic, label), value, event.key, event.headers, event)
                continue
            tags = [(labels[j], p) for j, p in all_tags[i]]
            value = result_value(
                event, tags=tags, top_k=top_k, model_name=model_name, model_version=model_version,
                latency_ms=latency_ms, windows=windows[i],
            )
            topics = list(dict.fromkeys(self._router.result_topic(event.topic, name) for name, _ in tags))
            if not topics:
                topics = [self._router.output_topic(event.topic)]
            fanout = _Fanout(len(topics)) if len(topics) > 1 else None
            for topic in topics:
                send(topic, value, event.key, event.headers, event, fanout)

    def publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Each letter to its dead-letter topic: original key and bytes, reason headers."""
        for letter in letters:
            self._metrics.count_failure(letter.reason)
            log.warning(
                "dead_lettered", topic=letter.topic, partition=letter.partition, offset=letter.offset,
                reason=letter.reason.label, detail=letter.detail,
            )
            value = letter.value
            if value is None and letter.key is None:
                value = b""  # Kafka needs a key or a value; the reason header says it was null
            self._send(
                self._router.dead_letter_topic(letter.topic), value, letter.key, dead_letter_headers(letter), letter
            )

    def flush(self, timeout_s: float) -> bool:
        """Wait for every sent record's acknowledgement; False if the time ran out."""
        try:
            self._producer.flush(timeout=timeout_s)
        except kafka_errors.KafkaTimeoutError:
            return False
        return True

    def _send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list, item: Event | DeadLetter,
        fanout: _Fanout | None = None,
    ) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers)
        except kafka_errors.KafkaTimeoutError as exc:
            # send() blocks up to max_block_ms for the topic's metadata or for buffer space.
            failure = Failure.TOPIC_MISSING if "metadata" in str(exc).lower() else Failure.DELIVERY_FAILED
            raise BrokerError(
                f"cannot send to topic {topic!r}: {exc}"
                + (" (does it exist? create it or enable auto-creation on the broker)"
                   if failure is Failure.TOPIC_MISSING else ""),
                failure,
            ) from exc
        except kafka_errors.KafkaError as exc:
            raise BrokerError(f"cannot send to topic {topic!r}: {exc}", failure_for_kafka_error(exc)) from exc
        tp = TopicPartition(item.topic, item.partition)
        if fanout is None:
            future.add_callback(self._delivered, tp, item.offset, item.epoch, item.timestamp_ms)
        else:
            future.add_callback(self._delivered_copy, fanout, tp, item.offset, item.epoch, item.timestamp_ms)
        future.add_errback(self._failed, topic, tp, item.offset)

    def _delivered_copy(
        self, fanout: _Fanout, tp: TopicPartition, offset: int, epoch: int, timestamp_ms: int, metadata: Any
    ) -> None:
        """One of several copies of a result arrived; the input is done when the last one has."""
        if fanout.arrived():
            self._delivered(tp, offset, epoch, timestamp_ms, metadata)

    def _delivered(self, tp: TopicPartition, offset: int, epoch: int, timestamp_ms: int, _metadata: Any) -> None:
        # Producer I/O thread: keep it short.
        self._tracker.ack(tp, offset, epoch)
        counter = self._out_counters.get(tp.topic)
        if counter is None:
            counter = self._out_counters[tp.topic] = self._metrics.events_out.labels(topic=tp.topic)
        counter.inc()
        if timestamp_ms > 0:
            self._e2e.observe(max(0.0, time.time() - timestamp_ms / 1000.0))

    def _failed(self, topic: str, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        failure = failure_for_kafka_error(exc)
        if failure in (Failure.KAFKA_TRANSIENT, Failure.KAFKA_FATAL, Failure.INTERNAL, Failure.COMMIT_FAILED):
            failure = Failure.DELIVERY_FAILED  # the producer already retried: this is final
        self._on_fatal(
            BrokerError(
                f"the broker did not acknowledge the output for {tp.topic}[{tp.partition}]@{offset} on topic"
                f" {topic!r}: {exc!r}; it will be redelivered after restart",
                failure,
            )
        )


class _Fanout:
    """Counts the broker's acknowledgements of the copies of one result (callbacks may come from
    the producer's I/O thread in any order); says when the last one has arrived."""

    def __init__(self, copies: int) -> None:
        self._left = copies
        self._lock = threading.Lock()

    def arrived(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left == 0
