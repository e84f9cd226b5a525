"""The worker against authenticated and encrypted listeners: SCRAM over SASL_PLAINTEXT and SASL_SSL,
TLS with the broker's CA, refusals that name the setting to fix, and no password anywhere.

Every listener here belongs to one session broker, ``kafka_secure`` (tests/conftest.py), whose
certificate a throwaway CA signed; ``wrong_ca_file`` is a CA that signed nothing of it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import traceback
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from kafka import KafkaAdminClient
from structlog.testing import capture_logs
from worker_support import fixture_texts, make_topic, produce_events, read_records

import worker.kafka.diagnose
from localkafka import Endpoint, LocalKafka
from worker.app import Worker
from worker.check import run_check
from worker.errors import BrokerError
from worker.settings import env_name, load_settings

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 90  # a fresh Python with torch, plus TLS/SASL handshakes; bounds a hang
# kafka-python reports a refused login or an untrusted certificate only when its bootstrap wait
# (15 s in the worker) runs out; these tests shorten it: what they check is the message.
SHORT_BOOTSTRAP_MS = 3000


def with_short_bootstrap(command: str) -> list[str]:
    """``tagstream-worker COMMAND`` as a fresh process, with that shorter bootstrap wait."""
    code = (
        f"import sys, worker.kafka.diagnose; worker.kafka.diagnose.BOOTSTRAP_TIMEOUT_MS = {SHORT_BOOTSTRAP_MS}; "
        f"from worker.cli import main; sys.exit(main([{command!r}]))"
    )
    return [sys.executable, "-c", code]


def security(endpoint: Endpoint, mechanism: str = "SCRAM-SHA-512", **override: Any) -> dict[str, Any]:
    """The worker's settings (field names) that reach ``endpoint``, with the test's Kafka client."""
    settings: dict[str, Any] = {
        "bootstrap_servers": endpoint.bootstrap_servers, "security_protocol": endpoint.security_protocol,
        "kafka_client": os.environ.get("TAGSTREAM_TEST_KAFKA_CLIENT", "kafka-python"),  # conftest's kafka_client
    }
    if endpoint.uses_tls:
        settings["ssl_cafile"] = endpoint.cafile
    if endpoint.uses_sasl:
        settings.update(sasl_mechanism=mechanism, sasl_username=endpoint.username, sasl_password=endpoint.password)
    return {**settings, **override}


def as_env(settings: dict[str, Any]) -> dict[str, str]:
    """The process environment, without inherited TAGSTREAM_* variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSTREAM_")}
    env.update({env_name(k): ",".join(v) if isinstance(v, list) else str(v) for k, v in settings.items()})
    return env


def client(endpoint: Endpoint, **override: Any) -> dict[str, Any]:
    """kafka-python settings for ``endpoint`` without ``bootstrap_servers`` (for the helpers)."""
    config = endpoint.client_config(**override)
    del config["bootstrap_servers"]
    return config


@pytest.fixture
def secure_topic(kafka_ssl: Endpoint) -> Callable[..., str]:
    """Factory: ``secure_topic(partitions=1) -> name`` of a fresh topic on the secure broker."""

    def make(partitions: int = 1) -> str:
        return make_topic(f"secure-{uuid.uuid4().hex[:12]}", partitions, **kafka_ssl.client_config())

    return make


def check_output(**settings: Any) -> tuple[int, str]:
    """``tagstream-worker check`` in this process: (exit code, what it printed)."""
    out = io.StringIO()
    code = run_check(load_settings(**settings), out=out)
    return code, out.getvalue()


# -- SCRAM over SASL_PLAINTEXT -------------------------------------------------------------------


def check(kafka_scram, tiny_bundle, topic: str, password: str) -> subprocess.CompletedProcess:
    env = as_env({**security(kafka_scram, "SCRAM-SHA-256", sasl_password=password), "input_topics": topic,
                  "bundle_path": tiny_bundle})
    return subprocess.run(with_short_bootstrap("check"), env=env, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)


