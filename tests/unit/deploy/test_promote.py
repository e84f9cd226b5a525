"""The promotion Job's script swaps the `current` bundle link atomically, and only to a bundle that loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PROMOTE = "k8s/promote"


@pytest.fixture
def promote_script(rendered: Callable[[str], list[dict[str, Any]]]) -> str:
    """The shell script of the rendered promotion Job, exactly as the pod runs it."""
    job = next(o for o in rendered(PROMOTE) if o["kind"] == "Job")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-ec"]
    return command[2]


@pytest.fixture(scope="module")
def _releases(tmp_path_factory: pytest.TempPathFactory, write_tiny_bundle: Callable[..., Path]) -> Path:
    root = tmp_path_factory.mktemp("releases")
    write_tiny_bundle(root / "v1", name="v1", seed=1)  # a bundle copied in directly
    write_tiny_bundle(root / "train-abc" / "bundle", name="train-abc", seed=2)  # a training run
    return root


@pytest.fixture
def volume(tmp_path: Path, _releases: Path) -> Path:
    """A stand-in for the bundles PVC: bundle v1, run train-abc (bundle in bundle/), `current` -> releases/v1."""
    root = tmp_path / "bundles"
    shutil.copytree(_releases, root / "releases")
    os.symlink("releases/v1", root / "current")
    return root


def promote(script: str, volume: Path, release: str) -> subprocess.CompletedProcess[str]:
    """Run the Job's script against ``volume`` instead of /bundles, with this venv's python."""
    env = {**os.environ, "RELEASE": release, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        ["/bin/sh", "-ec", script.replace("/bundles", str(volume))],
        capture_output=True, text=True, env=env, check=False,
    )


def test_promote_points_current_at_a_training_run(promote_script: str, volume: Path) -> None:
    """Promoting run train-abc over v1 leaves `current` a relative link to its bundle/ and no temporary link."""
    proc = promote(promote_script, volume, "train-abc")
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(volume / "current") == "releases/train-abc/bundle"
    assert json.loads((volume / "current" / "manifest.json").read_text())["name"] == "train-abc"
    assert "current was: releases/v1" in proc.stdout and "verified train-abc" in proc.stdout
    assert not (volume / ".current.tmp").exists()


def test_promote_refuses_a_tampered_bundle(promote_script: str, volume: Path) -> None:
    """A release whose files fail their checksums is refused and `current` keeps pointing at the old one."""
    labels = volume / "releases" / "train-abc" / "bundle" / "labels.json"
    labels.write_text('["ham", "eggs"]\n')
    proc = promote(promote_script, volume, "train-abc")
    assert proc.returncode != 0
    assert "labels.json does not match its sha256" in proc.stderr
    assert os.readlink(volume / "current") == "releases/v1"


def test_promote_names_the_releases_when_given_an_unknown_one(promote_script: str, volume: Path) -> None:
    """An unknown RELEASE exits 2 and lists the releases that exist."""
    proc = promote(promote_script, volume, "train-CHANGE-ME")
    assert proc.returncode == 2
    assert "RELEASE=train-CHANGE-ME is not a bundle (or a run holding bundle/) in" in proc.stderr
    assert "v1" in proc.stderr and "train-abc" in proc.stderr
    assert os.readlink(volume / "current") == "releases/v1"


def test_promote_accepts_a_bundle_copied_in_directly(promote_script: str, volume: Path) -> None:
    """A bundle folder placed straight under releases/ (no bundle/ inside) is promoted as it is."""
    os.replace(volume / "current", volume / "old-link")  # start with no `current` at all
    proc = promote(promote_script, volume, "v1")
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(volume / "current") == "releases/v1"
    assert "current was: none" in proc.stdout
