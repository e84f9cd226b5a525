"""Alert rules under Prometheus's own promtool (check and unit tests), and the Grafana dashboard."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import yaml

DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy"


@pytest.fixture(scope="module")
def monitoring(load_deploy_script: Callable[[Path, str], ModuleType]) -> ModuleType:
    """deploy/monitoring.py, the checker `make deploy-check` runs after validate.py."""
    return load_deploy_script(DEPLOY_DIR / "monitoring.py", "tagstream_deploy_monitoring")


@pytest.fixture(scope="module")
def promtool(monitoring: ModuleType) -> Path:
    """The pinned promtool; fails (not skips) with the command that builds it."""
    try:
        return monitoring.find_promtool()
    except monitoring.ToolMissing as exc:
        pytest.fail(str(exc))


def test_promtool_is_the_pinned_version(monitoring: ModuleType, promtool: Path) -> None:
    """The promtool the tests use is the Prometheus version the Makefile pins."""
    assert monitoring.promtool_version(promtool) == monitoring.PROMETHEUS_VERSION
    makefile = (DEPLOY_DIR.parent / "Makefile").read_text()
    assert f"PROMETHEUS_VERSION := {monitoring.PROMETHEUS_VERSION}" in makefile


def test_rules_pass_promtool_check_and_their_unit_tests(monitoring: ModuleType, promtool: Path) -> None:
    """`promtool check rules` and `promtool test rules` pass on the PrometheusRule's spec; every alert is tested and documented."""
    assert monitoring.check_rules(promtool) == []


def test_every_listed_alert_exists(monitoring: ModuleType) -> None:
    """The PrometheusRule has the alerts the operations docs promise, each with a runbook section."""
    names = {rule["alert"] for rule in monitoring.alerts(monitoring.rule_groups())}
    assert names == {
        "TagstreamConsumerLagGrowing", "TagstreamStalled", "TagstreamDeadLetterRateHigh", "TagstreamWorkerNotReady",
        "TagstreamBundleReloadRefused", "TagstreamLatencyHigh", "TagstreamNoWorkerUp", "TagstreamInputsDeletedUnread",
        "TagstreamReadingOldInput",
    }


