"""Fixtures for the deployment checks: the validator script, the pinned kustomize, renders."""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from worker_support import make_tiny_bundle

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO_ROOT / "deploy"
TARGETS = ("k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/training", "k8s/promote")


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script from deploy/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_deploy_script() -> Callable[[Path, str], ModuleType]:
    """``load_deploy_script(path, module_name)``: import a script from deploy/."""
    return load_script


@pytest.fixture(scope="session")
def validator() -> ModuleType:
    """deploy/validate.py, the checker `make deploy-check` runs."""
    return load_script(DEPLOY_DIR / "validate.py", "tagstream_deploy_validate")


@pytest.fixture(scope="session")
def write_tiny_bundle() -> Callable[..., Path]:
    """``write_tiny_bundle(out_dir, name=..., seed=...)``: export a real, tiny, untrained bundle."""
    return make_tiny_bundle


@pytest.fixture(scope="session")
def kustomize(validator: ModuleType) -> Path:
    """The pinned kustomize binary; fails (not skips) with the command that installs it."""
    try:
        return validator.find_kustomize()
    except validator.DeployCheckError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def _renders(validator: ModuleType, kustomize: Path) -> dict[str, list[dict[str, Any]]]:
    return {target: validator.render(DEPLOY_DIR / target, kustomize) for target in TARGETS}


@pytest.fixture
def rendered(_renders: dict[str, list[dict[str, Any]]]) -> Callable[[str], list[dict[str, Any]]]:
    """``rendered("k8s/overlays/gpu")``: a fresh deep copy of that kustomization's objects."""
    return lambda target: copy.deepcopy(_renders[target])

