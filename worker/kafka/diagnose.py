"""Why a connection to the brokers failed, said in terms of the setting to change.

Client libraries report most connection problems as a timeout: nothing listening, a TLS
handshake that failed, and a refused SASL login (the broker delays its answer to a failed
authentication) all look the same. A plain TCP probe tells "nothing listens" from "it listens
but would not talk to us", and the security settings say what is likely wrong.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from worker.errors import BrokerError, Failure
from worker.kafka.tls import TLS_PROTOCOLS, tls_problem

if TYPE_CHECKING:
    from worker.settings import WorkerSettings

BOOTSTRAP_TIMEOUT_MS = 15_000  # how long start-up waits for a broker before exiting non-zero
PROBE_TIMEOUT_S = 2.0


def listening(servers: str) -> list[str]:
    """The bootstrap servers that accept a TCP connection."""
    up = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
                up.append(server.strip())
        except OSError:
            pass
    return up


def bootstrap_timeout_error(settings: WorkerSettings, exc: BaseException) -> BrokerError:
    """The BrokerError for a client that could not bootstrap in time, naming what to check."""
    up = listening(settings.bootstrap_servers)
    waited = f"within {BOOTSTRAP_TIMEOUT_MS / 1000:g} s"
    if not up:
        return BrokerError(
            f"nothing accepts connections at {settings.bootstrap_servers} ({exc}); check"
            " TAGSTREAM_BOOTSTRAP_SERVERS and that the broker is up",
            Failure.BROKER_UNREACHABLE,
        )
    tls = tls_problem(settings, up[0]) if settings.security_protocol in TLS_PROTOCOLS else None
    if tls is not None:  # a CA that did not sign the broker's certificate, ... (see tls.py)
        return BrokerError(tls, Failure.AUTHENTICATION_FAILED)
    if settings.security_protocol.startswith("SASL_"):
        return BrokerError(
            f"the broker at {up[0]} accepts connections but the SASL login did not complete {waited}:"
            " the credentials or mechanism are probably wrong; check TAGSTREAM_SASL_MECHANISM,"
            " TAGSTREAM_SASL_USERNAME and TAGSTREAM_SASL_PASSWORD",
            Failure.AUTHENTICATION_FAILED,
        )
    hint = (
        "check TAGSTREAM_SSL_CAFILE, TAGSTREAM_SSL_CERTFILE and TAGSTREAM_SSL_KEYFILE"
        if settings.security_protocol == "SSL"
        else "is TAGSTREAM_SECURITY_PROTOCOL right for this listener?"
    )
    return BrokerError(
        f"the broker at {up[0]} accepts connections but did not answer Kafka requests {waited}"
        f" ({exc}); {hint}",
        Failure.BROKER_UNREACHABLE,
    )


CONNECT_HINTS = {
    Failure.AUTHENTICATION_FAILED: "; check TAGSTREAM_SASL_MECHANISM, TAGSTREAM_SASL_USERNAME and"
    " TAGSTREAM_SASL_PASSWORD",
    Failure.AUTHORIZATION_FAILED: "; grant these credentials access to the topics and group",
    Failure.BROKER_UNREACHABLE: "; check TAGSTREAM_BOOTSTRAP_SERVERS",
}
