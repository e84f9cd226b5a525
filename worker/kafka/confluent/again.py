"""Records whose topic librdkafka gave up on, sent once more when the topic can be seen.

librdkafka fails a record whose topic it has not seen within ``topic.metadata.propagation.max.ms``
(15 s here) of the topic's first use, and that wait is counted through a broker freeze too. A broker
that creates topics on request answers "unknown topic" for a new one while creating it, so after a
freeze the first answer failed the record at once, and the worker stopped (exit 4: its first dead
letter fell in a 25-s freeze, ``bench/outsider/freeze_first_send.sh`` with ``DLQ_EXISTS=0``).

``SendAgain`` keeps such records (their bytes come back with the delivery report) and sends each
again from the delivery-report thread once librdkafka accepts its topic, asking the broker for the
topic's metadata about once a second meanwhile (librdkafka refuses a produce to a topic it holds as
missing until its metadata says otherwise). A record still refused after ``wait_s`` fails, and so
does one refused a second time: a topic that really is missing is final, 15 s later than before.
Records of one topic are sent again in the order they failed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from worker.errors import BrokerError, Failure
from worker.kafka.confluent.errors import E, translate

TOPIC_UNKNOWN = frozenset({E.UNKNOWN_TOPIC_OR_PART, E._UNKNOWN_TOPIC})  # broker's, and librdkafka's own
ASK_EVERY_S = 1.0  # how often the broker is asked for a waiting topic's metadata
ASK_TIMEOUT_S = 1.0


@dataclass
class _Record:
    token: Any
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list | None
    deadline: float


class SendAgain:
    """The records waiting to be sent again; ``send_due`` runs on the thread serving delivery reports."""

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._wait_s = wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: list[_Record] = []
        self._asked_at: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, token: Any, topic: str, value: bytes | None, key: bytes | None, headers: list | None) -> None:
        with self._lock:
            self._waiting.append(_Record(token, topic, value, key, headers, self._clock() + self._wait_s))

    def send_due(
        self,
        produce: Callable[[_Record], None],
        ask: Callable[[str, float], Any],
        failed: Callable[[Any, BrokerError], None],
    ) -> None:
        """Try every waiting record: ``produce`` it (raises KafkaException or BufferError when refused);
        ``ask`` the broker for a topic librdkafka still holds as missing; ``failed`` past the wait."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        now = self._clock()
        held: set[str] = set()  # topics a record is still waiting for: later ones keep their order
        keep: list[_Record] = []
        for record in waiting:
            if record.topic in held:
                keep.append(record)
                continue
            try:
                produce(record)
                continue
            except BufferError:
                error: BaseException | None = None  # the buffer is full: next time
            except KafkaException as exc:
                error = exc
                code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
                if code not in TOPIC_UNKNOWN:
                    failed(record.token, translate(exc, f"cannot send to topic {record.topic!r}"))
                    continue
            if now >= record.deadline:
                failed(record.token, BrokerError(
                    f"cannot send to topic {record.topic!r}: librdkafka still holds it as missing {self._wait_s:g} s"
                    f" after the record was kept to be sent again ({_text(error)}); create it, or enable auto-creation"
                    " on the broker", Failure.TOPIC_MISSING,
                ) if error else BrokerError(
                    f"cannot send to topic {record.topic!r}: the producer's buffer stayed full", Failure.DELIVERY_FAILED,
                ))
                continue
            held.add(record.topic)
            keep.append(record)
            if error is not None and now - self._asked_at.get(record.topic, -ASK_EVERY_S) >= ASK_EVERY_S:
                self._asked_at[record.topic] = now
                with contextlib.suppress(KafkaException, RuntimeError):  # no answer yet: asked again in a second
                    ask(record.topic, ASK_TIMEOUT_S)  # the answer updates librdkafka's metadata
        with self._lock:
            self._waiting[:0] = keep  # ahead of any added meanwhile


def _text(exc: BaseException) -> str:
    """librdkafka's words for a KafkaException (its KafkaError's repr is noise in a log line)."""
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)
