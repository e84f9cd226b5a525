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
    write_tiny_bundle(root / "v1", name="v1", seed=1)
    write_tiny_bundle(root / "v2", name="v2", seed=2)
    return root


@pytest.fixture
def volume(tmp_path: Path, _releases: Path) -> Path:
    """A stand-in for the bundles PVC: two good releases, v1 and v2, and `current` -> releases/v1."""
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


def test_promote_points_current_at_the_release(promote_script: str, volume: Path) -> None:
    """Promoting v2 over v1 leaves `current` a relative link to releases/v2 and no temporary link."""
    proc = promote(promote_script, volume, "v2")
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(volume / "current") == "releases/v2"
    assert json.loads((volume / "current" / "manifest.json").read_text())["name"] == "v2"
    assert "current was: releases/v1" in proc.stdout and "verified v2" in proc.stdout
    assert not (volume / ".current.tmp").exists()


def test_promote_refuses_a_tampered_bundle(promote_script: str, volume: Path) -> None:
    """A release whose files fail their checksums is refused and `current` keeps pointing at the old one."""
    labels = volume / "releases" / "v2" / "labels.json"
    labels.write_text('["ham", "eggs"]\n')
    proc = promote(promote_script, volume, "v2")
    assert proc.returncode != 0
    assert "labels.json does not match its sha256" in proc.stderr
    assert os.readlink(volume / "current") == "releases/v1"


def test_promote_names_the_releases_when_given_an_unknown_one(promote_script: str, volume: Path) -> None:
    """An unknown RELEASE exits 2 and lists the releases that exist."""
    proc = promote(promote_script, volume, "train-CHANGE-ME")
    assert proc.returncode == 2
    assert "RELEASE=train-CHANGE-ME is not a folder in" in proc.stderr
    assert "v1" in proc.stderr and "v2" in proc.stderr
    assert os.readlink(volume / "current") == "releases/v1"
