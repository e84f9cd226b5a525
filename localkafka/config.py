"""The broker's ``server.properties``: one KRaft node (broker + controller) on 127.0.0.1.

Listeners: PLAINTEXT for clients and inter-broker traffic, CONTROLLER for the KRaft quorum of
one, and optionally SASL_PLAINTEXT and SASL_SSL with SCRAM-SHA-256 and SCRAM-SHA-512 (users are
written into the metadata log when the storage is formatted) and SSL (server authentication
only: clients check the broker's certificate against a CA file; see tls.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localkafka.ports import HOST
from localkafka.tls import TlsMaterial

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
NODE_ID = 1
# StorageTool's "-S MECHANISM=[name=...,password=...]" grammar has no escaping; keep to
# characters that cannot end a field or the list.
_SAFE_CREDENTIAL = re.compile(r"^[A-Za-z0-9._~@%+-]{1,128}$")


@dataclass(frozen=True)
class ScramUser:
    """A SCRAM user created at format time, for both SCRAM mechanisms."""

    name: str
    password: str

    def __post_init__(self) -> None:
        for field, value in (("user name", self.name), ("password", self.password)):
            if not _SAFE_CREDENTIAL.match(value):
                raise ValueError(
                    f"SCRAM {field} {value!r} is not allowed: use 1-128 of A-Z a-z 0-9 . _ ~ @ % + -"
                )


@dataclass(frozen=True)
class Ports:
    """The broker's listener ports on 127.0.0.1; None for a listener it does not open."""

    plaintext: int
    controller: int
    sasl: int | None = None  # SASL_PLAINTEXT (SCRAM)
    ssl: int | None = None  # SSL
    sasl_ssl: int | None = None  # SASL_SSL (SCRAM over TLS)

    def client_listeners(self) -> dict[str, int]:
        """Security protocol -> port, for every client listener this broker opens."""
        named = {
            "PLAINTEXT": self.plaintext,
            "SASL_PLAINTEXT": self.sasl,
            "SSL": self.ssl,
            "SASL_SSL": self.sasl_ssl,
        }
        return {protocol: port for protocol, port in named.items() if port is not None}


def server_properties(ports: Ports, log_dir: Path, tls: TlsMaterial | None = None) -> str:
    """The text of ``server.properties`` for one node listening on ``ports``, storing in ``log_dir``.

    ``tls`` is required when ``ports`` has an SSL or SASL_SSL listener.
    """
    listeners = [f"{protocol}://{HOST}:{port}" for protocol, port in ports.client_listeners().items()]
    protocols = [f"{protocol}:{protocol}" for protocol in ports.client_listeners()]
    listeners.append(f"CONTROLLER://{HOST}:{ports.controller}")
    protocols.append("CONTROLLER:PLAINTEXT")
    lines = [
        "# Written by tagstream (localkafka); regenerated on every start.",
        "process.roles=broker,controller",
        f"node.id={NODE_ID}",
        # A dynamic quorum of one (formatted with --standalone): it elects itself at once.
        f"controller.quorum.bootstrap.servers={HOST}:{ports.controller}",
        f"listeners={','.join(listeners)}",
        f"advertised.listeners={','.join(listeners)}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={','.join(protocols)}",
        f"log.dirs={log_dir}",
        # Single node: every internal topic has one replica, and few partitions so that the
        # first consumer group or transaction does not create 50 of them.
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # The default 3 s delay only helps groups of many members joining at once.
        "group.initial.rebalance.delay.ms=0",
        # After kill -9 the restarted node may only register once the dead incarnation's
        # session has expired (9 s by default; start-to-ready was 14 s). Heartbeats go to the
        # controller in the same JVM, so they can be frequent; 4 s still rides out a stall of
        # a loaded machine without fencing the broker (which takes every partition offline).
        "broker.heartbeat.interval.ms=1000",
        "broker.session.timeout.ms=4000",
    ]
    sasl_listeners = [
        name for name, port in (("sasl_plaintext", ports.sasl), ("sasl_ssl", ports.sasl_ssl))
        if port is not None
    ]
    if sasl_listeners:
        lines.append(f"sasl.enabled.mechanisms={','.join(SCRAM_MECHANISMS)}")  # default: GSSAPI
    for listener in sasl_listeners:
        for mechanism in SCRAM_MECHANISMS:
            lines.append(
                f"listener.name.{listener}.{mechanism.lower()}.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
    if ports.ssl is not None or ports.sasl_ssl is not None:
        if tls is None:
            raise ValueError("an SSL or SASL_SSL listener needs TLS material (tls=...)")
        lines += [
            # One keystore for both TLS listeners; no truststore: clients are not asked for
            # certificates (ssl.client.auth=none), and brokers talk to each other in PLAINTEXT.
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={tls.keystore}",
            f"ssl.keystore.password={tls.keystore_password}",
            f"ssl.key.password={tls.keystore_password}",
            "ssl.client.auth=none",
        ]
    return "\n".join(lines) + "\n"


def scram_format_args(users: Sequence[ScramUser]) -> list[str]:
    """StorageTool ``format`` arguments creating every user for both SCRAM mechanisms."""
    args: list[str] = []
    for user in users:
        for mechanism in SCRAM_MECHANISMS:
            args += ["-S", f"{mechanism}=[name={user.name},password={user.password}]"]
    return args
