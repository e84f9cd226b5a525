"""The local broker's building blocks: configuration, ports, cluster ids, the watchdog, the jar cache."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from localkafka_fakes import write_script

from localkafka import ScramUser, kafka_version, procs
from localkafka.broker import new_cluster_id
from localkafka.config import Ports, scram_format_args, server_properties
from localkafka.jars import cache_root, package_file, pinned_versions
from localkafka.ports import free_ports, port_is_free


def properties(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_plaintext_config_has_no_sasl_listener(tmp_path: Path) -> None:
    """Without a SCRAM port the broker listens on PLAINTEXT and CONTROLLER only, on 127.0.0.1."""
    props = properties(server_properties(Ports(plaintext=19092, controller=19093), tmp_path))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == props["listeners"]
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path)
    assert props["offsets.topic.replication.factor"] == "1"
    assert not any(key.startswith("sasl") or "jaas" in key for key in props)


def test_scram_config_enables_both_mechanisms_on_their_own_listener(tmp_path: Path) -> None:
    """With a SCRAM port the SASL_PLAINTEXT listener is added with SCRAM-SHA-256/512 and a JAAS line each."""
    props = properties(server_properties(Ports(19092, 19093, sasl=19094), tmp_path))
    assert "SASL_PLAINTEXT://127.0.0.1:19094" in props["listeners"]
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in props["listener.security.protocol.map"]
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512"
    for mechanism in ("scram-sha-256", "scram-sha-512"):
        assert (
            "ScramLoginModule required;"
            in props[f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config"]
        )
    assert props["inter.broker.listener.name"] == "PLAINTEXT"


def test_scram_users_are_formatted_for_both_mechanisms() -> None:
    """Each SCRAM user becomes one StorageTool -S argument per mechanism."""
    assert scram_format_args([ScramUser("alice", "s3cret")]) == [
        "-S",
        "SCRAM-SHA-256=[name=alice,password=s3cret]",
        "-S",
        "SCRAM-SHA-512=[name=alice,password=s3cret]",
    ]


@pytest.mark.parametrize("password", ["", "a,b", "a]b", 'a"b', "a b", "x" * 129])
def test_scram_credentials_storagetool_cannot_parse_are_refused(password: str) -> None:
    """Passwords that would break StorageTool's -S syntax are refused with the allowed characters."""
    with pytest.raises(ValueError, match="is not allowed: use 1-128 of"):
        ScramUser("alice", password)


def test_cluster_ids_look_like_kafka_storage_random_uuid() -> None:
    """Cluster ids are 22 url-safe base64 characters that never start with '-'."""
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert set(cluster_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_free_ports_are_distinct_and_bindable() -> None:
    """free_ports gives distinct ports that can be bound right after."""
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert all(port_is_free(port) for port in ports)


def test_kafka_version_is_pinned_in_the_packaged_pom() -> None:
    """The Kafka version comes from the packaged pom.xml and is a 4.3.x release."""
    assert kafka_version() == pinned_versions()["kafka.version"]
    assert kafka_version().startswith("4.3.")
    assert package_file("log4j2.properties").is_file()


def test_cache_root_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TAGSTREAM_KAFKA_CACHE wins; otherwise XDG_CACHE_HOME/tagstream/kafka."""
    monkeypatch.setenv("TAGSTREAM_KAFKA_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("TAGSTREAM_KAFKA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tagstream" / "kafka"


def _sleeper(tmp_path: Path, marker: str) -> subprocess.Popen[bytes]:
    script = write_script(tmp_path / "sleeper.py", "import time\ntime.sleep(600)\n")
    return subprocess.Popen([sys.executable, str(script), marker])


def _watchdog(pid: int, marker: str, run_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, procs.__file__, str(pid), marker, str(run_dir)], stdin=subprocess.PIPE
    )


def test_watchdog_stops_the_broker_when_its_starter_vanishes(tmp_path: Path) -> None:
    """When the pipe closes without 'stopped' (the starter died), the watchdog stops the process and removes its folder."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = _sleeper(tmp_path, "marker-123")
    watchdog = _watchdog(target.pid, "marker-123", run_dir)
    assert watchdog.stdin is not None
    watchdog.stdin.close()  # what the kernel does when the starter dies
    assert watchdog.wait(20) == 0
    assert target.wait(5) == -15  # SIGTERM
    assert not run_dir.exists()


def test_watchdog_leaves_things_alone_after_a_clean_stop(tmp_path: Path) -> None:
    """After 'stopped' the watchdog exits without touching the process or its folder."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = _sleeper(tmp_path, "marker-456")
    try:
        watchdog = _watchdog(target.pid, "marker-456", run_dir)
        watchdog.communicate(procs.STOPPED, timeout=20)
        assert watchdog.returncode == 0
        assert target.poll() is None and run_dir.exists()
    finally:
        target.kill()
        target.wait()


def test_watchdog_spares_a_reused_pid(tmp_path: Path) -> None:
    """A pid whose command line lacks the broker's marker (reused by another program) is not signalled."""
    target = _sleeper(tmp_path, "something-else")
    try:
        watchdog = _watchdog(target.pid, "the-broker-marker", tmp_path / "run")
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        assert watchdog.wait(20) == 0
        time.sleep(0.1)
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


def test_stop_pid_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    """stop_pid falls back to SIGKILL after the grace period and reports it."""
    script = write_script(
        tmp_path / "stubborn.py",
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n",
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    assert procs.stop_pid(proc.pid, grace_s=0.5) is False
    assert not procs.is_running(proc.pid)


def test_wheel_ships_the_pom_and_the_log_configuration(tmp_path: Path) -> None:
    """The built wheel contains localkafka/pom.xml and log4j2.properties."""
    uv = Path.home() / ".cache/tagstream/tools/uv-0.13.9/bin/uv"
    if not uv.exists():
        pytest.skip("uv is installed by `make install`")
    root = Path(__file__).resolve().parents[3]
    subprocess.run(
        [str(uv), "build", "--wheel", "--out-dir", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"localkafka/pom.xml", "localkafka/log4j2.properties"} <= names
