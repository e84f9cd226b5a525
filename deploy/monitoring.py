"""Check tagstream's monitoring offline: alert rules, their unit tests, the Grafana dashboard.

    python deploy/monitoring.py                       # every check below (`make deploy-check` runs it)
    python deploy/monitoring.py --write-rules DIR     # DIR/tagstream-rules.yaml, a plain Prometheus rule file

The alert rules live in one place, the PrometheusRule ``deploy/k8s/base/prometheusrule.yaml``;
its ``spec`` is a Prometheus rule file, extracted here for Prometheus's own tool:
  1. ``promtool check rules`` on the extracted file;
  2. ``promtool test rules deploy/prometheus/tagstream-alerts.test.yaml``: input series and the
     alerts expected to fire, or not, at given times (the test file names the extracted file);
  3. every alert has a severity, a summary, a description and a runbook_url whose anchor is a
     heading of deploy/README.md;
  4. the dashboard ``deploy/grafana/tagstream.json``: a datasource variable, namespace and job
     variables, every panel on the datasource variable, and every query valid PromQL (Grafana's
     variables filled in, then parsed by ``promtool check rules`` as recording rules);
  5. every ``tagstream_*`` metric the rules and the dashboard read is one the worker exposes
     (``worker.telemetry.Metrics``: counters as ``_total``, histograms as ``_bucket``/``_sum``/
     ``_count``); the integration test tests/integration/worker/test_dashboard_metrics.py checks
     the same names against a real worker's /metrics;
  6. the README's dashboard table lists every panel with the metrics it reads;
  7. the cpu and gpu overlays render the dashboard as a ConfigMap labelled grafana_dashboard: "1"
     whose data is tagstream.json byte for byte.
Prints each problem and exits 1 if any (2 when a tool is missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_DIR.parent
RULE_MANIFEST = DEPLOY_DIR / "k8s/base/prometheusrule.yaml"
RULE_TESTS = DEPLOY_DIR / "prometheus/tagstream-alerts.test.yaml"
RULES_FILE_NAME = "tagstream-rules.yaml"  # the name the rule tests give in rule_files
DASHBOARD = DEPLOY_DIR / "grafana/tagstream.json"
DASHBOARD_CONFIGMAP = "tagstream-grafana-dashboard"
RUNBOOK = DEPLOY_DIR / "README.md"
RUNBOOK_URL_PATH = "deploy/README.md"  # runbook_url is this path in the repository, then #anchor
README = REPO_ROOT / "README.md"
OVERLAYS = ("k8s/overlays/cpu", "k8s/overlays/gpu")

# The promtool the Makefile builds (Prometheus 3.x is module version v0.3XX.Y on the Go proxy).
PROMETHEUS_VERSION = "3.16.0"
PROMTOOL_DEFAULT = Path.home() / ".cache/tagstream/tools" / f"promtool-{PROMETHEUS_VERSION}" / "promtool"

METRIC = re.compile(r"\btagstream_[a-z0-9_]+")
# Grafana's variables, replaced by values of the right kind so that Prometheus can parse a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
    "${datasource}": "prometheus", "$namespace": "tagstream", "$job": ".*",
}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")


class ToolMissing(Exception):
    """promtool or kustomize is not where the Makefile puts it."""


# --- the tools ---------------------------------------------------------------------------------


def find_promtool(explicit: str | Path | None = None) -> Path:
    """``explicit``, else $PROMTOOL, else the one `make deploy-tools` builds."""
    candidate = Path(explicit or os.environ.get("PROMTOOL") or PROMTOOL_DEFAULT)
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        raise ToolMissing(
            f"promtool {PROMETHEUS_VERSION} not found at {candidate}: run `make deploy-tools` (builds it with Go"
            " into ~/.cache/tagstream/tools), or set PROMTOOL=/path/to/promtool"
        )
    return candidate


def promtool_version(promtool: Path) -> str:
    out = subprocess.run([str(promtool), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def run_promtool(promtool: Path, *args: str, cwd: Path | None = None) -> tuple[bool, str]:
    proc = subprocess.run([str(promtool), *args], capture_output=True, text=True, check=False, cwd=cwd)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


@cache
def _validate_module() -> ModuleType:
    """deploy/validate.py (for kustomize), imported by path: deploy/ is not a package."""
    spec = importlib.util.spec_from_file_location("tagstream_deploy_validate", DEPLOY_DIR / "validate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- rules -------------------------------------------------------------------------------------


def rule_groups(manifest: Path = RULE_MANIFEST) -> list[dict[str, Any]]:
    """The rule groups of the PrometheusRule: a Prometheus rule file's ``groups``."""
    obj = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    if obj.get("kind") != "PrometheusRule":
        raise ValueError(f"{manifest} is a {obj.get('kind')}, not a PrometheusRule")
    return obj["spec"]["groups"]


