"""A real local Apache Kafka broker for development and tests, without Docker.

Kafka's jars come from Maven Central (fetched once by Maven into a cache outside the
repository); the broker runs as one KRaft node on 127.0.0.1 with a fresh log folder, with
PLAINTEXT and optionally SASL_PLAINTEXT, SSL and SASL_SSL listeners (SCRAM users, throwaway
certificates), and controls for fault tests (halt, kill -9, restart on the same data, freeze).

This is development tooling, apart from the worker's pipeline; it ships in the same wheel so
that ``tagstream-worker kafka up|down|status|fetch`` works wherever the worker is installed.

    jars.py       the pinned version (pom.xml), the cache, fetching with Maven
    toolchain.py  finding Java 17+, Maven and keytool
    ports.py      checking requested ports, picking free ones (outside the ephemeral range)
    tls.py        a throwaway CA and broker certificate, made with keytool
    config.py     server.properties, SCRAM users
    endpoint.py   Endpoint: one listener and the client settings that reach it
    broker.py     LocalKafka: format, start, wait until ready, stop; halt/kill/restart/freeze
    procs.py      stopping processes; the watchdog for orphaned brokers
    daemon.py     the detached broker of `tagstream-worker kafka up|down|status`
    cli.py        those commands
    errors.py     LocalKafkaError and its subclasses
"""

from localkafka.broker import LocalKafka, answer_metadata
from localkafka.config import SCRAM_MECHANISMS, ScramUser
from localkafka.endpoint import SECURITY_PROTOCOLS, Endpoint, ScramEndpoint
from localkafka.errors import (
    BrokerStartError,
    BrokerStateError,
    FetchError,
    JavaNotFoundError,
    JavaTooOldError,
    KeytoolNotFoundError,
    LocalKafkaError,
    MavenNotFoundError,
    PortInUseError,
    TlsError,
    ToolchainError,
)
from localkafka.jars import KafkaJars, cached_jars, ensure_jars, fetch_jars, kafka_version
from localkafka.tls import TlsMaterial, make_ca

__all__ = [
    "SCRAM_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "BrokerStartError",
    "BrokerStateError",
    "Endpoint",
    "FetchError",
    "JavaNotFoundError",
    "JavaTooOldError",
    "KafkaJars",
    "KeytoolNotFoundError",
    "LocalKafka",
    "LocalKafkaError",
    "MavenNotFoundError",
    "PortInUseError",
    "ScramEndpoint",
    "ScramUser",
    "TlsError",
    "TlsMaterial",
    "ToolchainError",
    "answer_metadata",
    "cached_jars",
    "ensure_jars",
    "fetch_jars",
    "kafka_version",
    "make_ca",
]
