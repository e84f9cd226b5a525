"""The confluent backend's error table: librdkafka's ``KafkaError`` codes to ``Failure`` kinds, and the
clients' error callback."""

from __future__ import annotations

import time

import structlog
from confluent_kafka import KafkaError, KafkaException

from worker.errors import BrokerError, Failure

log = structlog.get_logger("tagstream.worker.kafka")


E = KafkaError
# Codes whose meaning is fixed; anything else goes by the error's own flags (fatal, retriable,
# txn_requires_abort) in failure_for_error.
ERROR_TABLE: dict[int, Failure] = {
    # this record alone: too large for the producer (produce() raises it at once: librdkafka has
    # no local code of its own for this) or for the topic (the broker's answer), or invalid
    E.MSG_SIZE_TOO_LARGE: Failure.RECORD_REJECTED,
    E.RECORD_LIST_TOO_LARGE: Failure.RECORD_REJECTED,
    E.INVALID_RECORD: Failure.RECORD_REJECTED,
    E.INVALID_MSG: Failure.RECORD_REJECTED,
    E.INVALID_MSG_SIZE: Failure.RECORD_REJECTED,
    E.INVALID_TIMESTAMP: Failure.RECORD_REJECTED,
    # exactly-once: the transaction is being aborted (records purged by abort_transaction)
    E._PURGE_QUEUE: Failure.TRANSACTION_ABORTED,
    E._PURGE_INFLIGHT: Failure.TRANSACTION_ABORTED,
    E.TRANSACTION_ABORTABLE: Failure.TRANSACTION_ABORTED,
    # credentials
    E._AUTHENTICATION: Failure.AUTHENTICATION_FAILED,
    E.SASL_AUTHENTICATION_FAILED: Failure.AUTHENTICATION_FAILED,
    E.UNSUPPORTED_SASL_MECHANISM: Failure.AUTHENTICATION_FAILED,
    E.ILLEGAL_SASL_STATE: Failure.AUTHENTICATION_FAILED,
    E._SSL: Failure.AUTHENTICATION_FAILED,
    # ACLs
    E.TOPIC_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    E.GROUP_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    E.CLUSTER_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: Failure.AUTHORIZATION_FAILED,
    # topics
    E.UNKNOWN_TOPIC_OR_PART: Failure.TOPIC_MISSING,
    E._UNKNOWN_TOPIC: Failure.TOPIC_MISSING,
    E._UNKNOWN_PARTITION: Failure.TOPIC_MISSING,
    E.TOPIC_EXCEPTION: Failure.TOPIC_MISSING,
    # zombies
    E.FENCED_INSTANCE_ID: Failure.INSTANCE_FENCED,
    E.PRODUCER_FENCED: Failure.PRODUCER_FENCED,
    E.INVALID_PRODUCER_EPOCH: Failure.PRODUCER_FENCED,
    E.TRANSACTION_COORDINATOR_FENCED: Failure.PRODUCER_FENCED,
    E._FENCED: Failure.PRODUCER_FENCED,
    # the group moved on: the next commit covers it
    E.REBALANCE_IN_PROGRESS: Failure.COMMIT_FAILED,
    E.ILLEGAL_GENERATION: Failure.COMMIT_FAILED,
    E.UNKNOWN_MEMBER_ID: Failure.COMMIT_FAILED,
    E._ASSIGNMENT_LOST: Failure.COMMIT_FAILED,
    E._MAX_POLL_EXCEEDED: Failure.COMMIT_FAILED,
    E.STALE_MEMBER_EPOCH: Failure.COMMIT_FAILED,
    # no broker answers
    E._ALL_BROKERS_DOWN: Failure.BROKER_UNREACHABLE,
    E._TRANSPORT: Failure.BROKER_UNREACHABLE,
    E._RESOLVE: Failure.BROKER_UNREACHABLE,
    # transient (the client retries; the worker's next turn does too)
    E._TIMED_OUT: Failure.KAFKA_TRANSIENT,
    E._TIMED_OUT_QUEUE: Failure.KAFKA_TRANSIENT,
    E.REQUEST_TIMED_OUT: Failure.KAFKA_TRANSIENT,
    E._WAIT_COORD: Failure.KAFKA_TRANSIENT,
    E.COORDINATOR_NOT_AVAILABLE: Failure.KAFKA_TRANSIENT,
    E.NOT_COORDINATOR: Failure.KAFKA_TRANSIENT,
    E.COORDINATOR_LOAD_IN_PROGRESS: Failure.KAFKA_TRANSIENT,
    E.NOT_LEADER_FOR_PARTITION: Failure.KAFKA_TRANSIENT,
    E.LEADER_NOT_AVAILABLE: Failure.KAFKA_TRANSIENT,
    E.NETWORK_EXCEPTION: Failure.KAFKA_TRANSIENT,
    E.NOT_ENOUGH_REPLICAS: Failure.KAFKA_TRANSIENT,
    E.CONCURRENT_TRANSACTIONS: Failure.KAFKA_TRANSIENT,
    # a record outlived message.timeout.ms (the broker was away longer than broker_outage_s)
    E._MSG_TIMED_OUT: Failure.DELIVERY_FAILED,
    # the client is unusable (its flags do not always say so; see _consumer_failure)
    E._FATAL: Failure.KAFKA_FATAL,
}

