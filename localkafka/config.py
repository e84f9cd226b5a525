"""The broker's ``server.properties``: one KRaft node (broker + controller) on 127.0.0.1.

Listeners: PLAINTEXT for clients and inter-broker traffic, CONTROLLER for the KRaft quorum of
one, and optionally SASL_PLAINTEXT with SCRAM-SHA-256 and SCRAM-SHA-512, whose users are
written into the metadata log when the storage is formatted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localkafka.ports import HOST

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
    """The broker's listener ports on 127.0.0.1; ``sasl`` is None without a SCRAM listener."""

    plaintext: int
    controller: int
    sasl: int | None = None


def server_properties(ports: Ports, log_dir: Path) -> str:
    """The text of ``server.properties`` for one node listening on ``ports``, storing in ``log_dir``."""
    listeners = [f"PLAINTEXT://{HOST}:{ports.plaintext}"]
    protocols = ["PLAINTEXT:PLAINTEXT"]
    if ports.sasl is not None:
        listeners.append(f"SASL_PLAINTEXT://{HOST}:{ports.sasl}")
        protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
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
    ]
    if ports.sasl is not None:
        lines.append(f"sasl.enabled.mechanisms={','.join(SCRAM_MECHANISMS)}")  # default: GSSAPI
        for mechanism in SCRAM_MECHANISMS:
            lines.append(
                f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
    return "\n".join(lines) + "\n"


def scram_format_args(users: Sequence[ScramUser]) -> list[str]:
    """StorageTool ``format`` arguments creating every user for both SCRAM mechanisms."""
    args: list[str] = []
    for user in users:
        for mechanism in SCRAM_MECHANISMS:
            args += ["-S", f"{mechanism}=[name={user.name},password={user.password}]"]
    return args
