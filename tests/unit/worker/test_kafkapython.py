"""The kafka-python backend's translation at the boundary: what the library raises becomes a BrokerError."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest
from kafka import errors as ke
from worker_support import DeliveryRecorder

from worker.errors import BrokerError, Failure
from worker.kafka.base import SILENT_BROKER_S
from worker.kafka.compat import brokers_silent_for
from worker.kafka.kafkapython import KafkaPythonProducer


class RaisingKafkaProducer:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def send(self, *args, **kwargs):
        raise self.exc


class Handler:
    def delivered(self, token):
        pass

    def delivered_many(self, tokens):
        pass

    def failed(self, token, error):
        pass


def producer_raising(exc: BaseException) -> KafkaPythonProducer:
    producer = KafkaPythonProducer(RaisingKafkaProducer(exc))  # type: ignore[arg-type]
    producer.set_handler(Handler())
    return producer


def test_send_timeout_on_metadata_means_missing_topic():
    """send() timing out on metadata is a TOPIC_MISSING error that says how to fix it."""
    producer = producer_raising(ke.KafkaTimeoutError("Failed to update metadata after 15.0 secs."))
    with pytest.raises(BrokerError, match="create it or enable auto-creation") as info:
        producer.send("sms.labels", b"v", None, [], token=None)
    assert info.value.failure is Failure.TOPIC_MISSING


def test_a_metadata_timeout_no_broker_answered_is_an_unreachable_broker_not_a_missing_topic():
    """Without an answered metadata request in the whole wait, the topic may exist: a broker frozen or away
    (a 15 s freeze stopped a worker as 'topic missing'). With one answered, it is the missing topic."""
    import time

    from kafka.cluster import ClusterMetadata

    producer = producer_raising(ke.KafkaTimeoutError("Failed to update metadata after 15.0 secs."))
    metadata = ClusterMetadata()
    producer._producer._metadata = metadata  # type: ignore[attr-defined]
    metadata._last_successful_refresh_ms = time.monotonic() * 1000 - 20_000  # none answered for 20 s
    with pytest.raises(BrokerError, match="no broker answered") as info:
        producer.send("sms.dlq", b"v", None, [], token=None)
    assert info.value.failure is Failure.BROKER_UNREACHABLE
    metadata._last_successful_refresh_ms = time.monotonic() * 1000 - 1_000  # answered: the topic is not there
    with pytest.raises(BrokerError) as info:
        producer.send("sms.dlq", b"v", None, [], token=None)
    assert info.value.failure is Failure.TOPIC_MISSING


def test_a_record_over_the_request_limit_is_rejected_alone():
    """The producer's own size check refusing a record is RECORD_REJECTED: that record's problem only."""
    producer = producer_raising(ke.MessageSizeTooLargeError("The message is 2000000 bytes when serialized"))
    with pytest.raises(BrokerError) as info:
        producer.send("sms.dlq", b"x" * 10, None, [], token=None)
    assert info.value.failure is Failure.RECORD_REJECTED


def test_a_transactional_call_left_unanswered_is_given_up_and_wedges_the_producer(monkeypatch):
    """kafka-python's commit_transaction waits without a limit: after TXN_CALL_LIMIT_S it fails, and every later transactional call (the abort) is refused at once, so the worker exits instead of hanging."""
    import threading
    import time

    from worker.errors import BrokerError
    from worker.kafka import kafkapython

    monkeypatch.setattr(kafkapython, "TXN_CALL_LIMIT_S", 0.3)
    never = threading.Event()

    class _Stuck:
        def commit_transaction(self) -> None:
            never.wait(30)  # a request lost in a broker restart: no answer

        def abort_transaction(self) -> None:
            raise AssertionError("a wedged producer must not be asked again")

    producer = kafkapython.KafkaPythonProducer(_Stuck())  # type: ignore[arg-type]
    began = time.monotonic()
    with pytest.raises(BrokerError, match=r"no answer within 0\.3 s"):
        producer.commit_transaction()
    assert time.monotonic() - began < 5
    with pytest.raises(BrokerError, match="cannot abort the transaction"):
        producer.abort_transaction()
    never.set()


