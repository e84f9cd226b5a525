"""Every way the local broker can fail to start gives one clear error that names the fix."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from localkafka_fakes import read_pids, write_script

from localkafka import (
    BrokerStartError,
    FetchError,
    JavaNotFoundError,
    JavaTooOldError,
    LocalKafka,
    MavenNotFoundError,
    PortInUseError,
    ensure_jars,
    kafka_version,
)
from localkafka.jars import maven_failure_reason
from localkafka.procs import is_running
from localkafka.toolchain import find_java, parse_java_major


def assert_one_line(message: str) -> None:
    assert "\n" not in message, f"expected one line, got:\n{message}"


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_292"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "25-ea" 2025-09-16', 25),
        ("no version here", None),
    ],
)
def test_parse_java_major_reads_old_and_new_version_schemes(output: str, major: int | None) -> None:
    """`java -version` output gives the major version, for both the 1.x and the modern scheme."""
    assert parse_java_major(output) == major


def test_missing_java_says_what_to_install(isolated_env: Path) -> None:
    """Without JAVA_HOME and without java on PATH, the error says to install JDK 17+."""
    with pytest.raises(JavaNotFoundError) as info:
        find_java()
    assert "Java not found" in str(info.value)
    assert "install a JDK 17 or newer" in str(info.value)
    assert_one_line(str(info.value))


def test_java_home_without_java_names_java_home(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JAVA_HOME that holds no bin/java is named in the error."""
    monkeypatch.setenv("JAVA_HOME", str(isolated_env / "nowhere"))
    with pytest.raises(JavaNotFoundError, match=r"JAVA_HOME=.*nowhere has no bin/java"):
        find_java()


def test_java_older_than_17_says_which_was_found(fake_java: Callable[..., Path]) -> None:
    """Java 11 is refused with its version, its path and the fix."""
    fake_java(version="11.0.2")
    with pytest.raises(JavaTooOldError) as info:
        find_java()
    message = str(info.value)
    assert "Java 11 found at" in message and "needs Java 17+" in message
    assert_one_line(message)


def test_java_17_is_accepted(fake_java: Callable[..., Path]) -> None:
    """Java 17 passes the version check."""
    java_home = fake_java(version="17.0.2")
    java = find_java()
    assert (java.major, java.path) == (17, java_home / "bin" / "java")


def test_missing_maven_says_what_to_install(isolated_env: Path) -> None:
    """With no jars cached and no mvn on PATH, the error says Maven is needed once and how to get it."""
    with pytest.raises(MavenNotFoundError) as info:
        ensure_jars()
    message = str(info.value)
    assert "Maven (mvn) not found" in message and "apt-get install maven" in message
    assert str(isolated_env / "cache") in message
    assert_one_line(message)


def test_cached_jars_need_no_maven(fake_jars: Path) -> None:
    """Once the jars are cached, Maven is not needed (PATH has no mvn here)."""
    assert ensure_jars().lib_dir == fake_jars


