"""The one place at-least-once commits happen: ``Committer``, through the consumer's group coordinator.

``commit_async`` on a timer, ``commit`` at revocation and shutdown, each of the positions the
offset tracker (worker/offsets.py) says are committable: an input's offset is committed only once
the broker has acknowledged its result or dead letter. Exactly-once commits in the producer's
transactions instead (``TransactionalCommitter``, worker/transactions.py), behind the same
``OffsetCommitter`` interface the source calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from worker.errors import Failure, WorkerError
from worker.kafka.base import ConsumerClient, Sleep, TopicPartition
from worker.offsets import OffsetTracker, ResumePoint

# A commit whose result has not come within this long no longer holds the next one back.
PENDING_COMMIT_LIMIT_S = 30.0

CommitListener = Callable[[dict[TopicPartition, int], BaseException | None], None]


class OffsetCommitter(Protocol):
    """What the source calls, on the consumer thread: ``Committer`` (at-least-once) or
    ``TransactionalCommitter`` (exactly-once, worker/transactions.py)."""

    def service(self) -> None: ...

    def commit_if_due(self) -> None: ...

    def before_drain(self, handoff: Any) -> None: ...

    def commit_now(self, partitions: Iterable[TopicPartition] | None = None, timeout_s: float = 10.0) -> dict: ...

    async def settle(self, partitions: set[TopicPartition], sleep: Sleep | None, deadline: float) -> dict: ...

    def resume_points(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, ResumePoint]: ...


class Committer:
    """The one place offsets are committed, through the consumer group (at-least-once).

    The source calls it from the consumer thread: ``commit_if_due`` and ``service`` on every
    turn of its loop, ``settle`` and ``resume_points`` when partitions are revoked,
    ``before_drain`` and ``commit_now`` when it stops. The transactional committer
    (``worker/transactions.py``) has the same entry points.
    """

    def __init__(
        self,
        consumer: ConsumerClient,
        tracker: OffsetTracker,
        *,
        interval_s: float,
        on_result: CommitListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._tracker = tracker
        self._interval_s = interval_s
        self._on_result = on_result
        self._clock = clock
        self._next_at = clock() + interval_s
        # When the asynchronous commit whose result has not come yet was sent (None: none is out).
        self._pending_since: float | None = None

    def service(self) -> None:
        """Work the consumer thread does for the committer on each turn (none here)."""

    def before_drain(self, handoff: Any) -> None:
        """The source is about to stop reading (nothing to do here: commit_now commits)."""

    async def settle(self, partitions: set[TopicPartition], sleep: Sleep | None, deadline: float) -> dict:
        """Revocation: wait (up to ``deadline``) for running work on ``partitions``, then commit it."""
        if sleep is not None:
            while self._tracker.in_flight(partitions) and time.monotonic() < deadline:
                await sleep(0.01)
        return await self.commit_in_listener(partitions)

    def resume_points(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, ResumePoint]:
        """Where revoked partitions resume if assigned straight back (see OffsetTracker.resume_points)."""
        return self._tracker.resume_points(partitions)

    def commit_if_due(self) -> None:
        """Commit acknowledged positions asynchronously, at most once per interval (consumer thread)."""
        now = self._clock()
        if now < self._next_at:
            return
        self._next_at = now + self._interval_s
        pending = self._pending_since
        if pending is not None and now - pending < PENDING_COMMIT_LIMIT_S:
            # One commit at a time: while no coordinator answers (a broker outage) librdkafka keeps
            # each commit and retries it, and one every interval piled up (123 after 45 s of two
            # brokers of three down), all sent at once when one answers. The next commit carries
            # these offsets and any acknowledged since.
            return
        positions = self._tracker.committable()
        if positions:
            self._pending_since = now
            self._consumer.commit_async(positions, self._async_done(positions), metadata=self._tracker.hints(positions))

    def commit_now(self, partitions: Iterable[TopicPartition] | None = None, timeout_s: float = 10.0) -> dict:
        """Commit acknowledged positions and wait for the broker (shutdown; consumer thread)."""
        positions = self._tracker.committable(partitions)
        if not positions:
            return {}
        try:
            self._consumer.commit(positions, timeout_s, metadata=self._tracker.hints(positions))
        except Exception as exc:
            self._report(positions, exc)
            raise
        self._tracker.mark_committed(positions)
        self._report(positions, None)
        return positions

    async def commit_in_listener(self, partitions: Iterable[TopicPartition]) -> dict:
        """Commit from the rebalance handler, before the partitions move (see ConsumerClient)."""
        positions = self._tracker.committable(partitions)
        if not positions:
            return {}
        try:
            await self._consumer.commit_in_rebalance(positions, metadata=self._tracker.hints(positions))
        except Exception as exc:
            self._report(positions, exc)
            return {}
        self._tracker.mark_committed(positions)
        self._report(positions, None)
        return positions

    def _async_done(self, positions: dict[TopicPartition, int]) -> Callable[[BaseException | None], None]:
        def done(error: BaseException | None) -> None:
            self._pending_since = None
            if error is not None:
                self._report(positions, error)
            else:
                self._tracker.mark_committed(positions)
                self._report(positions, None)

        return done

    def _report(self, positions: dict[TopicPartition, int], error: BaseException | None) -> None:
        if self._on_result is not None:
            self._on_result(positions, error)


def commit_failure(error: BaseException) -> Failure:
    """How a failed commit is handled: rebalance-related and transient ones are retried by the next commit."""
    failure = error.failure if isinstance(error, WorkerError) else Failure.INTERNAL
    return Failure.COMMIT_FAILED if failure in (Failure.COMMIT_FAILED, Failure.KAFKA_TRANSIENT) else failure
