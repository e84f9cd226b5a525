"""The confluent-kafka backend (librdkafka, ``TAGSTREAM_KAFKA_CLIENT=confluent``): consumer, producer.

librdkafka does the network I/O, batching, compression and record decoding in C threads of its
own, so the worker's interpreter pays a few microseconds per record instead of kafka-python's
tens. Same interfaces and guarantees as ``kafkapython.py``; where librdkafka works differently,
this package bridges it:

- Delivery reports and error/log callbacks only run inside ``poll()``/``flush()``: a small
  thread (``tagstream-kafka-dr``) polls the producer, so acknowledgements reach the sink as
  kafka-python's I/O thread delivers them. ``flush`` holds that thread off, so when it returns
  every acknowledgement has been applied (the exactly-once commit reads the tracker next).
  Outside transactions the acknowledgements one poll serves reach the sink together
  (``delivered_many``): its bookkeeping and metrics are then paid per poll, not per record.
- Rebalance callbacks run inside ``consume()`` on the consumer thread. ``on_revoked`` (a
  coroutine) runs to completion there under ``asyncio.run``; librdkafka heartbeats on its own
  threads meanwhile. Seeks made in ``on_assigned`` become the starting offsets of the
  ``assign()`` call (librdkafka refuses a seek before its fetcher has started), and a seek
  refused later is retried before each poll, the partition's records held back until it holds.
- ``consume(n, timeout)`` waits for all ``n`` records; ``poll`` takes what is there at once and
  waits only when nothing is, so a quiet topic costs no batching delay.
- Pattern subscriptions are resolved here (librdkafka's regex has no look-ahead, which the
  pattern that excludes the worker's own topics needs) and re-resolved every
  ``PATTERN_REFRESH_S``.
- A static member's ``close()`` does not leave the group (KIP-345) and confluent's admin client
  cannot remove members: the kafka-python admin client does it, as for the other backend.
- Blocking calls librdkafka does not bound (a synchronous offset commit, ``close``) run in a
  helper thread that is waited for with the caller's timeout.
- Transactional calls (exactly-once) are retried while librdkafka says the same call may be
  retried, and each attempt runs in a helper thread: one that outlives its own timeout (librdkafka
  2.16 can block in ``send_offsets_to_transaction`` forever after a broker restart, see
  ``TXN_STUCK_GRACE_S``) fails the transaction, and the abort that follows replaces the stuck
  client with a new one whose ``init_transactions`` fences it and aborts its open transaction.
  The worker's threads never wait on librdkafka without a bound, so a stuck call cannot hang the
  worker or its exit.
- A record whose header keys are not UTF-8 cannot be decoded by confluent-kafka at all (its
  ``headers()`` raises): it is handed over with the ``INVALID_HEADERS_MARKER`` header alone, and
  dead-lettered (invalid_header) with its key and value but none of its headers.
- A produce request the broker refuses as too large fails every record in it (librdkafka does
  not split batches the way kafka-python does): each is sent again alone, through a second
  producer that makes one-record batches, before its refusal counts (at-least-once only; in a
  transaction the refusal aborts it, as with kafka-python).

``failure_for_error`` is this client's one table from ``KafkaError`` codes to ``Failure`` kinds.

    confluent/errors.py     the error table (``failure_for_error``) and the clients' error callback
    confluent/config.py     librdkafka settings of the consumer and the producer
    confluent/records.py    consumed records; our partitions and offsets in confluent-kafka's types
    confluent/consumer.py   ``ConfluentConsumer``
    confluent/producer.py   ``ConfluentProducer``
    confluent/__init__.py   ``open_clients``: both, connected
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException

from worker.errors import BrokerError, Failure
from worker.kafka import diagnose
from worker.kafka.confluent.config import common_config, consumer_config, producer_config
from worker.kafka.confluent.consumer import ConfluentConsumer, brokers_silent_for
from worker.kafka.confluent.errors import ERROR_TABLE, ClientErrors, failure_for_error, translate
from worker.kafka.confluent.producer import ConfluentProducer
from worker.kafka.diagnose import CONNECT_HINTS, bootstrap_timeout_error

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

CONNECT_PROBE_S = 0.5  # start-up asks for metadata this often until the bootstrap timeout


def _connect(settings: WorkerSettings, client: Any, errors: ClientErrors) -> None:
    """Wait until ``client`` has cluster metadata, or raise a BrokerError saying what to fix.

    librdkafka connects lazily and retries forever; a refused login or TLS handshake reaches the
    error callback within milliseconds, so start-up stops at once instead of timing out.
    """
    deadline = time.monotonic() + diagnose.BOOTSTRAP_TIMEOUT_MS / 1000
    last: BaseException | None = None
    while True:
        if errors.auth is not None:
            failure = failure_for_error(errors.auth)
            raise BrokerError(
                f"Kafka refused the connection: {errors.auth.str()}{CONNECT_HINTS.get(failure, '')}", failure
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise bootstrap_timeout_error(settings, last or TimeoutError("no metadata"))
        try:
            client.list_topics(timeout=min(CONNECT_PROBE_S, left))
            return
        except KafkaException as exc:
            last = exc
            failure = failure_for_error(exc)
            if failure in (Failure.AUTHENTICATION_FAILED, Failure.AUTHORIZATION_FAILED):
                raise BrokerError(
                    f"Kafka refused the connection: {translate(exc, 'metadata')}{CONNECT_HINTS.get(failure, '')}",
                    failure,
                ) from exc


def open_clients(
    settings: WorkerSettings, *, transactional_id: str | None = None
) -> tuple[ConfluentConsumer, ConfluentProducer]:
    producer = ConfluentProducer(settings, transactional_id)
    try:
        _connect(settings, producer.client, producer.errors)
        consumer = ConfluentConsumer(settings)
    except BaseException:
        producer.close(2)
        raise
    try:
        _connect(settings, consumer.client, consumer.errors)
    except BaseException:
        consumer.close(2, leave_group=False)
        producer.close(2)
        raise
    return consumer, producer


__all__ = [
    "ERROR_TABLE",
    "ConfluentConsumer",
    "ConfluentProducer",
    "brokers_silent_for",
    "common_config",
    "consumer_config",
    "failure_for_error",
    "open_clients",
    "producer_config",
    "translate",
]