def test_a_wedged_transactional_producer_is_replaced_by_the_abort_and_its_stale_outcomes_are_ignored(monkeypatch):
    """The abort after a stuck call makes a new producer (init_transactions fences the old one under the same
    transactional id), later calls go to it, and a late outcome of the old producer's records reaches nobody."""
    import threading

    from worker.errors import BrokerError
    from worker.kafka import kafkapython

    monkeypatch.setattr(kafkapython, "TXN_CALL_LIMIT_S", 0.3)
    never = threading.Event()
    made: list[_Fresh] = []

    class _Stuck:
        def commit_transaction(self) -> None:
            never.wait(30)

        def close(self, timeout: float) -> None:
            pass

    class _Fresh:
        def __init__(self) -> None:
            self.calls: list[str] = []
            made.append(self)

        def init_transactions(self) -> None:
            self.calls.append("init")

        def commit_transaction(self) -> None:
            self.calls.append("commit")

    stuck = _Stuck()
    producer = kafkapython.KafkaPythonProducer(stuck, make=_Fresh)  # type: ignore[arg-type]
    outcomes: list[str] = []
    producer._delivered = lambda token: outcomes.append(token)
    with pytest.raises(BrokerError):
        producer.commit_transaction()
    producer.abort_transaction()  # replaces instead of waiting on the stuck one
    assert len(made) == 1 and made[0].calls == ["init"]
    producer.commit_transaction()
    assert made[0].calls == ["init", "commit"]
    producer._outcome(stuck, "late", object())  # the old producer's record acknowledged after all
    producer._outcome(made[0], "new", object())
    assert outcomes == ["new"]
    never.set()


def test_every_codec_other_producers_compress_with_is_installed():
    """snappy, lz4 and zstd (gzip is in the standard library) are readable: the install provides them."""
    from kafka import codec

    from worker.kafka.kafkapython import check_codecs

    assert codec.has_snappy() and codec.has_lz4() and codec.has_zstd() and codec.has_gzip()
    check_codecs()  # does not raise


def test_a_missing_codec_stops_the_worker_at_start_naming_the_package_and_the_other_client(monkeypatch):
    """Without a codec the worker refuses to start (instead of stopping at the first such batch, again after
    every restart), naming the package to install and TAGSTREAM_KAFKA_CLIENT=confluent."""
    from kafka import codec

    from worker.kafka.kafkapython import check_codecs

    monkeypatch.setattr(codec, "has_snappy", lambda: False)
    with pytest.raises(BrokerError, match=r"snappy.*python-snappy.*TAGSTREAM_KAFKA_CLIENT=confluent") as caught:
        check_codecs()
    assert caught.value.failure is Failure.KAFKA_FATAL


def test_committed_offsets_of_many_partitions_are_asked_in_one_request():
    """The lag refresh asks for the committed offsets of every partition not read from yet: one OffsetFetch for all
    of them (the library's committed() asks one partition at a time), partitions with nothing committed None."""
    from kafka.structs import OffsetAndMetadata
    from kafka.structs import TopicPartition as KafkaTopicPartition

    from worker.kafka.base import TopicPartition
    from worker.kafka.kafkapython import KafkaPythonConsumer

    class Coordinator:
        def __init__(self) -> None:
            self.requests: list[list] = []

        def fetch_committed_offsets(self, partitions, timeout_ms=None):
            self.requests.append(list(partitions))
            return {tp: OffsetAndMetadata(tp.partition * 10, "", -1) for tp in partitions if tp.partition % 2 == 0}

    class Consumer:
        _coordinator = Coordinator()

    backend = KafkaPythonConsumer.__new__(KafkaPythonConsumer)
    backend._consumer = Consumer()  # type: ignore[assignment]
    partitions = [TopicPartition("in", p) for p in range(100)]
    got = backend.committed(partitions)
    assert got == {tp: (tp.partition * 10 if tp.partition % 2 == 0 else None) for tp in partitions}
    assert Consumer._coordinator.requests == [[KafkaTopicPartition("in", p) for p in range(100)]]


class MetadataProducer:
    """A KafkaProducer's part that forget_idle_topics touches: kafka-python's own ClusterMetadata."""

    def __init__(self) -> None:
        from kafka.cluster import ClusterMetadata

        self._metadata = ClusterMetadata()

    def send(self, topic, value=None, key=None, headers=None):
        self._metadata.add_topic(topic)  # what KafkaProducer.send does, by way of its sender...
        self._metadata._partitions.setdefault(topic, {0: None})  # ...and the metadata response it waits for

        class Future:
            def add_callback(self, fn):
                pass

            def add_errback(self, fn):
                pass

        return Future()


