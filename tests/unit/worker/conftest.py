"""Fixtures for the worker's unit tests: tiny bundles written per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_support import make_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random tiny bundle (3 labels, max_length 32) on disk."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=0)
