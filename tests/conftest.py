"""Fixtures shared by every test: one real Kafka broker per session, a fresh topic and group per test.

The broker (``kafka_bootstrap``) is started lazily, by the first test that asks for it, and is the
first of these that applies:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that broker; nothing is started.
2. A Docker engine answers: testcontainers' ``KafkaContainer`` in KRaft mode (image from
   ``TAGSTREAM_TEST_KAFKA_IMAGE``, default ``confluentinc/cp-kafka:7.6.0``, the tag that
   testcontainers itself tests KRaft with).
3. Otherwise the local JVM broker of ``localkafka`` (Java 17+; Maven once for the jars),
   on free ports with a fresh log folder, stopped at the end of the session.

``TAGSTREAM_TEST_BROKER=docker`` or ``=local`` forces 2 or 3. The SCRAM broker (``kafka_scram``)
is always a second local JVM broker, started only when a test uses it.

Tests in ``tests/integration/`` are marked ``integration`` automatically;
``pytest -m "not integration"`` runs everything that needs no broker.
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

from localkafka import LocalKafka, LocalKafkaError, ScramEndpoint, ScramUser

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
SOURCE_ENV = "TAGSTREAM_TEST_BROKER"  # auto (default), docker, local
IMAGE_ENV = "TAGSTREAM_TEST_KAFKA_IMAGE"
DEFAULT_IMAGE = "confluentinc/cp-kafka:7.6.0"
# An engine on this machine answers a ping in milliseconds; a remote one within a second or two.
DOCKER_PROBE_TIMEOUT_S = 2.0
CONTAINER_START_TIMEOUT_S = 180  # includes pulling the image the first time
TOPIC_READY_TIMEOUT_MS = 30_000
SCRAM_USER = ScramUser("tagstream-test", "right-password-42")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,100}$")

# What the session used, for the summary line at the end of the run.
_broker_notes: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ as ``integration``."""
    integration_dir = Path(__file__).parent / "integration"
    for item in items:
        if integration_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


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
    _broker_notes.append(
        f"local Kafka {broker.jars.version} broker at {broker.bootstrap_servers}"
        f"{' with SCRAM' if broker.scram_users else ''}: JVM start to ready "
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
    """Factory: ``new_topic(partitions=1, prefix="test") -> name`` of a fresh topic, ready to use.

    The topic exists, with a leader for every partition, when the name is returned; topics made
    by a test are deleted after it.
    """
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "test") -> str:
        if not _TOPIC_PREFIX.match(prefix):
            raise ValueError(f"topic prefix {prefix!r}: use 1-100 of A-Z a-z 0-9 . _ -")
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        kafka_admin.create_topics({name: {"num_partitions": partitions, "replication_factor": -1}})
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
def kafka_scram() -> Iterator[ScramEndpoint]:
    """A local broker with a SASL_PLAINTEXT listener (SCRAM-SHA-256 and -512) and one user.

    Yields a ``ScramEndpoint``: ``bootstrap_servers`` of the SCRAM listener, ``username``,
    ``password``, ``mechanisms``, ``log_path`` (the broker's log), and
    ``client_config(mechanism, password=...)`` giving kafka-python settings.
    """
    skip_without_local_toolchain("the SCRAM broker")
    broker = _start_local(scram_users=[SCRAM_USER])
    try:
        yield broker.scram_endpoint()
    finally:
        broker.stop()
