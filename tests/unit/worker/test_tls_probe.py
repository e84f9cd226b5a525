"""The TLS diagnosis behind `check` and the worker's start-up errors, against plain local sockets.

(A broker with real certificates, a wrong CA and SASL_SSL: tests/integration/worker/test_security.py.)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError

from worker.errors import BrokerError, Failure
from worker.kafka.diagnose import bootstrap_timeout_error as _bootstrap_timeout_error
from worker.kafka.tls import check_tls, tls_problem
from worker.settings import WorkerSettings


def settings(servers: str, **kw) -> WorkerSettings:
    return WorkerSettings(bundle_path="/b", input_topics=["t"], bootstrap_servers=servers, **kw)


@pytest.fixture
def not_tls() -> Iterator[str]:
    """``host:port`` of a listener that answers a TLS hello with plain text, as a PLAINTEXT broker port would."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        while True:  # every connection: a plain TCP probe first, then the TLS one
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if conn.recv(4096):
                    conn.sendall(b"\x00\x00\x00\x10not a TLS record")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
    server.close()
    thread.join(5)


def test_a_listener_that_is_not_tls_is_named(not_tls: str) -> None:
    """A handshake answered with plain bytes asks whether it is a TLS listener, naming the protocol setting."""
    problem = tls_problem(settings(not_tls, security_protocol="SSL"), not_tls)
    assert problem is not None and "is it a TLS listener?" in problem
    assert "TAGSTREAM_SECURITY_PROTOCOL" in problem and "\n" not in problem


def test_an_unreadable_ca_file_is_named(tmp_path: Path) -> None:
    """A CA file that is not PEM is reported as TAGSTREAM_SSL_CAFILE before any connection is tried."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    with pytest.raises(BrokerError) as info:
        check_tls(settings("127.0.0.1:1", security_protocol="SSL", ssl_cafile=ca))
    assert info.value.failure is Failure.AUTHENTICATION_FAILED
    assert "TAGSTREAM_SSL_CAFILE must be PEM CA certificates" in str(info.value)


def test_unreachable_or_plaintext_is_not_a_tls_question() -> None:
    """Nothing listening gives no TLS verdict, and PLAINTEXT settings are not probed at all."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    assert tls_problem(settings(closed, security_protocol="SSL"), closed) is None
    check_tls(settings(closed))  # PLAINTEXT: returns without connecting


def test_bootstrap_timeout_on_sasl_ssl_blames_tls_before_the_login(not_tls: str) -> None:
    """On SASL_SSL a failed TLS handshake is reported, not a SASL login that never got a chance."""
    error = _bootstrap_timeout_error(
        settings(not_tls, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                 sasl_password="p"),
        KafkaTimeoutError("Unable to bootstrap"),
    )
    assert error.failure is Failure.AUTHENTICATION_FAILED
    assert "TLS" in str(error) and "TAGSTREAM_SASL_PASSWORD" not in str(error)
