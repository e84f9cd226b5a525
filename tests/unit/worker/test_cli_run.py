"""``tagstream-worker run``: what it sets up for every process of a worker before starting it."""

from __future__ import annotations

import argparse
import os

import pytest

from worker import cli
from worker.procs import plan, supervisor


@pytest.fixture
def pod_started(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """Runs ``_run`` up to the start of a pod of feeders, recording TOKENIZERS_PARALLELISM there."""
    seen: dict[str, str | None] = {}
    monkeypatch.setattr(cli, "_load", lambda args: object())
    monkeypatch.setattr(plan, "feeder_count", lambda settings: 2)

    def run_pod(settings: object, feeders: int) -> int:
        seen["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM")
        return 0

    monkeypatch.setattr(supervisor, "run_pod", run_pod)
    return seen


def test_a_worker_tokenizes_on_the_calling_thread_by_default(pod_started, monkeypatch):
    """HF tokenizers' thread pool is off for the worker and the processes it starts (they inherit the environment)."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "")  # recorded, so that what _run sets is undone after the test
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    assert cli._run(argparse.Namespace()) == 0
    assert pod_started["TOKENIZERS_PARALLELISM"] == "false"


def test_an_operators_tokenizers_parallelism_wins(pod_started, monkeypatch):
    """TOKENIZERS_PARALLELISM set by whoever starts the worker is left as it is."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    assert cli._run(argparse.Namespace()) == 0
    assert pod_started["TOKENIZERS_PARALLELISM"] == "true"
