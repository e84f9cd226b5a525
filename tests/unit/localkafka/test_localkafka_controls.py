"""The broker controls for fault tests (halt, kill, restart, freeze, stop), with a scripted JVM.

The fake ``java`` logs Kafka's readiness line and sleeps, so the life cycle runs for real
(processes, signals, ports, log file) without a broker; tests/integration/test_broker_controls.py
checks the same controls keep a real broker's data.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from localkafka_fakes import read_pids, write_script

from localkafka import (
    Endpoint,
    KeytoolNotFoundError,
    LocalKafka,
    PortInUseError,
    ScramUser,
    TlsError,
)
from localkafka.config import Ports, server_properties
from localkafka.ports import ephemeral_range, free_ports
from localkafka.procs import is_running, process_state
from localkafka.tls import TlsMaterial, make_broker_tls
from localkafka.toolchain import Java, find_keytool


@pytest.fixture
def broker(
    fake_java: Callable[..., Path], fake_jars: Path, no_metadata_probe: None
) -> Iterator[LocalKafka]:
    """A started fake broker on free ports in a temporary folder; stopped after the test."""
    fake_java(broker="ready")
    kafka = LocalKafka(ready_timeout_s=20).start()
    try:
        yield kafka
    finally:
        kafka.stop()


def formats(run_dir: Path) -> int:
    path = run_dir / "formats.txt"
    return len(path.read_text().split()) if path.exists() else 0


def test_halt_then_start_comes_back_on_the_same_ports_and_data(broker: LocalKafka) -> None:
    """halt() ends the process but keeps the folder; start() relaunches on the same ports without formatting."""
    assert broker.run_dir is not None
    ports, first_pid = broker.ports, broker.pid
    assert broker.halt() is True
    assert not broker.running and first_pid is not None and not is_running(first_pid)
    assert broker.run_dir.exists() and formats(broker.run_dir) == 1

    broker.start()
    assert broker.ports == ports and broker.pid != first_pid and broker.running
    assert formats(broker.run_dir) == 1, "a restart must not format (it would wipe the data)"
    assert len(read_pids(broker.run_dir)) == 2 and len(broker.ready_times_s) == 2
    log = broker.log_path.read_text()
    assert log.count("Kafka Server started") == 2 and "started again on the same data" in log


def test_kill_is_sigkill_and_restart_kill_brings_it_back(broker: LocalKafka) -> None:
    """kill() ends the JVM at once (no shutdown); restart(kill=True) relaunches it on the same ports."""
    assert broker.run_dir is not None
    ports, pid = broker.ports, broker.pid
    assert pid is not None
    proc = broker._proc
    assert proc is not None
    broker.kill()
    assert proc.returncode == -signal.SIGKILL
    broker.restart(kill=True)
    assert broker.ports == ports and broker.running and formats(broker.run_dir) == 1


def test_restart_refuses_a_port_taken_while_the_broker_was_down(broker: LocalKafka) -> None:
    """A port taken during the downtime fails start() with one line naming it; once freed, start() works."""
    assert broker.ports is not None
    port = broker.ports.plaintext
    broker.halt()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        with pytest.raises(PortInUseError) as info:
            broker.start()
    finally:
        squatter.close()
    message = str(info.value)
    assert f"port {port} (client listener)" in message and "while the broker was down" in message
    assert "\n" not in message and str(broker.run_dir) in message
    assert not broker.running
    broker.start()
    assert broker.running and broker.ports.plaintext == port


def test_freeze_stops_the_process_and_thaw_resumes_it(broker: LocalKafka) -> None:
    """freeze() leaves the process stopped (state T) until thaw(); frozen() does both around a block."""
    pid = broker.pid
    assert pid is not None
    broker.freeze()
    assert process_state(pid) == "T" and broker.is_frozen
    broker.thaw()
    assert process_state(pid) != "T" and not broker.is_frozen
    with broker.frozen():
        assert process_state(pid) == "T"
    assert process_state(pid) != "T"


def test_stop_ends_a_frozen_broker_and_removes_its_folder(broker: LocalKafka) -> None:
    """stop() on a frozen broker still ends it (SIGCONT after SIGTERM) and removes the temporary folder."""
    pid, run_dir = broker.pid, broker.run_dir
    assert pid is not None and run_dir is not None
    broker.freeze()
    broker.stop(timeout_s=10)
    assert not is_running(pid) and not run_dir.exists()


def test_start_after_stop_is_a_fresh_broker(broker: LocalKafka) -> None:
    """After stop() (for good), start() formats a new folder instead of reusing the old data."""
    old_dir = broker.run_dir
    broker.stop()
    broker.start()
    assert broker.run_dir is not None and broker.run_dir != old_dir
    assert formats(broker.run_dir) == 1


def test_controls_on_a_stopped_broker_say_so(broker: LocalKafka) -> None:
    """freeze() and thaw() of a broker that is not running raise, naming the action."""
    broker.halt()
    with pytest.raises(RuntimeError, match="cannot freeze the broker: it is not running"):
        broker.freeze()
    with pytest.raises(RuntimeError, match="cannot thaw"):
        broker.thaw()


def test_picked_ports_lie_below_the_ephemeral_range() -> None:
    """Picked ports are distinct and below the kernel's ephemeral range, so no client can be given one."""
    low, _ = ephemeral_range()
    ports = free_ports(8)
    assert len(set(ports)) == 8
    if low > 21000:
        assert all(20000 <= p < low for p in ports), ports


