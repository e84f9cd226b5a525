"""Fakes for the local broker's error paths: a scripted ``java``, a scripted ``mvn``, a jar cache.

The fakes are small Python scripts run by the real code through ``JAVA_HOME`` or ``PATH``, so the
paths under test (version probing, formatting, launching, waiting, stopping) run for real while
the "JVM" does what a test needs: refuse, exit during start-up, or never become ready.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from localkafka_fakes import write_script

from localkafka.jars import kafka_version


@pytest.fixture(autouse=True)
def kafka_logger_restored() -> Iterator[None]:
    """The CLI quiets the ``kafka`` logger of its process (no propagation, a null handler): put it
    back after each test, so that later tests in this process see the client's lines."""
    kafka = logging.getLogger("kafka")
    saved = (kafka.propagate, kafka.handlers[:])
    yield
    kafka.propagate, kafka.handlers[:] = saved


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No java, no mvn, no JAVA_HOME; the jar cache and broker state in ``tmp_path``."""
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("TAGSTREAM_KAFKA_JVM_OPTS", raising=False)
    monkeypatch.setenv("TAGSTREAM_KAFKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TAGSTREAM_KAFKA_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


@pytest.fixture
def fake_jars(isolated_env: Path) -> Path:
    """A jar cache that looks complete (the fake java never reads the jars)."""
    lib = isolated_env / "cache" / kafka_version() / "lib"
    lib.mkdir(parents=True)
    (lib / f"kafka_2.13-{kafka_version()}.jar").write_bytes(b"")
    return lib


@pytest.fixture
def fake_java(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install a scripted ``java`` as ``$JAVA_HOME/bin/java``.

    ``fake_java(version="17.0.2", format_exit=0, broker="exit")`` where ``broker`` is
    ``"exit"`` (prints a fatal error, exits 1), ``"bind"`` (fails to bind its port),
    ``"hang"`` (never gets ready) or ``"ready"`` (logs the readiness line, then waits; pair it
    with ``no_metadata_probe``). Every broker launch appends its pid to ``launches.txt`` and
    every format to ``formats.txt``, in the broker's run folder.
    """

    def install(version: str = "17.0.2", format_exit: int = 0, broker: str = "exit") -> Path:
        java_home = isolated_env / "jdk"
        write_script(
            java_home / "bin" / "java",
            f"""
            import os, sys, time
            args = sys.argv[1:]
            if "-version" in args:
                print('openjdk version "{version}" 2024-01-16', file=sys.stderr)
                sys.exit(0)
            if "kafka.tools.StorageTool" in args:
                print("Formatting (fake)")
                run_dir = os.path.dirname(args[args.index("--config") + 1])
                with open(os.path.join(run_dir, "formats.txt"), "a") as f:
                    f.write("formatted\\n")
                sys.exit({format_exit})
            with open("launches.txt", "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            if "{broker}" == "exit":
                print("[2024-01-01 00:00:00,000] ERROR Exiting Kafka due to fatal exception (kafka.Kafka$)")
                print("java.lang.IllegalStateException: fake broker refused to start")
                sys.exit(1)
            if "{broker}" == "bind":
                print("org.apache.kafka.common.KafkaException: Socket server failed to bind to "
                      "127.0.0.1:1: Address already in use.")
                sys.exit(1)
            if "{broker}" == "ready":
                print("[2024-01-01 00:00:00,000] INFO [KafkaRaftServer nodeId=1] Kafka Server started "
                      "(kafka.server.KafkaRaftServer)", flush=True)
            time.sleep(600)
            """,
        )
        monkeypatch.setenv("JAVA_HOME", str(java_home))
        return java_home

    return install


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test is listening on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def no_metadata_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness needs no metadata answer (the fake broker speaks no Kafka protocol)."""
    monkeypatch.setattr("localkafka.broker.answer_metadata", lambda *args, **kwargs: {})
