"""What a bootstrap timeout is reported as: nothing listening, or a listener that would not let us in."""

from __future__ import annotations

import socket

from kafka.errors import KafkaTimeoutError

from worker.errors import Failure
from worker.kafka.diagnose import bootstrap_timeout_error as _bootstrap_timeout_error
from worker.settings import WorkerSettings


def settings(servers: str, **kw) -> WorkerSettings:
    return WorkerSettings(bundle_path="/b", input_topics=["t"], bootstrap_servers=servers, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_unreachable():
    """With no listener at the address the error says so and names TAGSTREAM_BOOTSTRAP_SERVERS."""
    error = _bootstrap_timeout_error(settings(f"127.0.0.1:{free_port()}"), KafkaTimeoutError("x"))
    assert error.failure is Failure.BROKER_UNREACHABLE and "TAGSTREAM_BOOTSTRAP_SERVERS" in str(error)


def test_listener_that_refuses_a_sasl_login_is_an_authentication_failure():
    """A listener that accepts TCP but times out the SASL login is reported as bad credentials."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        error = _bootstrap_timeout_error(
            settings(address, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                     sasl_password="p"),
            KafkaTimeoutError("x"),
        )
        plain = _bootstrap_timeout_error(settings(address), KafkaTimeoutError("x"))
    assert error.failure is Failure.AUTHENTICATION_FAILED and "TAGSTREAM_SASL_PASSWORD" in str(error)
    assert plain.failure is Failure.BROKER_UNREACHABLE and "TAGSTREAM_SECURITY_PROTOCOL" in str(plain)
