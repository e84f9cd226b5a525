"""Fixtures for the install test: uv, and a real tiny bundle (tests/worker_support.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from worker_support import make_tiny_bundle

REPO_ROOT = Path(__file__).resolve().parents[3]
# The uv the Makefile installs (UV_VERSION there); $UV overrides.
UV_DEFAULT = Path.home() / ".cache/tagstream/tools/uv-0.13.9/bin/uv"


@pytest.fixture(scope="session")
def uv() -> Path:
    """The uv binary; fails with the command that installs it."""
    path = Path(os.environ.get("UV", UV_DEFAULT))
    if not path.is_file():
        pytest.fail(f"uv not found at {path}: run `make install` (or set UV=/path/to/uv)")
    return path


@pytest.fixture(scope="session")
def write_tiny_bundle() -> Callable[..., Path]:
    """``write_tiny_bundle(out_dir, name=..., seed=...)``: export a real, tiny, untrained bundle."""
    return make_tiny_bundle