def test_scram_credentials(kafka_scram, tiny_bundle, kafka_client):
    """With the right SCRAM password `check` passes (password masked); with a wrong one it exits 4 naming authentication."""
    topic = f"scram-events-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(**kafka_scram.client_config("SCRAM-SHA-256"))
    try:
        admin.create_topics({topic: {"num_partitions": 1, "replication_factor": -1}})
        admin.wait_for_topics([topic], timeout_ms=30_000)
    finally:
        admin.close()
    good = check(kafka_scram, tiny_bundle, topic, kafka_scram.password)
    assert good.returncode == 0, good.stdout + good.stderr
    assert kafka_scram.password not in good.stdout and '"**********"' in good.stdout
    bad = check(kafka_scram, tiny_bundle, topic, "wrong-password")
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "FAIL broker" in bad.stdout and "TAGSTREAM_SASL" in bad.stdout


# -- TLS: SSL and SASL_SSL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SSL", None), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")],
)
def test_worker_classifies_over_tls(
    kafka_secure: LocalKafka, secure_topic, start_worker, tiny_bundle, protocol: str, mechanism: str | None
):
    """Over SSL, and over SASL_SSL with each SCRAM mechanism, every event gets exactly one result."""
    endpoint = kafka_secure.endpoint(protocol)
    mechanism = mechanism or "SCRAM-SHA-512"
    topic = secure_topic(partitions=2)
    ids = produce_events(endpoint.bootstrap_servers, topic, fixture_texts(200, seed=5), **client(endpoint, mechanism=mechanism))
    start_worker(topic, tiny_bundle, **security(endpoint, mechanism))

    records = read_records(endpoint.bootstrap_servers, f"{topic}.labels", expected=200, **client(endpoint, mechanism=mechanism))
    counts = Counter(json.loads(r.value)["id"] for r in records)
    assert set(counts) == set(ids) and max(counts.values()) == 1, f"{len(records)} results for {len(ids)} inputs"


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_check_refuses_a_wrong_ca_in_one_line_naming_the_ca_file(
    kafka_secure: LocalKafka, secure_topic, tiny_bundle, wrong_ca_file: Path, protocol: str
):
    """`check` passes with the broker's CA, and with another CA exits 4 with one FAIL line naming TAGSTREAM_SSL_CAFILE."""
    endpoint = kafka_secure.endpoint(protocol)
    topic = secure_topic()
    code, out = check_output(**security(endpoint), input_topics=[topic], bundle_path=tiny_bundle)
    assert code == 0 and "worker can start" in out, out

    code, out = check_output(
        **security(endpoint, ssl_cafile=wrong_ca_file), input_topics=[topic], bundle_path=tiny_bundle
    )
    assert code == 4, out
    (fail,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert fail.startswith("FAIL broker: ") and "not trusted" in fail and "TAGSTREAM_SSL_CAFILE" in fail, fail
    assert "TAGSTREAM_SASL" not in fail  # the certificate, not the login, is what to fix


def test_run_refuses_a_wrong_ca_in_one_line_naming_the_ca_file(
    kafka_ssl: Endpoint, secure_topic, tiny_bundle, wrong_ca_file: Path
):
    """`tagstream-worker run` with a CA that did not sign the broker's certificate exits 4, its last line naming TAGSTREAM_SSL_CAFILE."""
    topic = secure_topic()
    env = as_env({**security(kafka_ssl, ssl_cafile=wrong_ca_file), "input_topics": topic,
                  "bundle_path": tiny_bundle, "metrics_port": 0})
    done = subprocess.run(with_short_bootstrap("run"), env=env, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    assert done.returncode == 4, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tagstream-worker: the broker's certificate at ") and "TAGSTREAM_SSL_CAFILE" in last, last


def test_sasl_ssl_with_a_wrong_ca_blames_the_ca_not_the_login(
    kafka_sasl_ssl: Endpoint, secure_topic, tiny_bundle, wrong_ca_file: Path, monkeypatch
):
    """On SASL_SSL an untrusted certificate is reported as TAGSTREAM_SSL_CAFILE, not as wrong SASL credentials."""
    monkeypatch.setattr(worker.kafka.diagnose, "BOOTSTRAP_TIMEOUT_MS", SHORT_BOOTSTRAP_MS)
    settings = load_settings(
        **security(kafka_sasl_ssl, ssl_cafile=wrong_ca_file), input_topics=[secure_topic()],
        bundle_path=tiny_bundle, metrics_port=0,
    )
    with pytest.raises(BrokerError) as refused:
        Worker(settings).start()
    message = str(refused.value)
    assert refused.value.exit_code == 4 and "\n" not in message
    assert "TAGSTREAM_SSL_CAFILE" in message and "TAGSTREAM_SASL" not in message, message


# -- no password anywhere --------------------------------------------------------------------------


def test_wrong_password_over_sasl_ssl_names_the_sasl_settings_and_leaks_no_password(
    kafka_sasl_ssl: Endpoint, secure_topic, tiny_bundle, monkeypatch, caplog, kafka_client
):
    """A wrong SCRAM password over SASL_SSL fails naming the TAGSTREAM_SASL_* settings, in `run` and `check`;
    neither password is in the errors (message, repr, cause chain, traceback), `check`'s output, or
    the client's DEBUG log lines (kafka-python's, or librdkafka's with its debug contexts on)."""
    monkeypatch.setattr(worker.kafka.diagnose, "BOOTSTRAP_TIMEOUT_MS", SHORT_BOOTSTRAP_MS)
    caplog.set_level(logging.DEBUG, logger="kafka")
    wrong = f"wrong-{uuid.uuid4().hex}"
    secrets = [wrong, kafka_sasl_ssl.password]
    settings = security(kafka_sasl_ssl, sasl_password=wrong)
    topic = secure_topic()

    with pytest.raises(BrokerError) as refused:
        Worker(load_settings(**settings, input_topics=[topic], bundle_path=tiny_bundle, metrics_port=0)).start()
    message = str(refused.value)
    assert refused.value.exit_code == 4 and "\n" not in message
    for name in ("TAGSTREAM_SASL_MECHANISM", "TAGSTREAM_SASL_USERNAME", "TAGSTREAM_SASL_PASSWORD"):
        assert name in message, message

    code, out = check_output(**settings, input_topics=[topic], bundle_path=tiny_bundle)
    assert code == 4 and "TAGSTREAM_SASL_PASSWORD" in out and '"**********"' in out, out

    texts = [out, "".join(traceback.format_exception(refused.value))]
    error: BaseException | None = refused.value
    while error is not None:
        texts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    kafka_lines = [r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.startswith("kafka")]
    assert any(r.levelno == logging.DEBUG for r in caplog.records if r.name.startswith("kafka")), "no DEBUG captured"
    for text in [*texts, *kafka_lines]:
        for secret in secrets:
            assert secret not in text, f"a password appears in: {text[:300]}"


@pytest.fixture
def structlog_at_debug() -> Iterator[None]:
    """structlog passes DEBUG events on (other tests may leave a level filter configured)."""
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG), cache_logger_on_first_use=False
    )
    yield
    structlog.configure(**saved)


