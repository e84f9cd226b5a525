"""A real local Apache Kafka broker for development and tests, without Docker.

Kafka's jars come from Maven Central (fetched once by Maven into a cache outside the
repository); the broker runs as one KRaft node on 127.0.0.1 with a fresh log folder.

    jars.py       the pinned version (pom.xml), the cache, fetching with Maven
    toolchain.py  finding Java 17+ and Maven
    ports.py      checking requested ports, picking free ones
    config.py     server.properties, SCRAM users
    broker.py     LocalKafka: format, start, wait until ready, stop
    procs.py      stopping processes; the watchdog for orphaned brokers
    daemon.py     the detached broker of `tagstream-worker kafka up|down|status`
    cli.py        those commands
    errors.py     LocalKafkaError and its subclasses
"""

from localkafka.broker import LocalKafka, ScramEndpoint, answer_metadata
from localkafka.config import SCRAM_MECHANISMS, ScramUser
from localkafka.errors import (
    BrokerStartError,
    BrokerStateError,
    FetchError,
    JavaNotFoundError,
    JavaTooOldError,
    LocalKafkaError,
    MavenNotFoundError,
    PortInUseError,
    ToolchainError,
)
from localkafka.jars import KafkaJars, cached_jars, ensure_jars, fetch_jars, kafka_version

__all__ = [
    "SCRAM_MECHANISMS",
    "BrokerStartError",
    "BrokerStateError",
    "FetchError",
    "JavaNotFoundError",
    "JavaTooOldError",
    "KafkaJars",
    "LocalKafka",
    "LocalKafkaError",
    "MavenNotFoundError",
    "PortInUseError",
    "ScramEndpoint",
    "ScramUser",
    "ToolchainError",
    "answer_metadata",
    "cached_jars",
    "ensure_jars",
    "fetch_jars",
    "kafka_version",
]
