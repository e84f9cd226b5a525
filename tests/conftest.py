"""Fixtures shared by every test: one real Kafka broker per session, a fresh topic and group per test.

The broker (``kafka_bootstrap``) is started lazily, by the first test that asks for it, and is the
first of these that applies:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that broker; nothing is started.
2. A Docker engine answers: testcontainers' ``KafkaContainer`` in KRaft mode (image from
   ``TAGSTREAM_TEST_KAFKA_IMAGE``, default ``confluentinc/cp-kafka:7.6.0``, the tag that
   testcontainers itself tests KRaft with).
3. Otherwise the local JVM broker of ``localkafka`` (Java 17+; Maven once for the jars),
   on free ports with a fresh log folder, stopped at the end of the session.

``TAGSTREAM_TEST_BROKER=docker`` or ``=local`` forces 2 or 3.

Two more kinds of broker are always local JVM brokers, started only when a test uses them:

- ``kafka_secure``: one session broker with every listener (PLAINTEXT, SASL_PLAINTEXT, SSL and
  SASL_SSL; SCRAM-SHA-256/512 user ``SCRAM_USER``; throwaway certificates). ``kafka_scram``,
  ``kafka_ssl`` and ``kafka_sasl_ssl`` are its listeners, as ``localkafka.Endpoint``s.
- ``restartable_kafka``: a factory of brokers of a test's own, for tests that halt, kill -9,
  restart or freeze them; each is stopped for good after its test.

The worker's tests run once per Kafka client (``kafka_client``: kafka-python and confluent;
``TAGSTREAM_TEST_KAFKA_CLIENTS=kafka-python`` restricts them), in process (``start_worker``) and
as processes (``worker_support.worker_env``).

Tests in ``tests/integration/`` are marked ``integration`` automatically;
``pytest -m "not integration"`` runs everything that needs no broker.

``@pytest.mark.full_size_only(*row_ids)`` names rows of a slow scenario (ids as pytest writes them,
e.g. ``"confluent-at_least_once"``) that only ``make faults`` runs (``full_size.FULL``): twins
of a row ``make test`` keeps, the same mechanism with another client, guarantee or membership, which
``make test`` skips, naming where they run, to stay within its time. Those rows are marked ``faults``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from full_size import FULL

from localkafka import Endpoint, LocalKafka, LocalKafkaError, ScramUser, make_ca

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
SOURCE_ENV = "TAGSTREAM_TEST_BROKER"  # auto (default), docker, local
IMAGE_ENV = "TAGSTREAM_TEST_KAFKA_IMAGE"
DEFAULT_IMAGE = "confluentinc/cp-kafka:7.6.0"
# An engine on this machine answers a ping in milliseconds; a remote one within a second or two.
DOCKER_PROBE_TIMEOUT_S = 2.0
CONTAINER_START_TIMEOUT_S = 180  # includes pulling the image the first time
TOPIC_READY_TIMEOUT_MS = 30_000
SCRAM_USER = ScramUser("tagstream-test", "right-password-42")
KAFKA_CLIENTS = ("kafka-python", "confluent")  # TAGSTREAM_KAFKA_CLIENT values the worker's tests run with
CLIENTS_ENV = "TAGSTREAM_TEST_KAFKA_CLIENTS"  # restrict them, e.g. =kafka-python for a quick run
CLIENT_ENV = "TAGSTREAM_TEST_KAFKA_CLIENT"  # the client of the test in progress, for worker processes
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,100}$")

# What the session used, for the summary line at the end of the run.
_broker_notes: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ as ``integration``; the rows named by
    ``full_size_only`` as ``faults``, skipped unless ``make faults`` runs them."""
    integration_dir = Path(__file__).parent / "integration"
    for item in items:
        if integration_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
        only = item.get_closest_marker("full_size_only")
        callspec = getattr(item, "callspec", None)
        if only is None or callspec is None or callspec.id not in only.args:
            continue
        item.add_marker(pytest.mark.faults)
        if not FULL:
            item.add_marker(pytest.mark.skip(
                reason="a twin of a row make test runs (another client, guarantee or membership): make faults runs it"
            ))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for note in _broker_notes:
        terminalreporter.write_line(f"kafka: {note}")


def docker_engine_answers(timeout_s: float = DOCKER_PROBE_TIMEOUT_S) -> bool:
    """Whether a Docker engine answers a ping (a docker client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@functools.cache
def broker_source() -> str:
    """Where the session's broker comes from: ``env``, ``docker`` or ``local``."""
    if os.environ.get(BOOTSTRAP_ENV):
        return "env"
    forced = os.environ.get(SOURCE_ENV, "auto")
    if forced not in ("auto", "docker", "local"):
        raise pytest.UsageError(f"{SOURCE_ENV}={forced!r}: use auto, docker or local")
    if forced == "auto":
        return "docker" if docker_engine_answers() else "local"
    return forced


