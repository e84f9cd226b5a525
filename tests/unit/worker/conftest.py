"""Fixtures for the worker's unit tests: tiny bundles written per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:  # tests/worker_support.py, shared with the integration tests
    sys.path.insert(0, _TESTS)

from worker_support import make_tiny_bundle  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random tiny bundle (3 labels, max_length 32) on disk."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=0)
