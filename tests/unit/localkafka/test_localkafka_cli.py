"""`tagstream-worker kafka ...` turns every failure into one `error:` line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from worker.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["kafka", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fetch_without_maven_prints_one_error_line(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kafka fetch` with no mvn on PATH exits 1 and prints only `error: Maven (mvn) not found ...`."""
    code, _, err = run_cli(capsys, "fetch")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("error: Maven (mvn) not found on PATH")
    assert "Traceback" not in err


def test_up_without_java_prints_one_error_line(
    isolated_env: Path, fake_jars: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kafka up` with no Java exits 1 with one line saying to install a JDK 17+."""
    code, _, err = run_cli(capsys, "up", "--port", "0")
    assert code == 1
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: Java not found") and "JDK 17" in err


def test_up_on_a_taken_port_prints_one_error_line(
    isolated_env: Path, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kafka up --port N` with N taken exits 1 with one line naming the port and --port."""
    code, _, err = run_cli(capsys, "up", "--port", str(taken_port))
    assert code == 1
    assert err.strip().count("\n") == 0
    assert f"error: port {taken_port} on 127.0.0.1 (client listener) is already in use" in err
    assert "--port" in err


def test_up_with_a_password_storagetool_cannot_take_is_refused(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SCRAM password with a comma (which breaks StorageTool's -S syntax) is refused in one line."""
    code, _, err = run_cli(capsys, "up", "--scram", "--scram-password", "a,b")
    assert code == 1
    assert err.startswith("error: SCRAM password 'a,b' is not allowed") and err.count("\n") == 1


def test_up_when_the_broker_dies_shows_the_log_tail(
    fake_java: Callable[..., Path], fake_jars: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kafka up` whose broker exits during start exits 1: the error line, then the log tail."""
    fake_java(broker="exit")
    code, _, err = run_cli(capsys, "up", "--port", "0")
    first, *tail = err.splitlines()
    assert code == 1
    assert first.startswith("error: the Kafka broker exited with code 1 during start-up")
    assert any("fake broker refused to start" in line for line in tail)


def test_status_without_a_broker_exits_1(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kafka status` with nothing running says how to start one and exits 1."""
    code, out, _ = run_cli(capsys, "status")
    assert code == 1
    assert "no local broker is running" in out and "tagstream-worker kafka up" in out


def test_down_without_a_broker_is_a_no_op(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kafka down` with nothing recorded says so and exits 0."""
    code, out, _ = run_cli(capsys, "down")
    assert code == 0
    assert "nothing to stop" in out


def test_kafka_without_an_action_shows_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """`tagstream-worker kafka` alone is a usage error listing the actions."""
    with pytest.raises(SystemExit) as info:
        main(["kafka"])
    assert info.value.code == 2
    assert "{up,down,status,fetch}" in capsys.readouterr().err