def test_worker_over_sasl_ssl_logs_metrics_and_check_show_no_password(
    kafka_sasl_ssl: Endpoint, secure_topic, start_worker, tiny_bundle, caplog, structlog_at_debug
):
    """A worker classifying over SASL_SSL at DEBUG: no password in its structlog events, the client's
    DEBUG log lines (kafka-python's or librdkafka's), /metrics, or `check`'s output."""
    caplog.set_level(logging.DEBUG)  # every stdlib logger: kafka-python's included
    password = kafka_sasl_ssl.password
    assert password
    topic = secure_topic()
    produce_events(kafka_sasl_ssl.bootstrap_servers, topic, fixture_texts(100, seed=9), **client(kafka_sasl_ssl))
    with capture_logs() as events:
        worker = start_worker(topic, tiny_bundle, log_level="DEBUG", **security(kafka_sasl_ssl))
        records = read_records(kafka_sasl_ssl.bootstrap_servers, f"{topic}.labels", expected=100,
                               **client(kafka_sasl_ssl))
        assert len(records) == 100
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        worker.stop()
        assert worker.wait(timeout=30) == 0
    assert "tagstream_events_in_total" in metrics
    assert any(e["event"] == "batch" for e in events), "the worker's DEBUG events were not captured"
    kafka_lines = [r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.startswith("kafka")]
    assert any(r.levelno == logging.DEBUG and r.name.startswith("kafka") for r in caplog.records)
    code, out = check_output(**security(kafka_sasl_ssl), input_topics=[topic], bundle_path=tiny_bundle)
    assert code == 0, out
    for where, text in (("the worker's events", repr(events)), ("kafka-python's log", "\n".join(kafka_lines)),
                        ("/metrics", metrics), ("check's output", out)):
        assert password not in text, f"the password appears in {where}"
