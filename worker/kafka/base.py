"""The interfaces between the pipeline and a Kafka client library.

The source, the sink and the committers only use what is declared here. A backend module
(``kafkapython.py``, ``confluent/``) implements both clients and translates every exception of its
library into ``BrokerError`` with a ``Failure`` (see ``worker/errors.py``).

Positions are plain ints: the offset of the next record to read, as Kafka commits them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from worker.errors import BrokerError
    from worker.settings import WorkerSettings


# A broker that keeps its connections but answers nothing (its JVM stopped, or its replies
# black-holed): both clients count it up until each request's own timeout (kafka-python 30 s,
# librdkafka 60 s), the group coordinator too, so /readyz stayed ready through a SIGSTOP of the
# broker (confluent 40 s; kafka-python bench/outsider/single.sh's 15 s). A request that has waited this long on a
# connection that heard nothing meanwhile, with no connection hearing anything for as long, means the broker
# is not answering: a fetch is answered within fetch.wait.max.ms (0.5 s) even with no records, a heartbeat in
# milliseconds. The outage is then dated from the last answer (ConsumerClient.silent_for).
SILENT_BROKER_S = 10.0


class TopicPartition(NamedTuple):
    """A partition of a topic; equal to (and hashed like) any client's (topic, partition) tuple."""

    topic: str
    partition: int


class Record(Protocol):
    """One consumed record, as every backend hands it over."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch (the record's CreateTime or LogAppendTime)
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass(slots=True)
class UnreadableRecord:
    """Where a record is that the client could not decode: dead-lettered (reason unreadable_record),
    without its bytes, and read past."""

    topic: str
    partition: int
    offset: int
    error: str
    timestamp: int = -1
    key: bytes | None = None
    value: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


Sleep = Callable[[float], Awaitable[Any]]


class RebalanceHandler(Protocol):
    """What the consumer calls when partitions move (the source implements it).

    ``on_revoked`` is a coroutine so that a backend running it on an I/O loop can keep
    heartbeating while it waits (``sleep`` yields to that loop; None where waiting is not
    possible, and then revocation drops in-flight work for redelivery instead of waiting).
    """

    async def on_revoked(self, partitions: set[TopicPartition], sleep: Sleep | None) -> None: ...

    def on_assigned(self, partitions: set[TopicPartition]) -> None: ...

    def on_lost(self, partitions: set[TopicPartition]) -> None: ...


class ConsumerClient(Protocol):
    """A consumer-group member. Used from one thread (the source's), like the libraries require."""

    def subscribe(self, *, topics: list[str] | None, pattern: str | None, handler: RebalanceHandler) -> None: ...

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        """Records by partition, each list in offset order (empty when none came in time)."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def commit_async(
        self, positions: dict[TopicPartition, int], on_done: Callable[[BaseException | None], None],
        metadata: dict[TopicPartition, str] | None = None,
    ) -> None:
        """Commit without waiting; ``on_done`` gets the result. ``metadata``: per partition, the string
        stored with its offset (worker/delivered_hints.py), as for the two below."""
        ...

    def commit(
        self, positions: dict[TopicPartition, int], timeout_s: float, metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        """Commit and wait for the broker (raises BrokerError)."""
        ...

    async def commit_in_rebalance(
        self, positions: dict[TopicPartition, int], metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        """Commit from inside ``RebalanceHandler.on_revoked`` (raises BrokerError)."""
        ...

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The latest known end offset (high watermark) of each partition; may ask the broker."""
        ...

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed position of each partition (None: nothing committed)."""
        ...

    def committed_metadata(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        """The group's committed position of each partition with the metadata stored with it (only
        partitions with a commit)."""
        ...

    def start_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The log start offset of each partition: its earliest record the broker still holds
        (retention and DeleteRecords move it on); asks the broker."""
        ...

    def position(self, tp: TopicPartition) -> int | None:
        """The offset of the next record a poll would return for an assigned partition: past the
        records already returned, and past transaction markers and records of aborted transactions,
        which a read_committed poll never returns (None: not known yet)."""
        ...

    def group_metadata(self) -> Any:
        """The membership snapshot a transactional producer sends with the offsets (KIP-447)."""
        ...

    def coordinator_known(self) -> bool:
        """Whether the group coordinator is known and reachable right now (a health signal)."""
        ...

    def silent_for(self) -> float:
        """Seconds since the brokers last answered anything, when they keep their connections but
        answer nothing (SILENT_BROKER_S); 0 otherwise. The outage began then, not when it was told."""
        ...

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...

    def topics(self) -> set[str]: ...

    def close(self, timeout_s: float, leave_group: bool = True) -> None:
        """Close the connections without auto-committing. A dynamic member leaves the group; a static
        one (group_instance_id) only when ``leave_group`` is true, else its partitions wait for it."""
        ...


