"""Fakes for the Kafka client objects the worker stages talk to (unit tests only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka.structs import TopicPartition


class FakeFuture:
    """A send() future whose outcome the test decides."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[Any, tuple]] = []
        self.errbacks: list[tuple[Any, tuple]] = []

    def add_callback(self, fn, *args):
        self.callbacks.append((fn, args))
        return self

    def add_errback(self, fn, *args):
        self.errbacks.append((fn, args))
        return self

    def succeed(self, metadata: Any = None) -> None:
        for fn, args in self.callbacks:
            fn(*args, metadata)

    def fail(self, exc: BaseException) -> None:
        for fn, args in self.errbacks:
            fn(*args, exc)


@dataclass
class Sent:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list
    future: FakeFuture


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.raise_on_send: BaseException | None = None

    def send(self, topic, value=None, key=None, headers=None):
        if self.raise_on_send is not None:
            raise self.raise_on_send
        future = FakeFuture()
        self.sent.append(Sent(topic, value, key, headers or [], future))
        return future

    def ack_all(self) -> None:
        for sent in self.sent:
            sent.future.succeed()

    def flush(self, timeout=None):
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
    """Serves queued poll results; records pause/resume/commit calls."""

    def __init__(self, partitions: list[TopicPartition]) -> None:
        self._assignment = set(partitions)
        self._paused: set[TopicPartition] = set()
        self.polls: list[dict] = []
        self.pause_calls = 0
        self.resume_calls = 0
        self.commits: list[dict] = []
        self.seeks: list[tuple] = []

    def assignment(self):
        return set(self._assignment)

    def poll(self, timeout_ms=0, max_records=None):
        while self.polls:
            batch = self.polls.pop(0)
            batch = {tp: recs for tp, recs in batch.items() if tp not in self._paused}
            if batch:
                return batch
        return {}

    def pause(self, *tps):
        self.pause_calls += 1
        self._paused |= set(tps)

    def resume(self, *tps):
        self.resume_calls += 1
        self._paused -= set(tps)

    def paused(self):
        return set(self._paused)

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    def highwater(self, tp):
        return None

    def commit(self, offsets, timeout_ms=None):
        self.commits.append(offsets)

    def commit_async(self, offsets, callback=None):
        self.commits.append(offsets)
        if callback:
            callback(offsets, object())
