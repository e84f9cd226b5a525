"""Fixtures for the install test: uv, and a real tiny bundle (shared with tests/unit/deploy)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

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
    path = REPO_ROOT / "tests" / "unit" / "deploy" / "tiny_bundle.py"
    spec = importlib.util.spec_from_file_location("tagstream_tiny_bundle", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.write_tiny_bundle
