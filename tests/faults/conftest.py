"""The fault suite (``-m faults``): the worker against crashes, broker faults, scaling and hostile
input, each test adding one row to a report.

``make test`` runs reduced sizes; ``make faults`` (``TAGSTREAM_FAULTS=full``) runs the full ones
and rewrites ``bench/results/faults.md``. Sizes are in ``harness.Sizes``.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FULL, LIVE_WORKERS, Report

# TAGSTREAM_FAULTS_REPORT writes the full run's report elsewhere (e.g. one client's run at a time).
REPORT_PATH = Path(os.environ.get("TAGSTREAM_FAULTS_REPORT")
                   or Path(__file__).resolve().parents[2] / "bench" / "results" / "faults.md")
_report = Report()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """A test stopped by pytest-timeout (or an error) must not leave its worker processes running."""
    yield
    while LIVE_WORKERS:
        LIVE_WORKERS.pop().kill()


@pytest.fixture(scope="session")
def fault_report() -> Iterator[Report]:
    """The session's fault report; written out at the end (the full run rewrites faults.md)."""
    yield _report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _report.rows:
        return
    title = "Fault suite" if FULL else "Fault suite (reduced sizes, as in make test)"
    text = _report.markdown(title)
    if FULL:
        REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
        REPORT_PATH.write_text(_header() + text.split("\n", 2)[2])
        terminalreporter.write_line(f"fault report written to {REPORT_PATH}")
    for line in text.splitlines():
        terminalreporter.write_line(line)


def _header() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "# Fault suite\n\n"
        f"`make faults` on {when}, commit {commit or '?'}, {cpu} ({platform.machine()}),"
        " a real local Kafka broker, the worker as separate processes with a tiny bundle.\n"
        "Every input is accounted for by its (partition, offset): *missing* inputs have no result and no dead"
        " letter; *duplicates* are outcomes beyond the first. Exactly-once rows read with"
        " `isolation_level=read_committed`.\n\n"
    )