def test_a_topic_left_idle_leaves_the_producers_metadata_requests():
    """kafka-python refreshes every topic a producer ever sent to, allowing creation: a deleted result topic
    came back. A topic not sent to for the idle time is no longer asked for; one still written to is."""
    from worker.kafka.topic_use import CHECK_S, TopicUse

    IDLE_S = 300.0
    now = [0.0]
    kp = MetadataProducer()
    producer = KafkaPythonProducer(kp)  # type: ignore[arg-type]
    producer.set_handler(Handler())
    producer._use = TopicUse(IDLE_S, lambda: now[0])
    producer.send("gone.labels", b"v", None, [], token=1)
    producer.send("kept.labels", b"v", None, [], token=2)
    while now[0] < IDLE_S + CHECK_S:
        now[0] += CHECK_S
        producer.send("kept.labels", b"v", None, [], token=3)
        forgotten = producer.forget_idle_topics()
        if forgotten:
            break
    assert forgotten == ["gone.labels"]
    asked = {t.name for t in kp._metadata.metadata_request().topics}
    assert asked == {"kept.labels"}
    assert kp._metadata.partitions_for_topic("gone.labels") is None  # a send looks it up again
    assert kp._metadata.partitions_for_topic("kept.labels") == {0}
    producer.send("gone.labels", b"v", None, [], token=4)  # written to again: looked up again
    assert {t.name for t in kp._metadata.metadata_request().topics} == {"kept.labels", "gone.labels"}


class FutureKafkaProducer:
    """send() returns a kafka-python Future that the test completes."""

    def __init__(self) -> None:
        self.futures: list = []

    def send(self, *args, **kwargs):
        from kafka.future import Future

        self.futures.append(Future())
        return self.futures[-1]

    def flush(self, timeout=None):
        pass