def skip_without_local_toolchain(what: str) -> None:
    """Skip when Java 17+ is missing, unless the session's broker is local anyway (then fail).

    Tests of the local broker itself, and the SCRAM broker, always need a local JVM; on a machine
    that reaches Kafka through Docker or KAFKA_BOOTSTRAP_SERVERS they are skipped with the reason.
    """
    if broker_source() == "local":
        return
    from localkafka.toolchain import find_java

    try:
        find_java()
    except LocalKafkaError as exc:
        pytest.skip(f"{what} is a local JVM broker: {exc}")


@pytest.fixture
def local_toolchain() -> None:
    """For tests of the local broker itself: skip (or fail) as ``skip_without_local_toolchain`` says."""
    skip_without_local_toolchain("this test's broker")


def _start_local(**kwargs: Any) -> LocalKafka:
    broker = LocalKafka(**kwargs)
    began = time.monotonic()
    try:
        broker.start()
    except LocalKafkaError as exc:
        pytest.fail(f"could not start the local Kafka broker: {exc}", pytrace=False)
    assert broker.jars is not None
    extras = [name for name, on in (("SCRAM", broker.scram_users), ("TLS", broker.tls)) if on]
    _broker_notes.append(
        f"local Kafka {broker.jars.version} broker at {broker.bootstrap_servers}"
        f"{' with ' + ' and '.join(extras) if extras else ''}: JVM start to ready "
        f"{broker.startup_s:.1f} s, {time.monotonic() - began:.1f} s in all"
    )
    return broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real Kafka broker for this session (see the module docstring)."""
    source = broker_source()
    if source == "env":
        servers = os.environ[BOOTSTRAP_ENV]
        _broker_notes.append(f"{BOOTSTRAP_ENV}={servers}")
        yield servers
    elif source == "docker":
        from testcontainers.community.kafka import KafkaContainer

        image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
        container = KafkaContainer(image).with_kraft()
        began = time.monotonic()
        container.start(timeout=CONTAINER_START_TIMEOUT_S)
        try:
            servers = container.get_bootstrap_server()
            _broker_notes.append(
                f"testcontainers {image} at {servers}, ready in {time.monotonic() - began:.1f} s"
            )
            yield servers
        finally:
            container.stop()
    else:
        broker = _start_local()
        try:
            yield broker.bootstrap_servers
        finally:
            broker.stop()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` on the session's broker."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def new_topic(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``new_topic(partitions=1, prefix="test", configs=None) -> name`` of a fresh topic, ready to use.

    The topic exists, with a leader for every partition, when the name is returned; topics made
    by a test are deleted after it.
    """
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "test", configs: dict[str, str] | None = None, name: str | None = None) -> str:
        if not _TOPIC_PREFIX.match(prefix):
            raise ValueError(f"topic prefix {prefix!r}: use 1-100 of A-Z a-z 0-9 . _ -")
        name = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
        spec: dict[str, Any] = {"num_partitions": partitions, "replication_factor": -1}
        if configs:
            spec["configs"] = configs
        kafka_admin.create_topics({name: spec})
        created.append(name)
        kafka_admin.wait_for_topics([name], timeout_ms=TOPIC_READY_TIMEOUT_MS)
        return name

    yield make
    if created:
        with contextlib.suppress(Exception):  # best effort: a session broker is thrown away anyway
            kafka_admin.delete_topics(created, timeout_ms=10_000)


@pytest.fixture
def new_group() -> Callable[..., str]:
    """Factory: ``new_group(prefix="test-group") -> id`` of a consumer group no one has used."""

    def make(prefix: str = "test-group") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(scope="session")
def kafka_secure() -> Iterator[LocalKafka]:
    """One local broker with PLAINTEXT, SASL_PLAINTEXT, SSL and SASL_SSL listeners, for the session.

    SCRAM-SHA-256 and -512 with user ``SCRAM_USER``; ``ca_file`` is the throwaway CA that signed
    its certificate (for 127.0.0.1 and localhost). One JVM serves every security test.
    """
    skip_without_local_toolchain("the SCRAM/TLS broker")
    broker = _start_local(scram_users=[SCRAM_USER], tls=True)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_scram(kafka_secure: LocalKafka) -> Endpoint:
    """The SASL_PLAINTEXT (SCRAM) listener of ``kafka_secure``.

    An ``Endpoint``: ``bootstrap_servers``, ``username``, ``password``, ``mechanisms``,
    ``log_path`` (the broker's log), and ``client_config(mechanism, password=...)`` giving
    kafka-python settings.
    """
    return kafka_secure.endpoint("SASL_PLAINTEXT")


@pytest.fixture(scope="session")
def kafka_ssl(kafka_secure: LocalKafka) -> Endpoint:
    """The SSL listener of ``kafka_secure``; ``cafile`` is the CA clients must trust."""
    return kafka_secure.endpoint("SSL")


