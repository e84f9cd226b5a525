"""Which topics a producer has stopped writing to, so that it can forget them.

Both clients keep every topic they have ever produced to in their metadata and refresh it for the
producer's life: kafka-python by design (its sender: "should never remove topics for a producer
instance"), librdkafka by an open bug (confluentinc/librdkafka#2786, #4214). On a broker with
``auto.create.topics.enable`` (Apache Kafka's default) each such refresh creates a deleted topic
again. Seen from outside (bench/outsider/churn.sh, a worker reading a pattern while input topics
came and went): the result topics of the input topics deleted under the worker came back within
seconds, while it ran (all 5 in a 2-minute kafka-python run; 27 of 32 in 15 minutes with confluent). Where the broker does not create topics,
kafka-python logs an error for each such topic at every refresh instead (its cluster.py). Java's
producer forgets a topic left idle for ``metadata.max.idle.ms`` (5 minutes, KAFKA-2948); the
producers here do the same after ``TAGSTREAM_OUTPUT_TOPIC_IDLE_S``, each in its own way
(``forget_idle_topics``).

Cost on the hot path: one set insertion per record sent. The rest runs at most every ``CHECK_S``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CHECK_S = 30.0  # how often the sending thread looks for idle topics, at most (a quarter of the idle time if less)


class TopicUse:
    """Topics sent to, and those not sent to for ``idle_s``. One thread only: the one that sends."""

    __slots__ = ("_check_s", "_clock", "_last", "_next_check", "idle_s", "used")

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.used: set[str] = set()  # sent to since the last check: send() adds, nothing else
        self.idle_s = idle_s
        self._check_s = min(CHECK_S, idle_s / 4)
        self._clock = clock
        self._last: dict[str, float] = {}  # topic -> the check that last found it used
        self._next_check = clock() + self._check_s

    def idle(self) -> list[str]:
        """Topics sent to before, and not for ``idle_s`` since (each named once); [] between checks."""
        now = self._clock()
        if now < self._next_check:
            return []
        self._next_check = now + self._check_s
        used, self.used = self.used, set()
        for topic in used:
            self._last[topic] = now
        gone = [topic for topic, seen in self._last.items() if now - seen >= self.idle_s]
        for topic in gone:
            del self._last[topic]
        return gone

    def keep(self, topics: list[str]) -> None:
        """Topics ``idle`` named that could not be forgotten this time: named again at the next check."""
        seen = self._clock() - self.idle_s
        for topic in topics:
            self._last.setdefault(topic, seen)