def write_rules(directory: Path, manifest: Path = RULE_MANIFEST) -> Path:
    """Write the rule file promtool and a plain Prometheus read; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RULES_FILE_NAME
    header = f"# Generated from {manifest.name} (deploy/k8s/base/) by deploy/monitoring.py: edit that file.\n"
    path.write_text(header + yaml.safe_dump({"groups": rule_groups(manifest)}, sort_keys=False), encoding="utf-8")
    return path


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group.get("rules") or [] if "alert" in rule]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces as -)."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def check_alert_metadata(groups: list[dict[str, Any]], runbook: Path = RUNBOOK) -> list[str]:
    """Severity, summary, description, and a runbook_url whose anchor exists in the runbook."""
    problems = []
    anchors = heading_anchors(runbook.read_text(encoding="utf-8"))
    for rule in alerts(groups):
        name = rule["alert"]
        if (rule.get("labels") or {}).get("severity") not in ("warning", "critical"):
            problems.append(f"alert {name}: labels.severity must be warning or critical")
        annotations = rule.get("annotations") or {}
        for key in REQUIRED_ANNOTATIONS:
            if not str(annotations.get(key, "")).strip():
                problems.append(f"alert {name}: annotations.{key} is missing")
        url = str(annotations.get("runbook_url", ""))
        path, _, anchor = url.partition("#")
        if path != RUNBOOK_URL_PATH or anchor not in anchors:
            problems.append(
                f"alert {name}: runbook_url {url!r} must be {RUNBOOK_URL_PATH}#<anchor of a heading>"
                f" (add a '### {name}' section there)"
            )
    return problems


def check_rules(promtool: Path, manifest: Path = RULE_MANIFEST, rule_tests: Path = RULE_TESTS) -> list[str]:
    """promtool check rules, promtool test rules, and the alerts' metadata."""
    problems = []
    groups = rule_groups(manifest)
    with tempfile.TemporaryDirectory(prefix="tagstream-rules-") as tmp:
        rules = write_rules(Path(tmp), manifest)
        ok, out = run_promtool(promtool, "check", "rules", str(rules))
        if not ok:
            problems.append(f"promtool check rules {manifest.name} (its spec):\n{out}")
        # The test file names the rule file relative to itself: put a copy beside the extracted one.
        tests = Path(tmp) / rule_tests.name
        shutil.copyfile(rule_tests, tests)
        ok, out = run_promtool(promtool, "test", "rules", tests.name, cwd=Path(tmp))
        if not ok:
            problems.append(f"promtool test rules {rule_tests.name}:\n{out}")
    problems += check_alert_metadata(groups)
    tested = set(re.findall(r"alertname:\s*(\S+)", rule_tests.read_text(encoding="utf-8")))
    for rule in alerts(groups):
        if rule["alert"] not in tested:
            problems.append(f"alert {rule['alert']}: no test in {rule_tests.name}")
    return problems


