"""The local JVM broker's own life cycle: `kafka up/status/down`, and no orphan when its starter dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localkafka import answer_metadata
from localkafka.daemon import read_state
from localkafka.ports import free_ports
from localkafka.procs import is_running

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 120  # `up` waits for the broker (seconds warm; a first jar fetch takes longer)
ORPHAN_STOP_TIMEOUT_S = 45  # the watchdog's SIGTERM grace (30 s) plus margin


@pytest.fixture
def state_env(tmp_path: Path, local_toolchain: None) -> Iterator[dict[str, str]]:
    """Environment for the CLI with its own state folder; any broker left is stopped afterwards."""
    env = {**os.environ, "TAGSTREAM_KAFKA_STATE_DIR": str(tmp_path / "state")}
    yield env
    subprocess.run(
        [sys.executable, "-m", "worker.cli", "kafka", "down"],
        env=env,
        capture_output=True,
        timeout=60,
    )


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "kafka", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def test_kafka_up_status_down_manage_a_background_broker(
    state_env: dict[str, str], tmp_path: Path
) -> None:
    """`up --scram --tls` leaves a broker that answers on all four listeners (TLS with the CA file it
    prints), `status` shows it, `down` stops it and removes its data and certificates."""
    port, scram_port, ssl_port, sasl_ssl_port = free_ports(4)
    up = cli(
        state_env, "up", "--port", str(port), "--scram", "--scram-port", str(scram_port),
        "--tls", "--ssl-port", str(ssl_port), "--sasl-ssl-port", str(sasl_ssl_port),
    )
    assert up.returncode == 0, up.stderr
    for listener in (port, scram_port, ssl_port, sasl_ssl_port):
        assert f"127.0.0.1:{listener}" in up.stdout
    assert "TAGSTREAM_SECURITY_PROTOCOL=SASL_SSL" in up.stdout and "TAGSTREAM_SSL_CAFILE=" in up.stdout

    state = read_state(tmp_path / "state")
    assert state is not None and state.running
    assert answer_metadata(f"127.0.0.1:{port}")["brokers"][0]["port"] == port
    answer_metadata(
        f"127.0.0.1:{scram_port}",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username=state.scram_user,
        sasl_plain_password=state.scram_password,
    )
    assert state.ssl_cafile is not None and f"TAGSTREAM_SSL_CAFILE={state.ssl_cafile}" in up.stdout
    answer_metadata(f"127.0.0.1:{ssl_port}", security_protocol="SSL", ssl_cafile=state.ssl_cafile)
    answer_metadata(
        f"127.0.0.1:{sasl_ssl_port}",
        security_protocol="SASL_SSL",
        ssl_cafile=state.ssl_cafile,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=state.scram_user,
        sasl_plain_password=state.scram_password,
    )

    again = cli(state_env, "up", "--port", str(port))
    assert again.returncode == 0 and "already running" in again.stdout

    status = cli(state_env, "status")
    assert status.returncode == 0 and "answers" in status.stdout and str(state.pid) in status.stdout
    as_json = json.loads(cli(state_env, "status", "--json").stdout)
    assert (
        as_json["pid"] == state.pid
        and as_json["sasl_bootstrap_servers"] == f"127.0.0.1:{scram_port}"
    )

    down = cli(state_env, "down")
    assert down.returncode == 0 and f"stopped the broker (pid {state.pid})" in down.stdout
    assert not is_running(state.pid)
    assert cli(state_env, "status").returncode == 1
    assert not (tmp_path / "state" / "data").exists() and not (tmp_path / "state" / "tls").exists()


STARTER = textwrap.dedent(
    """
    import json, time
    from localkafka import LocalKafka
    broker = LocalKafka().start()
    print(json.dumps({"pid": broker.pid, "run_dir": str(broker.run_dir)}), flush=True)
    time.sleep(600)
    """
)


def test_broker_is_stopped_when_its_starter_is_killed(
    tmp_path: Path, local_toolchain: None
) -> None:
    """A broker whose starting process dies by SIGKILL is stopped and its temporary folder removed."""
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        started = json.loads(starter.stdout.readline())
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    pid, run_dir = started["pid"], Path(started["run_dir"])

    deadline = time.monotonic() + ORPHAN_STOP_TIMEOUT_S
    while (is_running(pid) or run_dir.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(pid), "the broker outlived its starter"
    assert not run_dir.exists(), "the broker's temporary folder was left behind"


def test_tls_certificate_names_loopback_and_chains_to_the_ca_file(kafka_secure) -> None:
    """The TLS listener's certificate chains to ``ca_file`` and holds 127.0.0.1 and localhost; the CA's
    private key is gone (tls/ keeps only ca.pem and the broker's keystore)."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(kafka_secure.ca_file))
    host, port = kafka_secure.ssl_bootstrap_servers.rsplit(":", 1)
    for name in ("127.0.0.1", "localhost"):
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            names = tls.getpeercert()["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in names and ("DNS", "localhost") in names
    assert sorted(p.name for p in kafka_secure.ca_file.parent.iterdir()) == ["broker.p12", "ca.pem"]
