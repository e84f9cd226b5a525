"""The worker against a SCRAM-authenticated listener: right credentials work, wrong ones exit 4."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kafka import KafkaAdminClient

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 90  # a fresh Python with torch, plus SASL handshakes; bounds a hang


def check(kafka_scram, tiny_bundle, topic: str, password: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSTREAM_")}
    env.update(
        TAGSTREAM_BOOTSTRAP_SERVERS=kafka_scram.bootstrap_servers, TAGSTREAM_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        TAGSTREAM_SASL_MECHANISM="SCRAM-SHA-256", TAGSTREAM_SASL_USERNAME=kafka_scram.username,
        TAGSTREAM_SASL_PASSWORD=password, TAGSTREAM_INPUT_TOPICS=topic, TAGSTREAM_BUNDLE_PATH=str(tiny_bundle),
    )
    return subprocess.run([sys.executable, "-m", "worker.cli", "check"], env=env, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)


def test_scram_credentials(kafka_scram, tiny_bundle):
    """With the right SCRAM password `check` passes (password masked); with a wrong one it exits 4 naming authentication."""
    admin = KafkaAdminClient(**kafka_scram.client_config("SCRAM-SHA-256"))
    try:
        admin.create_topics({"scram-events": {"num_partitions": 1, "replication_factor": -1}})
        admin.wait_for_topics(["scram-events"], timeout_ms=30_000)
    finally:
        admin.close()
    good = check(kafka_scram, tiny_bundle, "scram-events", kafka_scram.password)
    assert good.returncode == 0, good.stdout + good.stderr
    assert kafka_scram.password not in good.stdout and '"**********"' in good.stdout
    bad = check(kafka_scram, tiny_bundle, "scram-events", "wrong-password")
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "FAIL broker" in bad.stdout and "TAGSTREAM_SASL" in bad.stdout