def test_artifact_not_found_gives_mavens_reason(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Maven failure becomes one line with Maven's own reason, the fix and the log path; no partial lib/ is left."""
    write_script(
        isolated_env / "bin" / "mvn",
        """
        print("[INFO] Scanning for projects...")
        print("[ERROR] Failed to execute goal org.apache.maven.plugins:maven-dependency-plugin:3.8.1:"
              "copy-dependencies (default-cli) on project kafka-broker-classpath: Could not resolve "
              "dependencies for project tagstream.local:kafka-broker-classpath:pom:1: Could not find "
              "artifact org.apache.kafka:kafka_2.13:jar:4.3.1 in central (https://repo.maven.apache.org/maven2) -> [Help 1]")
        print("[ERROR] ")
        raise SystemExit(1)
        """,
    )
    monkeypatch.setenv("PATH", str(isolated_env / "bin"))
    with pytest.raises(FetchError) as info:
        ensure_jars()
    message = str(info.value)
    assert "Could not find artifact org.apache.kafka:kafka_2.13:jar:4.3.1 in central" in message
    assert "Failed to execute goal" not in message and "[Help 1]" not in message
    assert "Maven Central is reachable" in message and "fetch.log" in message
    assert_one_line(message)
    version_dir = isolated_env / "cache" / kafka_version()
    assert sorted(p.name for p in version_dir.iterdir() if p.name.startswith("lib")) == []


@pytest.mark.skipif(shutil.which("mvn") is None, reason="needs Maven")
def test_offline_maven_with_an_empty_repository_fails_clearly(tmp_path: Path) -> None:
    """Real Maven, offline, with nothing in its local repository: a one-line FetchError saying it is offline."""
    with pytest.raises(FetchError) as info:
        ensure_jars(tmp_path / "cache", maven_args=["-o", f"-Dmaven.repo.local={tmp_path / 'm2'}"])
    message = str(info.value)
    assert "offline mode" in message and "let it go online once" in message
    assert_one_line(message)


def test_maven_failure_reason_falls_back_to_the_last_line() -> None:
    """Output without [ERROR] lines (e.g. Maven's own launcher failing) gives its last line."""
    output = "Error: JAVA_HOME is not defined correctly.\n  We cannot execute /x/bin/java\n"
    assert maven_failure_reason(output) == "We cannot execute /x/bin/java"


def test_requested_port_taken_is_refused_before_anything_starts(
    isolated_env: Path, taken_port: int
) -> None:
    """A taken --port is reported with the port and the option to change, even before Java is looked for."""
    with pytest.raises(PortInUseError) as info:
        LocalKafka(port=taken_port).start()
    message = str(info.value)
    assert f"port {taken_port} on 127.0.0.1 (client listener) is already in use" in message
    assert "--port" in message
    assert_one_line(message)


def test_requested_scram_port_taken_names_scram_port(isolated_env: Path, taken_port: int) -> None:
    """A taken SCRAM port names --scram-port."""
    from localkafka import ScramUser

    with pytest.raises(PortInUseError, match=r"SCRAM listener.*--scram-port"):
        LocalKafka(scram_users=[ScramUser("u", "p")], scram_port=taken_port).start()


def test_broker_exiting_during_start_shows_the_log_tail(
    fake_java: Callable[..., Path], fake_jars: Path, tmp_path: Path
) -> None:
    """A broker that exits while starting raises BrokerStartError with its exit code and the end of its log."""
    fake_java(broker="exit")
    run_dir = tmp_path / "run"
    with pytest.raises(BrokerStartError) as info:
        LocalKafka(run_dir=run_dir).start()
    first, *tail = str(info.value).splitlines()
    assert "the Kafka broker exited with code 1 during start-up" in first
    assert str(run_dir / "broker.log") in first
    assert any("fake broker refused to start" in line for line in tail)


def test_failed_format_shows_the_format_log(
    fake_java: Callable[..., Path], fake_jars: Path, tmp_path: Path
) -> None:
    """A failing storage format raises BrokerStartError naming the format step and its log."""
    fake_java(format_exit=3)
    with pytest.raises(
        BrokerStartError, match="formatting the KRaft log folder failed with exit code 3"
    ):
        LocalKafka(run_dir=tmp_path / "run").start()


def test_broker_not_ready_in_time_is_stopped(
    fake_java: Callable[..., Path], fake_jars: Path, tmp_path: Path
) -> None:
    """A broker that never logs readiness raises after the timeout and its process is gone."""
    fake_java(broker="hang")
    run_dir = tmp_path / "run"
    with pytest.raises(BrokerStartError, match="not ready within 1 s"):
        LocalKafka(run_dir=run_dir, ready_timeout_s=1.0).start()
    (pid,) = read_pids(run_dir)
    assert not is_running(pid)


def test_port_taken_after_picking_is_retried_then_reported(
    fake_java: Callable[..., Path], fake_jars: Path, tmp_path: Path
) -> None:
    """When the broker cannot bind picked ports, start() tries fresh ports 3 times, then raises PortInUseError."""
    fake_java(broker="bind")
    run_dir = tmp_path / "run"
    with pytest.raises(PortInUseError, match="could not bind its ports"):
        LocalKafka(run_dir=run_dir).start()
    assert len(read_pids(run_dir)) == 3