class DeliveryHandler(Protocol):
    """Where a producer reports the outcome of each ``send`` (the sink implements it)."""

    def delivered(self, token: Any) -> None:
        """The broker acknowledged the record sent with ``token`` (producer I/O thread)."""
        ...

    def delivered_many(self, tokens: list[Any]) -> None:
        """``delivered`` for each of ``tokens``, in one call (the acknowledgements of one poll with confluent,
        of one produce response with kafka-python; at-least-once only)."""
        ...

    def failed(self, token: Any, error: BrokerError) -> None:
        """The record sent with ``token`` will never be acknowledged (producer I/O thread)."""
        ...


class ProducerClient(Protocol):
    """An asynchronous producer, thread-safe; transactional when given a transactional id."""

    def set_handler(self, handler: DeliveryHandler) -> None: ...

    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes | None]], token: Any
    ) -> None:
        """Queue one record; its outcome reaches the handler with ``token``.

        Raises BrokerError at once when the record cannot even be queued: with
        ``Failure.RECORD_REJECTED`` when this record alone is at fault (too large).
        """
        ...

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued record has an outcome; False when the time ran out."""
        ...

    def forget_idle_topics(self) -> list[str]:
        """Drop the topics not sent to for a while from the client's metadata, so that its refresh
        does not create them again once deleted (worker/kafka/topic_use.py); returns those dropped.
        Called by the thread that sends, between sends, often: it returns at once between checks."""
        ...

    def init_transactions(self) -> None: ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(
        self, positions: dict[TopicPartition, int], group_metadata: Any, metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        """Add the input offsets to the open transaction (``metadata``: as for ConsumerClient.commit)."""
        ...

    def commit_transaction(self) -> None: ...

    def abort_transaction(self) -> None: ...

    def close(self, timeout_s: float) -> None: ...


def open_clients(
    settings: WorkerSettings, *, transactional_id: str | None = None
) -> tuple[ConsumerClient, ProducerClient]:
    """The consumer and producer of the configured client library, connected (BrokerError if not)."""
    if settings.kafka_client == "confluent":
        try:
            from worker.kafka import confluent
        except ImportError as exc:  # settings check this at load; an install can still be broken
            from worker.errors import SettingsError

            raise SettingsError(
                f"TAGSTREAM_KAFKA_CLIENT=confluent: confluent-kafka cannot be imported ({exc}); install the"
                " confluent extra (pip install 'tagstream[confluent]'), or use kafka-python"
            ) from exc
        return confluent.open_clients(settings, transactional_id=transactional_id)
    from worker.kafka import kafkapython

    return kafkapython.open_clients(settings, transactional_id=transactional_id)


def take_all(queue: deque[Any]) -> list[Any]:
    """Everything in ``queue``, oldest first, taken one item at a time: other threads may append or
    take meanwhile (each item is taken once). The producers' acknowledgement queues use it."""
    taken = []
    popleft = queue.popleft
    try:
        while True:
            taken.append(popleft())
    except IndexError:
        return taken


def run_bounded(
    call: Callable[[], Any], timeout_s: float, name: str, stop: threading.Event | None = None
) -> tuple[bool, Any]:
    """Run a blocking client call that has no (reliable) timeout of its own on a daemon thread,
    waiting at most ``timeout_s``, or until ``stop`` is set. Returns (True, its value) when it
    returned, re-raises what it raised, and (False, None) when it is still running (the thread is
    left behind: a call stuck inside a client cannot be cancelled)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and (left := deadline - time.monotonic()) > 0 and not (stop and stop.is_set()):
        thread.join(min(0.1, left))
    if thread.is_alive():
        return False, None
    if "error" in outcome:
        raise outcome["error"]
    return True, outcome.get("value")