@pytest.fixture(scope="session")
def kafka_sasl_ssl(kafka_secure: LocalKafka) -> Endpoint:
    """The SASL_SSL listener of ``kafka_secure`` (SCRAM over TLS), as ``SCRAM_USER``."""
    return kafka_secure.endpoint("SASL_SSL")


@pytest.fixture(scope="session")
def wrong_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid CA certificate (PEM) that signed no broker's certificate: clients must refuse."""
    from localkafka.toolchain import find_java, find_keytool

    skip_without_local_toolchain("keytool")
    return make_ca(tmp_path_factory.mktemp("wrong-ca"), find_keytool(find_java()))


@pytest.fixture
def restartable_kafka(local_toolchain: None) -> Iterator[Callable[..., LocalKafka]]:
    """Factory: ``restartable_kafka(**LocalKafka options) -> LocalKafka``, started, of this test's own.

    The test may ``halt()``, ``kill()``, ``restart()``, ``freeze()``/``thaw()`` it (topics and
    committed offsets survive restarts); every broker made is stopped for good after the test.
    Each costs a JVM start (seconds): use the session brokers unless a test stops its broker.
    """
    brokers: list[LocalKafka] = []

    def make(**options: Any) -> LocalKafka:
        broker = LocalKafka(**options)
        brokers.append(broker)
        try:
            broker.start()
        except LocalKafkaError as exc:
            pytest.fail(f"could not start a restartable Kafka broker: {exc}", pytrace=False)
        return broker

    yield make
    for broker in brokers:
        if broker.ready_times_s:
            _broker_notes.append(
                f"restartable broker at {broker.bootstrap_servers}: started "
                f"{len(broker.ready_times_s)}x, JVM start to ready "
                f"{', '.join(f'{t:.1f}' for t in broker.ready_times_s)} s"
            )
        broker.stop()


# -- workers (the worker's integration tests and the fault suite) ---------------------------------
@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A random tiny bundle of this test's own (tests may replace it in place)."""
    from worker_support import make_tiny_bundle

    return make_tiny_bundle(tmp_path / "bundle", seed=0)


def _client_params() -> list[Any]:
    """The clients the worker's tests run with: ``TAGSTREAM_TEST_KAFKA_CLIENTS`` (comma-separated),
    default both; confluent is skipped, saying why, where its extra is not installed."""
    import importlib.util

    wanted = [c.strip() for c in os.environ.get(CLIENTS_ENV, ",".join(KAFKA_CLIENTS)).split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(KAFKA_CLIENTS))
    if unknown:
        raise pytest.UsageError(f"{CLIENTS_ENV}: unknown client(s) {unknown}; use {', '.join(KAFKA_CLIENTS)}")
    missing = importlib.util.find_spec("confluent_kafka") is None
    return [
        pytest.param(c, id=c, marks=pytest.mark.skip(reason="confluent-kafka is not installed (make install has it)"))
        if c == "confluent" and missing else pytest.param(c, id=c)
        for c in wanted
    ]


@pytest.fixture(params=_client_params())
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The worker's Kafka client for this test (TAGSTREAM_KAFKA_CLIENT): each test that asks for it,
    directly or through ``start_worker``, runs once per client, so the two cannot drift apart.
    Worker processes get it too (``worker_support.worker_env`` reads ``TAGSTREAM_TEST_KAFKA_CLIENT``)."""
    client = str(request.param)
    # A test may name its client itself (indirect parametrization, as the fault suite does): the
    # restriction and the missing extra apply there too.
    wanted = {str(p.values[0]) for p in _client_params() if not p.marks}
    if client not in wanted:
        pytest.skip(f"{client}: not among {CLIENTS_ENV} or not installed")
    monkeypatch.setenv(CLIENT_ENV, client)
    return client


@pytest.fixture
def start_worker(
    kafka_bootstrap: str, new_group: Callable[..., str], kafka_client: str
) -> Iterator[Callable[..., Any]]:
    """Factory: ``start_worker(topic, bundle, **settings) -> Worker``, started in this process with
    this test's ``kafka_client``, and always stopped at the end of the test."""
    from worker_support import STATE_DIR

    from worker.app import Worker
    from worker.settings import load_settings

    workers: list[Worker] = []
    group = new_group()

    def start(topic: str, bundle: Path, **overrides: Any) -> Worker:
        settings = load_settings(
            **{
                "bootstrap_servers": kafka_bootstrap, "input_topics": [topic], "bundle_path": bundle,
                "group_id": group, "metrics_port": 0, "max_wait_ms": 10, "commit_interval_ms": 200,
                "drain_timeout_s": 15, "reload_interval_s": 0, "kafka_client": kafka_client, "state_dir": STATE_DIR,
                **overrides,
            }
        )
        worker = Worker(settings)
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()
    for worker in workers:
        worker.wait(timeout=30)
