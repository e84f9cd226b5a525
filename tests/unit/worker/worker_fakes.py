"""Fakes for the Kafka client objects the worker stages talk to (unit tests only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka.structs import TopicPartition


class FakeFuture:
    """The outcome of one send, decided by the test; reported like a ProducerClient backend does."""

    def __init__(self, producer: FakeProducer, token: Any) -> None:
        self._producer = producer
        self.token = token

    def succeed(self) -> None:
        self._producer.handler.delivered(self.token)

    def fail(self, exc: BaseException) -> None:
        from worker.kafka.kafkapython import translate

        self._producer.handler.failed(self.token, translate(exc, "the broker did not acknowledge a record"))


@dataclass
class Sent:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list
    future: FakeFuture


class Clock:
    """A clock the test moves by hand (``clock.now += s``), for code that takes a ``clock`` callable."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProducer:
    """A ProducerClient (worker/kafka/base.py) that keeps what was sent; flush settles nothing."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.raise_on_send: BaseException | None = None
        self.handler: Any = None
        self.flushes = 0

    def set_handler(self, handler) -> None:
        self.handler = handler

    def send(self, topic, value, key, headers, token):
        if self.raise_on_send is not None:
            from worker.errors import BrokerError
            from worker.kafka.kafkapython import translate

            exc = self.raise_on_send
            raise exc if isinstance(exc, BrokerError) else translate(exc, f"cannot send to topic {topic!r}")
        self.sent.append(Sent(topic, value, key, headers or [], FakeFuture(self, token)))

    def ack_all(self) -> None:
        for sent in self.sent:
            sent.future.succeed()

    def flush(self, timeout_s=None):
        self.flushes += 1
        return True

    def forget_idle_topics(self):
        return []

    def close(self, timeout_s=None):
        return None


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 1_700_000_000_000
    headers: list = field(default_factory=list)


class FakeConsumer:
    """A ConsumerClient (worker/kafka/base.py) serving queued poll results; records pause/resume/commit calls."""

    def __init__(self, partitions: list[TopicPartition]) -> None:
        self._assignment = set(partitions)
        self._paused: set[TopicPartition] = set()
        self.polls: list[dict] = []
        self.pause_calls = 0
        self.resume_calls = 0
        self.commits: list[dict] = []
        self.seeks: list[tuple] = []
        self.ends: dict[TopicPartition, int] = {}
        self.group_committed: dict[TopicPartition, int | None] = {}
        self.positions: dict[TopicPartition, int] = {}  # what position() answers (the client's read position)
        self.starts: dict[TopicPartition, int] = {}  # what start_offsets() answers (log start offsets)
        self.start_offset_calls = 0
        self.committed_asked: list[set] = []  # the partitions of each committed() call
        self.metadata: list[dict] = []  # the metadata of each commit, beside ``commits``
        self.group_metadata_stored: dict[TopicPartition, str] = {}  # what committed_metadata() answers with
        self.coordinator = True
        self.silent_s = 0.0  # silent_for(): how long the brokers have answered nothing, when coordinator is False

    def assignment(self):
        return set(self._assignment)

    def poll(self, timeout_ms=0, max_records=None):
        while self.polls:
            batch = self.polls.pop(0)
            batch = {tp: recs for tp, recs in batch.items() if tp not in self._paused}
            if batch:
                return batch
        return {}

    def pause(self, tps):
        self.pause_calls += 1
        self._paused |= set(tps)

    def resume(self, tps):
        self.resume_calls += 1
        self._paused -= set(tps)

    def paused(self):
        return set(self._paused)

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    def end_offsets(self, tps):
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}

    def committed(self, tps):
        self.committed_asked.append(set(tps))
        return {tp: self.group_committed.get(tp) for tp in tps}

    def position(self, tp):
        return self.positions.get(tp)

    def start_offsets(self, tps):
        self.start_offset_calls += 1
        return {tp: self.starts[tp] for tp in tps if tp in self.starts}

    def coordinator_known(self):
        return self.coordinator

    def silent_for(self):
        return self.silent_s

    def committed_metadata(self, tps):
        return {tp: (self.group_committed[tp], self.group_metadata_stored.get(tp, "")) for tp in tps
                if self.group_committed.get(tp) is not None}

    def commit(self, positions, timeout_s=None, metadata=None):
        self.commits.append(positions)
        self.metadata.append(metadata or {})

    def commit_async(self, positions, on_done, metadata=None):
        self.commits.append(positions)
        self.metadata.append(metadata or {})
        on_done(None)

    async def commit_in_rebalance(self, positions, metadata=None):
        self.commits.append(positions)
        self.metadata.append(metadata or {})