class Sender:
    """The piece of kafka-python's sender the bulk hand-over wraps: a produce response completes its records."""

    def __init__(self, producer: FutureKafkaProducer) -> None:
        self.producer = producer

    def _handle_produce_response(self, outcomes):
        for future, outcome in zip(self.producer.futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                future.failure(outcome)
            else:
                future.success(outcome)


def test_acknowledgements_reach_the_sink_once_the_whole_produce_response_is_handled():
    """At-least-once, the acknowledgements of one produce response reach the sink in one delivered_many call, made
    after the response's last record; a failure in it goes on its own at once (compat.py, section 5)."""
    fake = FutureKafkaProducer()
    fake._sender = Sender(fake)  # type: ignore[attr-defined]
    producer = KafkaPythonProducer(fake)  # type: ignore[arg-type]
    handler = DeliveryRecorder()
    producer.set_handler(handler)
    for token in ("a", "b", "c"):
        producer.send("t.labels", b"v", None, [], token)
    fake._sender._handle_produce_response(["m", ke.MessageSizeTooLargeError("too large"), "m"])  # type: ignore[attr-defined]
    assert handler.in_bulk == [["a", "c"]]
    assert handler.one_by_one == []
    assert handler.failures == [("b", Failure.RECORD_REJECTED)]


def test_each_acknowledgement_goes_at_once_without_the_sender_layout_or_in_a_transaction():
    """Where kafka-python's sender is not as known (another version), and for a transactional producer (its commit
    counts the acknowledgements next), each acknowledgement reaches the sink when its record's future completes."""
    for transactional in (False, True):
        fake = FutureKafkaProducer()
        if transactional:
            fake._sender = Sender(fake)  # type: ignore[attr-defined]
        producer = KafkaPythonProducer(fake, make=(lambda f=fake: f) if transactional else None)  # type: ignore[arg-type]
        handler = DeliveryRecorder()
        producer.set_handler(handler)
        producer.send("t.labels", b"v", None, [], "a")
        fake.futures[0].success("m")
        assert handler.one_by_one == ["a"], transactional
        assert handler.in_bulk == [], transactional


def test_subscribing_rebuilds_the_metadata_snapshot_from_the_metadata_already_held():
    """compat.py section 6: the coordinator's metadata snapshot, built when the consumer was created
    (over no subscription), is rebuilt from the client's metadata once subscribed; an unknown
    layout is left alone."""
    from kafka.coordinator.consumer import ConsumerCoordinator

    from worker.kafka.compat import snapshot_subscribed_metadata

    class Subscription:
        def group_subscription(self):
            return {"news"}

    class Cluster:
        def partitions_for_topic(self, topic):
            return {0, 1, 2} if topic == "news" else None

    class Client:
        cluster = Cluster()

    class Consumer:
        _subscription = Subscription()
        _client = Client()
        _coordinator = ConsumerCoordinator.__new__(ConsumerCoordinator)  # only its snapshot code runs

    consumer = Consumer()
    consumer._coordinator._metadata_snapshot = {}  # as built before the subscription
    assert snapshot_subscribed_metadata(consumer)
    assert consumer._coordinator._metadata_snapshot == {"news": {0, 1, 2}}

    class Unknown:
        _coordinator = object()

    assert not snapshot_subscribed_metadata(Unknown())


def _consumer_with(*connections, request_timeout_ms=30_000):
    """A stand-in for a KafkaConsumer's connection manager: each connection given as (requests waiting
    as (sent_at, own timeout in s), last_read); kafka-python keeps (correlation id, future, sent_at,
    deadline, timer) per request, oldest first."""
    conns = {}
    for i, (requests, last_read) in enumerate(connections):
        waiting = deque((i, None, sent_at, sent_at + timeout_s, None) for sent_at, timeout_s in requests)
        conns[i] = SimpleNamespace(in_flight_requests=waiting, transport=SimpleNamespace(last_read=last_read))
    return SimpleNamespace(_manager=SimpleNamespace(_conns=conns, config={"request_timeout_ms": request_timeout_ms}))


def test_a_broker_that_keeps_its_connections_but_answers_nothing_is_told_from_an_idle_or_rebalancing_one():
    """A frozen broker keeps kafka-python's coordinator known until its requests time out (30 s): once a request
    has waited SILENT_BROKER_S on a connection that heard nothing and no connection has heard anything for
    that long, the brokers count as silent, for as long as nothing was heard."""
    now, long_ago = 1_000.0, 1_000.0 - SILENT_BROKER_S - 1
    fetch, heartbeat, join = (long_ago, 30.5), (long_ago, 30.0), (long_ago, 305.0)

    def silent(*connections):
        return brokers_silent_for(_consumer_with(*connections), SILENT_BROKER_S, now)

    assert silent(([fetch], long_ago), ([heartbeat], long_ago)) == SILENT_BROKER_S + 1
    # a fetch just sent on a connection idle for minutes: not silent yet
    assert not silent(([(now - 0.2, 30.0)], now - 300))
    # bytes of a long answer still arriving
    assert not silent(([fetch], now - 0.1))
    # another broker answers
    assert not silent(([fetch], long_ago), ([(now - 0.3, 30.0)], now - 0.1))
    # an idle connection heard from a moment ago: that broker answers
    assert not silent(([fetch], long_ago), ([], now - 1))
    # nothing asked: quiet, not silent
    assert not silent(([], long_ago))
    # a JoinGroup the broker holds until every member rejoins (its deadline: the rebalance timeout)
    assert not silent(([join, heartbeat], long_ago))
    assert not brokers_silent_for(SimpleNamespace(), SILENT_BROKER_S, now)  # another layout: cannot tell


def test_a_frozen_broker_is_told_without_waiting_for_the_coordinators_next_heartbeat_to_age():
    """Frozen 10.5 s ago: the fetch connection has waited since; the coordinator's connection asked its next
    heartbeat 3 s after the freeze. Silent now, for the 10.5 s since the last answer: waiting for the
    heartbeat to age too turned /readyz 503 only 13-14 s into a freeze (bench/outsider/single.sh)."""
    now, froze = 1_000.0, 1_000.0 - 10.5
    fetch_conn = ([(froze, 30.5)], froze)
    coordinator_conn = ([(froze + 3.0, 30.0)], froze - 0.2)
    assert brokers_silent_for(_consumer_with(fetch_conn, coordinator_conn), SILENT_BROKER_S, now) == 10.5
