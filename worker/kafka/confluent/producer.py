"""The confluent producer (``ProducerClient``): see the package docstring for how it bridges librdkafka."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import confluent_kafka as ck
import structlog
from confluent_kafka import KafkaError, KafkaException

from worker.errors import BrokerError, Failure
from worker.kafka import diagnose
from worker.kafka.base import DeliveryHandler, TopicPartition, run_bounded, take_all
from worker.kafka.confluent.again import TOPIC_UNKNOWN, SendAgain
from worker.kafka.confluent.config import TOPIC_METADATA_WAIT_MS, new_client, producer_config
from worker.kafka.confluent.errors import ClientErrors, E, kafka_error, translate
from worker.kafka.confluent.records import resend_headers, their_offsets
from worker.kafka.topic_use import TopicUse

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

log = structlog.get_logger("tagstream.worker.kafka")

SEND_MAX_BLOCK_S = 15.0  # how long send() waits for buffer space (kafka-python's max_block_ms)
TRANSACTION_TIMEOUT_S = 60.0  # a transactional call (commit, abort, offsets), retries included, ends within this
TXN_CALL_TIMEOUT_S = 10.0  # librdkafka's own timeout for one attempt (a healthy one takes milliseconds)
# Past its own timeout, an attempt that has not returned is stuck: librdkafka 2.16's
# send_offsets_to_transaction can wait forever for a group coordinator that went away with a
# broker restart (confluentinc/librdkafka#5456, #5511). The client is then replaced.
TXN_STUCK_GRACE_S = 5.0
TXN_RETRY_PAUSE_S = 0.5  # between attempts of a call librdkafka says may be retried
FORGET_FLUSH_S = 1.0  # a client swap (forget_idle_topics) waits this long for acknowledgements, else later
DR_POLL_S = 0.02  # the delivery-report thread's wait: bounds how long flush() waits to take over


class ConfluentProducer:
    """``ProducerClient`` over ``confluent_kafka.Producer``, with a thread that serves delivery reports."""

    def __init__(self, settings: WorkerSettings, transactional_id: str | None) -> None:
        self._settings = settings
        self._transactional = transactional_id is not None
        self._config = producer_config(settings, transactional_id)
        self.errors = ClientErrors("producer")
        self.client = new_client(ck.Producer, {**self._config, "error_cb": self.errors})
        # Exactly-once: the call a stuck client is still in (it is replaced at the next abort), and
        # the clients replaced so far (kept, never destroyed: destroying a stuck one can block).
        self._stuck_in: str | None = None
        self._replaced: list[Any] = []
        self._closing = threading.Event()
        self._alone: Any = None  # one-record batches, for records refused in a batch (module docstring)
        self._alone_lock = threading.Lock()
        # Records whose topic librdkafka gave up on, to be sent once more (worker/kafka/confluent/again.py).
        self._again = SendAgain(TOPIC_METADATA_WAIT_MS / 1000)
        self._sent_again: set[str] = set()  # their topics, said once each
        self._delivered: Callable[[Any], None] = _unset
        self._delivered_many: Callable[[list[Any]], None] = _unset
        # Tokens acknowledged in the poll or flush under way, handed to the sink when it returns.
        # A deque: callbacks may also be served on a thread that holds no lock of ours.
        self._acked: deque[Any] = deque()
        self._failed: Callable[[Any, BrokerError], None] = _unset
        self._serving = threading.Lock()  # held while delivery reports are served
        # Threads other than the serving one waiting for _serving (flush, a producer swap): the
        # serving thread stands aside while any does. A Lock is not fair: released and taken again
        # at once in a loop, it went back to the serving thread every time once nothing else ran,
        # and a transaction's flush waited for ever (seen after a producer replacement).
        self._wanting = 0
        self._wanting_lock = threading.Lock()
        self._stop = threading.Event()
        self._use = TopicUse(settings.output_topic_idle_s)
        self._thread = threading.Thread(target=self._serve, name="tagstream-kafka-dr", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Serve delivery reports (and error and log callbacks) as they come in."""
        said: str | None = None
        while not self._stop.is_set():
            if self._wanting:
                time.sleep(0.001)  # another thread takes _serving first (see __init__)
                continue
            try:
                with self._serving:
                    self.client.poll(DR_POLL_S)
                    self._hand_over()
                    if self._again:
                        self._send_again_due()
                    if self._alone is not None:
                        self._alone.poll(0)
            except KafkaException as exc:
                # poll() raises the client's fatal error (fenced by a newer instance): the next send,
                # flush or transactional call raises it too, and the worker exits from there. This
                # thread keeps serving what still comes (from a replacement client, say).
                text = str(translate(exc, "the producer failed"))
                if text != said:
                    log.warning("producer_poll_failed", error=text)
                    said = text
                time.sleep(DR_POLL_S)

    @contextlib.contextmanager
    def _served_here(self) -> Iterator[None]:
        """Hold _serving from a thread other than the serving one, which stands aside meanwhile."""
        with self._wanting_lock:
            self._wanting += 1
        try:
            with self._serving:
                yield
        finally:
            with self._wanting_lock:
                self._wanting -= 1

    def set_handler(self, handler: DeliveryHandler) -> None:
        self._delivered, self._failed = handler.delivered, handler.failed
        self._delivered_many = handler.delivered_many

    def _hand_over(self) -> None:
        """The acknowledgements collected since the last hand-over, to the sink in one call."""
        if self._acked:
            self._delivered_many(take_all(self._acked))

    def _outcome(self, token: Any, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            if self._transactional:
                self._delivered(token)  # at once: the transaction's commit counts them next
            else:
                self._acked.append(token)  # to the sink when this poll or flush returns
        elif not self._transactional and err.code() == E.MSG_SIZE_TOO_LARGE:
            self._send_alone(token, msg)  # refused with its batch: is it too large by itself?
        elif not self._transactional and err.code() in TOPIC_UNKNOWN:
            self._send_again(token, msg, err)
        else:
            self._failed(token, translate(err, "the broker did not acknowledge a record"))

    def _send_again(self, token: Any, msg: Any, err: KafkaError) -> None:
        """A record whose topic librdkafka gave up on: kept to be sent once more (again.py says why)."""
        topic = msg.topic()
        if topic not in self._sent_again:
            self._sent_again.add(topic)
            log.warning("send_again_topic_unknown", topic=topic, error=err.str(),
                        hint="sent once more: a topic the broker is creating, or one that is missing (final then)")
        self._again.add(token, topic, msg.value(), msg.key(), resend_headers(msg))

    def _send_again_due(self) -> None:
        def produce(record: Any) -> None:
            self.client.produce(record.topic, record.value, record.key, headers=record.headers,
                                on_delivery=partial(self._outcome_again, record.token))

        self._again.send_due(produce, lambda topic, timeout: self.client.list_topics(topic, timeout=timeout),
                             self._failed)

    def _outcome_again(self, token: Any, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self._acked.append(token)
        else:
            self._failed(token, translate(err, "the broker did not acknowledge a record, sent twice"))

    def _outcome_alone(self, token: Any, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self._delivered(token)
        else:
            self._failed(token, translate(err, "the broker did not acknowledge a record"))

    def _send_alone(self, token: Any, msg: Any) -> None:
        with self._alone_lock:
            if self._alone is None:
                config = producer_config(self._settings, None)
                config.update(error_cb=self.errors, **{"batch.num.messages": 1, "linger.ms": 0})
                self._alone = new_client(ck.Producer, config)
        try:
            self._alone.produce(msg.topic(), msg.value(), msg.key(), headers=resend_headers(msg),
                                on_delivery=partial(self._outcome_alone, token))
        except (KafkaException, BufferError) as exc:
            self._failed(token, translate(exc, f"cannot send to topic {msg.topic()!r}"))

    def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes | None]], token: Any
    ) -> None:
        self._use.used.add(topic)
        on_delivery = partial(self._outcome, token)  # one partial per record, for either outcome
        produce = self.client.produce
        deadline = 0.0
        while True:
            try:
                produce(topic, value, key, headers=headers or None, on_delivery=on_delivery)
                return
            except BufferError as exc:
                # The buffer is full (the broker is slow or away): wait for room, as kafka-python's
                # send() blocks up to max_block_ms.
                now = time.monotonic()
                deadline = deadline or now + SEND_MAX_BLOCK_S
                if now >= deadline:
                    raise BrokerError(
                        f"cannot send to topic {topic!r}: the producer's buffer stayed full for"
                        f" {SEND_MAX_BLOCK_S:g} s ({exc})", Failure.DELIVERY_FAILED,
                    ) from exc
                time.sleep(0.01)
            except KafkaException as exc:
                error = translate(exc, f"cannot send to topic {topic!r}")
                err = exc.args[0]
                if self._transactional and (err.code() == E._STATE or err.txn_requires_abort()):
                    # The transaction failed already (its abort is under way): this record is
                    # re-read after the abort, like every other of the transaction.
                    self._failed(token, BrokerError(error.args[0], Failure.TRANSACTION_ABORTED))
                    return
                raise error from exc

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        # Serve every outstanding report on this thread, the serving thread held off: when this
        # returns True, each acknowledgement has reached the handler.
        with self._served_here():
            try:
                left = self.client.flush(max(0.0, deadline - time.monotonic()))
                self._hand_over()
                while self._again and time.monotonic() < deadline:  # records to send again count too
                    self._send_again_due()
                    left = self.client.flush(min(0.5, max(0.0, deadline - time.monotonic())))
                    self._hand_over()
                left += len(self._again)
                if self._alone is not None:
                    left += self._alone.flush(max(0.0, deadline - time.monotonic()))
            except KafkaException as exc:  # the client's fatal error (see _serve)
                raise translate(exc, "cannot flush the producer") from exc
        return left == 0

    def forget_idle_topics(self) -> list[str]:
        """librdkafka cannot drop a topic from a client, so at-least-once the client is swapped for a
        new one, which knows only the topics it is sent to, once every record sent is acknowledged
        (else at a later check). A transactional client is kept: its replacement would have to fence
        it (``_replace``), between two transactions; not done, so an exactly-once worker's producer
        still refreshes, and on such a broker creates, every topic it wrote to until it restarts."""
        idle = self._use.idle()
        if not idle or self._transactional:
            return []
        if not self.flush(FORGET_FLUSH_S):
            self._use.keep(idle)
            return []
        errors = ClientErrors("producer")
        retired = self._take_over(new_client(ck.Producer, {**self._config, "error_cb": errors}), errors)  # flushed: nothing left to serve
        threading.Thread(target=_close_all, args=(retired,), name="tagstream-kafka-close", daemon=True).start()
        log.info("producer_topics_forgotten", topics=idle, idle_s=self._use.idle_s, how="a new producer client took over")
        return idle

    # -- transactions ------------------------------------------------------------------------------------------
    def init_transactions(self) -> None:
        self._txn(lambda c, t: c.init_transactions(t), "cannot initialise transactions",
                  timeout_s=diagnose.BOOTSTRAP_TIMEOUT_MS / 1000 + TRANSACTION_TIMEOUT_S)

    def begin_transaction(self) -> None:
        if self._stuck_in is not None:
            raise BrokerError(f"cannot begin a transaction: the producer is stuck in {self._stuck_in}",
                              Failure.KAFKA_TRANSIENT)
        try:
            self.client.begin_transaction()  # local: librdkafka does not block here
        except KafkaException as exc:
            raise translate(exc, "cannot begin a transaction") from exc

    def send_offsets_to_transaction(
        self, positions: dict[TopicPartition, int], group_metadata: Any, metadata: dict[TopicPartition, str] | None = None
    ) -> None:
        offsets = their_offsets(positions, metadata)
        self._txn(lambda c, t: c.send_offsets_to_transaction(offsets, group_metadata, t),
                  "cannot add the offsets to the transaction")

    def commit_transaction(self) -> None:
        self._txn(lambda c, t: c.commit_transaction(t), "cannot commit the transaction")

    def abort_transaction(self) -> None:
        """Abort the open transaction; a stuck client, or one that cannot abort, is replaced instead."""
        if self._stuck_in is None:
            try:
                self._txn(lambda c, t: c.abort_transaction(t), "cannot abort the transaction")
                return
            except BrokerError as exc:
                if exc.failure in (Failure.PRODUCER_FENCED, Failure.INSTANCE_FENCED) or self._closing.is_set():
                    raise  # a zombie exits; a closing worker leaves it to the broker's transaction timeout
                why = str(exc)
        else:
            why = f"stuck in {self._stuck_in}"
        self._replace(why)

    def _replace(self, why: str) -> None:
        """A new client with the same transactional id: its init_transactions fences the old one and
        aborts the transaction it left open, so nothing the old one sent is ever read committed."""
        if self._closing.is_set():
            raise BrokerError(f"cannot abort the transaction ({why}): the producer is closing",
                              Failure.TRANSACTION_ABORTED)
        log.warning("producer_replacing", reason=why)
        errors = ClientErrors("producer")
        client = new_client(ck.Producer, {**self._config, "error_cb": errors})
        try:
            self._attempts(client, lambda c, t: c.init_transactions(t), "cannot initialise the replacement producer",
                           diagnose.BOOTSTRAP_TIMEOUT_MS / 1000 + TRANSACTION_TIMEOUT_S)
        except BrokerError:
            self._replaced.append(client)
            raise
        old, _ = self._take_over(client, errors)  # the old client's reports are never served: its transaction is aborted
        self._replaced.append(old)
        self._stuck_in = None
        log.warning("producer_replaced", reason=why, replaced_so_far=len(self._replaced))

    def _take_over(self, client: Any, errors: ClientErrors) -> tuple[Any, Any]:
        """Make ``client`` this producer's, its reports served from now on; returns the old client and
        the one-record one (a new one is made when needed). What the old ones still say is no news."""
        with self._served_here():
            old = self.client, self._alone
            self.client, self._alone = client, None
            self.errors.muted = True
            self.errors = errors
        return old

    def _txn(self, call: Callable[[Any, float], Any], what: str, timeout_s: float = TRANSACTION_TIMEOUT_S) -> None:
        if self._stuck_in is not None:
            raise BrokerError(f"{what}: the producer is stuck in {self._stuck_in}", Failure.KAFKA_TRANSIENT)
        self._attempts(self.client, call, what, timeout_s)

    def _attempts(self, client: Any, call: Callable[[Any, float], Any], what: str, timeout_s: float) -> None:
        """``call(client, timeout)`` until it succeeds, fails for good, or ``timeout_s`` is spent.

        librdkafka's rules: a retriable error means the same call may be made again; one that
        requires an abort, or a fatal one, ends it here (the caller aborts, or the worker exits).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            attempt_s = max(1.0, min(TXN_CALL_TIMEOUT_S, deadline - time.monotonic()))
            try:
                self._attempt(partial(call, client, attempt_s), attempt_s, what)
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if (err is None or not err.retriable() or err.txn_requires_abort() or err.fatal()
                        or time.monotonic() + TXN_RETRY_PAUSE_S >= deadline or self._closing.is_set()):
                    raise translate(exc, what) from exc
                log.warning("transaction_call_retried", call=what, error=err.str())
                time.sleep(TXN_RETRY_PAUSE_S)

    def _attempt(self, call: Callable[[], Any], attempt_s: float, what: str) -> None:
        """One attempt in a helper thread; one that outlives its own timeout marks the client stuck."""
        finished, _ = run_bounded(call, attempt_s + TXN_STUCK_GRACE_S, "tagstream-kafka-txn", stop=self._closing)
        if finished:
            return
        self._stuck_in = what
        if self._closing.is_set():
            raise BrokerError(f"{what}: given up, the producer is closing", Failure.TRANSACTION_ABORTED)
        log.error("transaction_call_stuck", call=what, waited_s=round(attempt_s + TXN_STUCK_GRACE_S, 1),
                  action="the transaction is aborted and the producer replaced")
        raise BrokerError(
            f"{what}: librdkafka did not return within {attempt_s + TXN_STUCK_GRACE_S:g} s (its own timeout"
            f" is {attempt_s:g} s); the producer is stuck and will be replaced", Failure.KAFKA_TRANSIENT,
        )

    def close(self, timeout_s: float) -> None:
        self._closing.set()  # a transactional call still waited for gives up now
        try:
            if self._stuck_in is None and not self.flush(timeout_s):
                log.warning("producer_close_unflushed", left=len(self.client))
        finally:
            self._stop.set()
            self._thread.join(max(1.0, DR_POLL_S * 10))


def _close_all(clients: list[Any]) -> None:
    """Close flushed clients (off the sending thread: librdkafka's teardown takes a moment)."""
    for client in clients:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _unset(*_args: Any) -> None:
    raise RuntimeError("set_handler() was not called before send()")
