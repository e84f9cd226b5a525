"""Errors of the local development broker. Each message is one line that says what to fix.

LocalKafkaError             base: the CLI prints ``error: <message>`` and exits 1
├── ToolchainError          something to install is missing or too old
│   ├── JavaNotFoundError   no ``java`` (JAVA_HOME or PATH)
│   ├── JavaTooOldError     ``java`` is older than 17
│   ├── MavenNotFoundError  no ``mvn`` while the Kafka jars still have to be fetched
│   └── KeytoolNotFoundError no ``keytool`` (part of every JDK/JRE) for a TLS broker
├── FetchError              Maven could not fetch the jars (offline, artifact not found, ...)
├── TlsError                ``keytool`` could not make the throwaway CA or broker certificate
├── PortInUseError          a requested port on 127.0.0.1 is already taken (also: a port a
│                           restarted broker must get back was taken while it was down)
├── BrokerStartError        the broker exited or was not ready in time (log tail attached)
└── BrokerStateError        ``kafka up/down/status`` found a state it cannot act on
"""

from __future__ import annotations


class LocalKafkaError(Exception):
    """Base class: anything the local broker can fail with, with a message naming the fix."""


class ToolchainError(LocalKafkaError):
    """A program the local broker needs (Java 17+, Maven) is missing or unusable."""


class JavaNotFoundError(ToolchainError):
    """No ``java`` executable was found (``$JAVA_HOME/bin/java``, then ``PATH``)."""


class JavaTooOldError(ToolchainError):
    """The ``java`` found is older than the version Kafka 4 needs (17)."""


class MavenNotFoundError(ToolchainError):
    """``mvn`` is needed to fetch the Kafka jars once, and is not on ``PATH``."""


class KeytoolNotFoundError(ToolchainError):
    """``keytool``, which makes the TLS broker's certificates, is neither beside ``java`` nor on PATH."""


class FetchError(LocalKafkaError):
    """Maven ran but could not fetch the Kafka jars."""


class TlsError(LocalKafkaError):
    """``keytool`` failed while making the throwaway CA or the broker's certificate."""


class PortInUseError(LocalKafkaError):
    """A port the broker must listen on is already taken on 127.0.0.1."""


class BrokerStartError(LocalKafkaError):
    """The broker process exited during start-up, or was not ready before the timeout.

    The first line says what happened; the lines after it are the tail of the broker log.
    """


class BrokerStateError(LocalKafkaError):
    """The recorded state of a ``kafka up`` broker does not allow the asked action."""