# --- dashboard ---------------------------------------------------------------------------------


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    for panel in dash.get("panels") or []:
        if panel.get("type") == "row":
            yield from panel.get("panels") or []
        else:
            yield panel


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for panel in panels(dash):
        for target in panel.get("targets") or []:
            found.append((f"panel {panel.get('title')!r} {target.get('refId')}", str(target.get("expr", ""))))
    for var in (dash.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            query = var.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            found.append((f"variable {var.get('name')}", str(text)))
    return found


def promql_of_variable_query(text: str) -> str:
    """``label_values(expr, label)`` -> ``expr`` (the PromQL inside Grafana's helper)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text, re.S)
    return match.group(1) if match else text


def fill_variables(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def check_dashboard_structure(dash: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            problems.append(f"dashboard: no {key!r}")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: needs a variable `datasource` of type datasource (query: prometheus)")
    for name in ("namespace", "job"):
        var = variables.get(name)
        if not var or var.get("type") != "query" or (var.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"dashboard: needs a query variable `{name}` on ${{datasource}}")
    ids = [p.get("id") for p in dash.get("panels") or []]
    if len(ids) != len(set(ids)):
        problems.append("dashboard: panel ids are not unique")
    titles = [p.get("title") for p in panels(dash)]
    if len(titles) != len(set(titles)):
        problems.append("dashboard: panel titles are not unique (the README's table names panels by title)")
    for panel in panels(dash):
        title = panel.get("title")
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"dashboard panel {title!r}: datasource must be ${{datasource}}")
        targets = panel.get("targets") or []
        if not targets or not all(str(t.get("expr", "")).strip() for t in targets):
            problems.append(f"dashboard panel {title!r}: every target needs a PromQL expr")
        for target in targets:
            expr = str(target.get("expr", ""))
            if "tagstream_" in expr and not ('namespace=~"$namespace"' in expr and 'job=~"$job"' in expr):
                problems.append(f"dashboard panel {title!r}: {expr!r} does not filter on $namespace and $job")
        if not str(panel.get("description", "")).strip():
            problems.append(f"dashboard panel {title!r}: no description (say what it shows and the metric)")
    return problems


def check_dashboard_promql(dash: dict[str, Any], promtool: Path) -> list[str]:
    """Every query parses as PromQL: written as recording rules for `promtool check rules`."""
    queries = dashboard_queries(dash)
    rules = [
        {"record": f"dashboard:query:{i}", "expr": fill_variables(promql_of_variable_query(expr))}
        for i, (_, expr) in enumerate(queries)
    ]
    with tempfile.TemporaryDirectory(prefix="tagstream-dashboard-") as tmp:
        path = Path(tmp) / "dashboard-queries.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
        ok, out = run_promtool(promtool, "check", "rules", str(path))
    if ok:
        return []
    # Name the panel behind each failing rule.
    named = re.sub(r"dashboard:query:(\d+)", lambda m: queries[int(m.group(1))][0], out)
    return [f"dashboard queries that are not valid PromQL:\n{named}"]


def check_readme_table(dash: dict[str, Any], readme: Path = README) -> list[str]:
    """The README's dashboard table: one row per panel, naming the metrics the panel reads."""
    rows: dict[str, str] = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*(.+?)\s*\|\s*(.*?)\s*\|", line)
        if match:
            rows[match.group(1).strip("* ")] = match.group(2)
    problems = []
    for panel in panels(dash):
        title = panel.get("title", "")
        reads = {m.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                 for t in panel.get("targets") or [] for m in METRIC.findall(str(t.get("expr", "")))}
        if title not in rows:
            problems.append(f"README.md: the dashboard table has no row for panel {title!r}")
            continue
        missing = sorted(m for m in reads if m not in rows[title])
        if missing:
            problems.append(f"README.md: the row of panel {title!r} does not name {', '.join(missing)}")
    return problems


# --- metric names ------------------------------------------------------------------------------


def referenced_metrics(
    groups: list[dict[str, Any]] | None = None, dash: dict[str, Any] | None = None
) -> dict[str, set[str]]:
    """Every tagstream_* name in the rules and the dashboard (default: the shipped ones) -> where."""
    where: dict[str, set[str]] = {}
    for rule in (r for g in (groups if groups is not None else rule_groups()) for r in g.get("rules") or []):
        for name in METRIC.findall(str(rule["expr"])):
            where.setdefault(name, set()).add(f"rule {rule.get('alert') or rule.get('record')}")
    for place, expr in dashboard_queries(dash if dash is not None else dashboard()):
        for name in METRIC.findall(expr):
            where.setdefault(name, set()).add(f"dashboard {place}")
    return where


def exposed_metric_names() -> set[str]:
    """The sample names a worker's /metrics can carry, from the worker's own Metrics class."""
    sys.path.insert(0, str(REPO_ROOT))
    from worker.telemetry import Metrics

    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def check_metric_names(
    exposed: set[str], groups: list[dict[str, Any]] | None = None, dash: dict[str, Any] | None = None
) -> list[str]:
    return [
        f"{name} (read by {', '.join(sorted(places))}) is not a metric the worker exposes"
        for name, places in sorted(referenced_metrics(groups, dash).items())
        if name not in exposed
    ]


# --- the dashboard ConfigMap -------------------------------------------------------------------


def check_dashboard_configmap() -> list[str]:
    validate = _validate_module()
    kustomize = validate.find_kustomize()
    text = DASHBOARD.read_text(encoding="utf-8")
    problems = []
    for overlay in OVERLAYS:
        objects = validate.render(DEPLOY_DIR / overlay, kustomize)
        cm = validate.named(objects, "ConfigMap", DASHBOARD_CONFIGMAP)
        if cm is None:
            problems.append(f"{overlay}: no ConfigMap {DASHBOARD_CONFIGMAP} (components: [../../../grafana])")
            continue
        if (cm["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
            problems.append(f"{overlay}: ConfigMap {DASHBOARD_CONFIGMAP} lacks the label grafana_dashboard: \"1\"")
        if (cm.get("data") or {}).get(DASHBOARD.name) != text:
            problems.append(f"{overlay}: ConfigMap {DASHBOARD_CONFIGMAP} does not hold {DASHBOARD.name} as it is")
    return problems


# --- main --------------------------------------------------------------------------------------


def run_all(promtool: Path) -> list[str]:
    dash = dashboard()
    return (
        check_rules(promtool)
        + check_dashboard_structure(dash)
        + check_dashboard_promql(dash, promtool)
        + check_readme_table(dash)
        + check_metric_names(exposed_metric_names())
        + check_dashboard_configmap()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check tagstream's alert rules (promtool), their tests and the Grafana dashboard.")
    parser.add_argument("--promtool", help=f"promtool binary (default: $PROMTOOL or {PROMTOOL_DEFAULT})")
    parser.add_argument("--write-rules", metavar="DIR", type=Path,
                        help=f"only write DIR/{RULES_FILE_NAME} (the rule file of the PrometheusRule) and exit")
    args = parser.parse_args(argv)
    if args.write_rules:
        print(write_rules(args.write_rules))
        return 0
    try:
        promtool = find_promtool(args.promtool)
        found = promtool_version(promtool)
        if found != PROMETHEUS_VERSION:
            print(f"warning: promtool {found} at {promtool}; the pinned version is {PROMETHEUS_VERSION}", file=sys.stderr)
        problems = run_all(promtool)
    except (ToolMissing, _validate_module().DeployCheckError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    n_alerts = len(alerts(rule_groups()))
    n_queries = len(dashboard_queries(dashboard()))
    status = f"{len(problems)} problem(s)" if problems else "ok"
    print(f"monitoring: {n_alerts} alerts (promtool {found}: check + unit tests), {n_queries} dashboard queries,"
          f" {len(referenced_metrics())} tagstream metrics referenced: {status}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