def test_endpoint_client_config_for_each_protocol() -> None:
    """Endpoint.client_config gives SASL settings on SASL_*, the CA file on *SSL, and hides the password from repr."""
    ca = Path("/tmp/ca.pem")
    plain = Endpoint("127.0.0.1:1").client_config()
    assert plain == {"bootstrap_servers": "127.0.0.1:1", "security_protocol": "PLAINTEXT"}
    ssl = Endpoint("127.0.0.1:2", "SSL", cafile=ca).client_config()
    assert ssl["ssl_cafile"] == str(ca) and "sasl_mechanism" not in ssl
    sasl_ssl = Endpoint("127.0.0.1:3", "SASL_SSL", username="u", password="p-secret", cafile=ca)
    config = sasl_ssl.client_config("SCRAM-SHA-256", cafile="/other.pem")
    assert config["sasl_mechanism"] == "SCRAM-SHA-256" and config["sasl_plain_password"] == "p-secret"
    assert config["ssl_cafile"] == "/other.pem"
    assert "p-secret" not in repr(sasl_ssl)
    with pytest.raises(ValueError, match="PLAIN"):
        sasl_ssl.client_config("PLAIN")


def test_server_properties_for_every_listener(tmp_path: Path) -> None:
    """With TLS and SCRAM: SSL and SASL_SSL listeners, one keystore, SCRAM on both SASL listeners."""
    tls = TlsMaterial(tmp_path / "ca.pem", tmp_path / "broker.p12", "store-pass")
    ports = Ports(plaintext=1, controller=2, sasl=3, ssl=4, sasl_ssl=5)
    text = server_properties(ports, tmp_path / "data", tls)
    assert (
        "listeners=PLAINTEXT://127.0.0.1:1,SASL_PLAINTEXT://127.0.0.1:3,SSL://127.0.0.1:4,"
        "SASL_SSL://127.0.0.1:5,CONTROLLER://127.0.0.1:2" in text
    )
    assert f"ssl.keystore.location={tls.keystore}" in text and "ssl.keystore.password=store-pass" in text
    for listener in ("sasl_plaintext", "sasl_ssl"):
        assert f"listener.name.{listener}.scram-sha-512.sasl.jaas.config=" in text
    with pytest.raises(ValueError, match="TLS material"):
        server_properties(ports, tmp_path / "data")


def test_tls_broker_without_keytool_says_what_to_install(
    fake_java: Callable[..., Path], isolated_env: Path
) -> None:
    """A TLS broker on a Java without keytool (none beside java, none on PATH) names keytool and the fix."""
    java_home = fake_java()
    with pytest.raises(KeytoolNotFoundError, match=r"keytool not found beside .* install a JDK 17"):
        find_keytool(Java(java_home / "bin" / "java", 17))


def test_a_failing_keytool_names_the_step_and_its_reason(tmp_path: Path) -> None:
    """keytool exiting non-zero becomes one TlsError with the step and keytool's last line."""
    keytool = write_script(
        tmp_path / "bin" / "keytool",
        """
        import sys
        print("keytool error: java.lang.Exception: Key pair not generated, alias <ca> already exists")
        sys.exit(1)
        """,
    )
    with pytest.raises(TlsError) as info:
        make_broker_tls(tmp_path / "tls", keytool)
    message = str(info.value)
    assert "keytool -genkeypair exited with code 1" in message and "alias <ca> already exists" in message
    assert "\n" not in message


def test_tls_broker_options_open_the_listeners() -> None:
    """tls=True adds an SSL listener; with SCRAM users a SASL_SSL one too; endpoint() refuses absent ones."""
    kafka = LocalKafka(tls=True, scram_users=[ScramUser("u", "p")])
    assert set(kafka._wanted) == {"plaintext", "controller", "sasl", "ssl", "sasl_ssl"}
    assert set(LocalKafka(tls=True)._wanted) == {"plaintext", "controller", "ssl"}
    kafka.ports = Ports(plaintext=1, controller=2)
    kafka.run_dir = Path("/tmp/x")
    with pytest.raises(ValueError, match="no SSL listener: start it with tls=True"):
        kafka.endpoint("SSL")