# Consumer errors that concern one record: it is dead-lettered by location and read past.
UNREADABLE_CODES = frozenset({E._BAD_MSG, E._BAD_COMPRESSION, E._KEY_DESERIALIZATION, E._VALUE_DESERIALIZATION})
# Consumer errors that are news, not failures.
QUIET_CODES = frozenset({E._PARTITION_EOF, E._NO_OFFSET, E.NO_ERROR})


def failure_for_error(error: BaseException | KafkaError) -> Failure:
    """Map a confluent-kafka error (a KafkaError or the exception carrying one) to its Failure kind."""
    err = kafka_error(error)
    if err is None:
        return Failure.DELIVERY_FAILED if isinstance(error, BufferError) else Failure.INTERNAL
    mapped = ERROR_TABLE.get(err.code())
    if mapped is not None:
        return mapped
    if err.txn_requires_abort():
        return Failure.TRANSACTION_ABORTED
    if err.fatal():
        return Failure.KAFKA_FATAL
    if err.retriable():
        return Failure.KAFKA_TRANSIENT
    return Failure.KAFKA_FATAL


def translate(error: BaseException | KafkaError, what: str) -> BrokerError:
    err = kafka_error(error)
    text = err.str() if err is not None else str(error)
    return BrokerError(f"{what}: {text}", failure_for_error(error))


def kafka_error(error: BaseException | KafkaError) -> KafkaError | None:
    if isinstance(error, KafkaError):
        return error
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


class ClientErrors:
    """The error callback's record of what went wrong, for start-up diagnosis and health."""

    def __init__(self, client: str) -> None:
        self._client = client
        self.auth: KafkaError | None = None  # a refused login or TLS handshake, if any
        self.all_down_at: float | None = None  # when librdkafka last said no broker is up
        self.muted = False  # the client was replaced: what it still says is no news

    def __call__(self, err: KafkaError) -> None:
        if self.muted:
            return
        code = err.code()
        if code in (E._AUTHENTICATION, E.SASL_AUTHENTICATION_FAILED, E._SSL, E.UNSUPPORTED_SASL_MECHANISM):
            self.auth = err
        if code == E._ALL_BROKERS_DOWN:
            self.all_down_at = time.monotonic()
        quiet = code in (E._TRANSPORT, E._ALL_BROKERS_DOWN, E._RESOLVE)  # logged by librdkafka already
        (log.debug if quiet else log.warning)(
            "kafka_client_error", client=self._client, code=err.name(), error=err.str(), fatal=err.fatal()
        )
