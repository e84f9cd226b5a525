"""Fixtures for the worker's unit tests: tiny bundles written per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_support import make_tiny_bundle

from model.truncation import Truncation


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random tiny bundle (3 labels, max_length 32) on disk."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=0)


@pytest.fixture(scope="session")
def chunks_bundle(tmp_path_factory) -> Path:
    """A tiny single-label bundle that reads long texts as windows of 32 tokens (up to 4)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "chunks", seed=2,
                            truncation=Truncation(strategy="chunks", stride=20, max_windows=4))


@pytest.fixture(scope="session")
def tags_bundle(tmp_path_factory) -> Path:
    """A tiny multi-label bundle (sigmoids, thresholds 0.5/0.3/0.7) that reads windows, max-pooled."""
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "tags", seed=3, thresholds=[0.5, 0.3, 0.7],
                            head_scale=5.0, truncation=Truncation(strategy="chunks", stride=30, max_windows=3,
                                                                  pooling="max"))


@pytest.fixture(scope="session")
def head_tags_bundle(tmp_path_factory) -> Path:
    """A tiny multi-label bundle read by head (one window an input)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "head-tags", seed=4, thresholds=[0.5, 0.3, 0.7],
                            head_scale=5.0)