def edited_copy(src: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert old in text, f"{old!r} not in {src.name}"
    out = tmp_path / src.name
    out.write_text(text.replace(old, new, 1))
    return out


def test_a_wrong_expectation_fails_the_rule_unit_tests(monitoring: ModuleType, promtool: Path, tmp_path: Path) -> None:
    """An alert test expecting a different rendered value fails under promtool, which shows what it got."""
    tests = edited_copy(monitoring.RULE_TESTS, tmp_path, "(3k records)", "(2k records)")
    problems = "\n".join(monitoring.check_rules(promtool, rule_tests=tests))
    assert "promtool test rules" in problems and "(3k records)" in problems


def test_a_rule_change_that_stops_an_alert_firing_is_caught(monitoring: ModuleType, promtool: Path, tmp_path: Path) -> None:
    """Raising the dead-letter threshold past the tested 10% makes the firing case fail."""
    manifest = edited_copy(monitoring.RULE_MANIFEST, tmp_path, "> 0.05", "> 0.5")
    problems = "\n".join(monitoring.check_rules(promtool, manifest=manifest))
    assert "TagstreamDeadLetterRateHigh" in problems and "got:[]" in problems.replace(" ", "").replace("\n", "")


def test_invalid_promql_in_a_rule_is_caught(monitoring: ModuleType, promtool: Path, tmp_path: Path) -> None:
    """A syntax error in an alert's expression fails `promtool check rules`."""
    manifest = edited_copy(monitoring.RULE_MANIFEST, tmp_path, "expr: tagstream_ready == 0", "expr: tagstream_ready == == 0")
    problems = "\n".join(monitoring.check_rules(promtool, manifest=manifest))
    assert "promtool check rules" in problems and "parse error" in problems


def test_missing_runbook_section_is_caught(monitoring: ModuleType, tmp_path: Path) -> None:
    """An alert whose runbook anchor has no heading in deploy/README.md is reported with the fix."""
    groups = monitoring.rule_groups()
    runbook = tmp_path / "README.md"
    runbook.write_text(monitoring.RUNBOOK.read_text().replace("### TagstreamStalled", "### Stalled workers"))
    problems = monitoring.check_alert_metadata(groups, runbook)
    assert any("TagstreamStalled" in p and "add a '### TagstreamStalled' section" in p for p in problems)


def test_rule_file_for_promtool_is_the_prometheusrule_spec(monitoring: ModuleType, tmp_path: Path) -> None:
    """--write-rules writes exactly the PrometheusRule's groups (one source of truth)."""
    path = monitoring.write_rules(tmp_path)
    manifest = yaml.safe_load(monitoring.RULE_MANIFEST.read_text())
    assert yaml.safe_load(path.read_text()) == {"groups": manifest["spec"]["groups"]}


def test_dashboard_is_importable_and_its_queries_are_valid_promql(monitoring: ModuleType, promtool: Path) -> None:
    """The dashboard has its datasource, namespace and job variables, every panel on them, and PromQL that Prometheus parses."""
    dash = monitoring.dashboard()
    assert monitoring.check_dashboard_structure(dash) == []
    assert monitoring.check_dashboard_promql(dash, promtool) == []
    titles = {p["title"] for p in monitoring.panels(dash)}
    for wanted in ("Events in / out per second", "Dead letters by reason", "Consumer lag per partition",
                   "Consumer lag per topic", "Consumer lag in time", "End-to-end latency", "Batch size", "Padded tokens per batch",
                   "Inference seconds per batch", "In-flight events per worker", "Paused per worker",
                   "Model serving", "Bundle reloads", "Ready workers"):
        assert wanted in titles


def test_invalid_dashboard_query_names_its_panel(monitoring: ModuleType, promtool: Path) -> None:
    """A broken query is reported under its panel's title."""
    dash = copy.deepcopy(monitoring.dashboard())
    panel = next(p for p in monitoring.panels(dash) if p["title"] == "Batch size")
    panel["targets"][0]["expr"] = "sum(rate(tagstream_batch_size_sum[5m]"
    problems = "\n".join(monitoring.check_dashboard_promql(dash, promtool))
    assert "panel 'Batch size' A" in problems


def test_every_metric_read_is_one_the_worker_defines(monitoring: ModuleType) -> None:
    """Each tagstream_* name in the rules and dashboard is a sample name of the worker's Metrics (with _total, _bucket...)."""
    exposed = monitoring.exposed_metric_names()
    assert {"tagstream_events_in_total", "tagstream_end_to_end_latency_seconds_bucket", "tagstream_ready"} <= exposed
    assert monitoring.check_metric_names(exposed) == []
    dash = copy.deepcopy(monitoring.dashboard())
    next(monitoring.panels(dash))["targets"][0]["expr"] = 'sum(tagstream_readiness{namespace=~"$namespace", job=~"$job"})'
    assert any("tagstream_readiness" in p for p in monitoring.check_metric_names(exposed, dash=dash))


def test_readme_lists_every_panel_with_its_metrics(monitoring: ModuleType) -> None:
    """The README's dashboard table has a row per panel naming every metric the panel reads."""
    assert monitoring.check_readme_table(monitoring.dashboard()) == []


def test_overlays_ship_the_dashboard_file_as_a_sidecar_configmap(monitoring: ModuleType) -> None:
    """The cpu and gpu overlays render ConfigMap tagstream-grafana-dashboard, labelled for the sidecar, holding tagstream.json as is."""
    assert monitoring.check_dashboard_configmap() == []


def test_monitoring_cli_passes_the_shipped_files(promtool: Path) -> None:
    """`deploy/monitoring.py` (what make deploy-check runs) exits 0 and summarises what it checked."""
    proc = subprocess.run([sys.executable, str(DEPLOY_DIR / "monitoring.py"), "--promtool", str(promtool)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "9 alerts" in proc.stderr and ": ok" in proc.stderr
