"""The settings table in deploy/README.md and the Docker Compose files agree with the worker's settings."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO_ROOT / "deploy"


def readme_settings() -> set[str]:
    """The environment variables listed in deploy/README.md's "Settings" table."""
    text = (DEPLOY_DIR / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`TAGSTREAM_" in line]
    return {re.search(r"`(TAGSTREAM_[A-Z_]+)`", row.split("|")[2]).group(1) for row in rows}


def test_readme_documents_every_setting(validator: ModuleType) -> None:
    """deploy/README.md's table lists exactly the settings the validator accepts."""
    assert readme_settings() == set(validator.SETTINGS_ENV)


def test_validator_knows_the_worker_settings(validator: ModuleType) -> None:
    """Every field of worker/settings.py has its TAGSTREAM_ variable in the validator's list, and no other name is there."""
    settings_module = pytest.importorskip("worker.settings", reason="worker/settings.py lands with branch `worker`")
    from pydantic_settings import BaseSettings

    classes = [
        cls for cls in vars(settings_module).values()
        if isinstance(cls, type) and issubclass(cls, BaseSettings) and cls is not BaseSettings
    ]
    assert classes, "worker.settings defines no pydantic-settings class"
    settings_cls = classes[0]
    prefix = settings_cls.model_config.get("env_prefix", "")
    fields = {
        (field.validation_alias if isinstance(field.validation_alias, str) else f"{prefix}{name}").upper()
        for name, field in settings_cls.model_fields.items()
    }
    assert fields == set(validator.SETTINGS_ENV) - {"TAGSTREAM_CONFIG_FILE"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())


def test_compose_worker_is_hardened_like_the_pods(compose: dict, validator: ModuleType) -> None:
    """The Compose worker is non-root, read-only, capability-free, with a writable /tmp and the bundles read-only."""
    worker = compose["services"]["worker"]
    assert worker["user"] == "10001:10001"
    assert worker["read_only"] is True and worker["tmpfs"] == ["/tmp"]
    assert worker["cap_drop"] == ["ALL"] and "no-new-privileges:true" in worker["security_opt"]
    assert any(v.endswith(":/bundles:ro") for v in worker["volumes"])
    assert worker["environment"]["TAGSTREAM_BUNDLE_PATH"].startswith("/bundles/")
    # The model-call journal outlives a restart: a named volume, not the tmpfs.
    state = worker["environment"]["TAGSTREAM_STATE_DIR"]
    assert f"worker-state:{state}" in worker["volumes"] and "worker-state" in compose["volumes"]
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert grace >= validator.DEFAULT_DRAIN_TIMEOUT_S + validator.GRACE_MARGIN_S


def test_compose_uses_only_known_settings_and_creates_its_topics(compose: dict, validator: ModuleType) -> None:
    """The Compose worker sets only real settings, and the topics service creates its input, output and dead-letter topics."""
    env = compose["services"]["worker"]["environment"]
    assert set(env) <= validator.SETTINGS_ENV
    script = compose["services"]["topics"]["command"][0]
    created = set(re.search(r"for topic in ([^;]+);", script).group(1).split())
    topic = env["TAGSTREAM_INPUT_TOPICS"]
    assert {topic, env["TAGSTREAM_OUTPUT_TOPIC"].format(topic=topic), env["TAGSTREAM_DLQ_TOPIC"].format(topic=topic)} == created
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:4.")


def test_compose_gpu_override_requests_a_gpu() -> None:
    """The GPU override builds the gpu flavour, reserves one NVIDIA GPU and sets TAGSTREAM_DEVICE=cuda."""
    worker = yaml.safe_load((DEPLOY_DIR / "docker-compose.gpu.yml").read_text())["services"]["worker"]
    assert worker["build"]["args"]["FLAVOR"] == "gpu"
    assert worker["environment"]["TAGSTREAM_DEVICE"] == "cuda"
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]

