"""Fixtures for the worker's integration tests: tiny bundles, event producers, result readers,
and in-process workers that are always stopped at the end of the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_support import make_tiny_bundle

from worker.app import Worker
from worker.settings import load_settings


@pytest.fixture
def tiny_bundle(tmp_path) -> Path:
    """A random tiny bundle of this test's own (tests may replace it in place)."""
    return make_tiny_bundle(tmp_path / "bundle", seed=0)


@pytest.fixture
def start_worker(kafka_bootstrap: str, new_group: Callable[..., str]) -> Iterator[Callable[..., Worker]]:
    """Factory: ``start_worker(topic, bundle, **settings) -> Worker``, started in this process."""
    workers: list[Worker] = []
    group = new_group()

    def start(topic: str, bundle: Path, **overrides: Any) -> Worker:
        settings = load_settings(
            **{
                "bootstrap_servers": kafka_bootstrap, "input_topics": [topic], "bundle_path": bundle,
                "group_id": group, "metrics_port": 0, "max_wait_ms": 10, "commit_interval_ms": 200,
                "drain_timeout_s": 15, "reload_interval_s": 0, **overrides,
            }
        )
        worker = Worker(settings)
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()
    for worker in workers:
        worker.wait(timeout=30)

