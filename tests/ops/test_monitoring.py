"""The operator's monitoring kit stays valid: it only uses metrics the daemon really exports, counts
cluster-wide gauges once however many instances export them, imports into Grafana through the
Import dialog, and every alert links to the README section that says what to do."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stsync_daemon.metrics import Metrics
from tests.support import promtool

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
DASHBOARD = CONFIG / "grafana" / "stsync-dashboard.json"
ALERTS = CONFIG / "prometheus" / "alerts.yml"
DS_INPUT = "${DS_PROMETHEUS}"

# Read from the database and exported alike by every instance: `sum` would count them once per
# instance. Only max/min/avg may aggregate them.
CLUSTER_WIDE = (
    "stsync_credentials",
    "stsync_scheduled_credentials",
    "stsync_stale_credentials",
    "stsync_oldest_success_timestamp_seconds",
    "stsync_dead_letters",
    "stsync_last_success_timestamp_seconds",
)
AGGREGATIONS = {"sum", "max", "min", "avg", "count", "group", "topk", "bottomk", "quantile"}


def exported_names(*modes: Metrics) -> set[str]:
    """Every sample name the daemon exports (by default: per_credential on or off)."""
    names: set[str] = set()
    for metrics in modes or (Metrics(), Metrics(per_credential=True)):
        names |= set(re.findall(r"^# TYPE (\w+) ", metrics.render().decode(), flags=re.MULTILINE))
    for name in list(names):
        names |= {f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names | {"up"}


def used_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(stsync_\w+|up)\b(?=\s*\{)", expr)) | set(
        re.findall(r"\b(stsync_\w+)\b", expr)
    )


def enclosing_aggregation(expr: str, position: int) -> str | None:
    """The innermost aggregation operator whose parentheses hold `position`, if any."""
    depth = 0
    for i in range(position - 1, -1, -1):
        if expr[i] == ")":
            depth += 1
        elif expr[i] == "(":
            if depth:
                depth -= 1
                continue
            # `sum(`, `sum by (a) (`: the word before the parenthesis (or before its `by`).
            head = re.search(r"(\w+)\s*(?:(?:by|without)\s*\([^()]*\)\s*)?$", expr[:i])
            if head and head.group(1) in AGGREGATIONS:
                return head.group(1)
    return None


def assert_counted_once(expr: str) -> None:
    for name in CLUSTER_WIDE:
        for match in re.finditer(rf"\b{name}\b(?!_)", expr):
            found = enclosing_aggregation(expr, match.start())
            assert found in {"max", "min", "avg"}, (
                f"{name} is exported by every instance: aggregate it with max/min/avg, "
                f"not {found or 'nothing'}: {expr}"
            )


def test_the_aggregation_check_itself() -> None:
    for expr, expected in (
        ("sum(max by (a) (stsync_credentials))", "max"),
        ("sum by (a) (stsync_credentials)", "sum"),
        ("sum(rate(stsync_credentials[5m]))", "sum"),
        ("time() - stsync_credentials", None),
    ):
        assert enclosing_aggregation(expr, expr.index("stsync_")) == expected, expr
    with pytest.raises(AssertionError):
        assert_counted_once('sum(stsync_stale_credentials{job="x"})')
    assert_counted_once('sum(max by (environment) (stsync_stale_credentials{job="x"}))')


# -- Grafana ------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def targets(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for panel in board["panels"] for t in panel.get("targets", [])]


def test_dashboard_imports_with_a_data_source_input() -> None:
    """Grafana 10 and 11's Import dialog asks for the data source the `__inputs` name."""
    board = dashboard()
    assert board["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes stsyncd",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    requires = {(r["type"], r["id"]) for r in board["__requires"]}
    assert ("grafana", "grafana") in requires and ("datasource", "prometheus") in requires
    assert {("panel", p["type"]) for p in board["panels"]} <= requires
    grafana = next(r for r in board["__requires"] if r["id"] == "grafana")
    assert int(grafana["version"].split(".")[0]) <= 10
    # Grafana 10.0 knows schema 38; newer versions migrate it up, older ones would not.
    assert board["schemaVersion"] <= 38 and board["id"] is None and board["uid"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": DS_INPUT}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DS_INPUT}, panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": DS_INPUT}
    # No other data source is referenced anywhere (a left-over uid breaks the import).
    text = DASHBOARD.read_text()
    assert set(re.findall(r'"uid": "(\$\{?\w+\}?)"', text)) == {DS_INPUT}


def test_dashboard_has_instance_and_job_variables_every_query_uses() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"job", "instance"} <= set(variables)
    instance = variables["instance"]
    assert instance["multi"] and instance["includeAll"]
    assert "$job" in instance["query"]["query"]
    for target in targets(board):
        for selector in re.findall(r"\b(?:stsync_\w+|up)\{([^}]*)\}", target["expr"]):
            assert 'job="$job"' in selector and 'instance=~"$instance"' in selector, target


def test_dashboard_panels_query_only_exported_metrics() -> None:
    board = dashboard()
    known = exported_names()
    exprs = [t["expr"] for t in targets(board)]
    assert len(exprs) >= 10
    for expr in exprs:
        assert used_names(expr) <= known, expr
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for needed in (
        "runs",
        "failures by category",
        "records per second",
        "duration",
        "last success",
        "stale scheduled credentials",
        "status class",
        "rate-limit",
        "database",
    ):
        assert needed in titles


def test_dashboard_counts_cluster_wide_gauges_once() -> None:
    for target in targets(dashboard()):
        assert_counted_once(target["expr"])


def test_dashboard_works_without_per_credential_series() -> None:
    """Default mode: every panel but the per-credential table has a metric the default exports."""
    default = exported_names(Metrics())
    for panel in dashboard()["panels"]:
        names = set().union(*(used_names(t["expr"]) for t in panel["targets"]))
        if "stsync_last_success_timestamp_seconds" in names:
            assert "per_credential" in panel["description"], panel["title"]
            continue
        assert names <= default, panel["title"]


def test_readme_metrics_table_lists_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Metrics reference") :]
    table = table[: table.index("\n## ")]
    documented = set(re.findall(r"`(stsync_\w+)`", table))
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for metrics in (Metrics(), Metrics(per_credential=True))
        for family in metrics.registry.collect()
        if family.name.startswith("stsync_")
    }
    assert families == documented


# -- Prometheus ----------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_alert_rules_use_exported_metrics_and_count_cluster_gauges_once() -> None:
    found = rules()
    assert len(found) >= 7
    known = exported_names()
    for rule in found:
        assert used_names(rule["expr"]) <= known, rule["alert"]
        assert_counted_once(rule["expr"])
    names = {rule["alert"] for rule in found}
    assert {"StsyncDatabaseDown", "StsyncNoRecentSuccess", "StsyncCredentialInError"} <= names


def github_anchors(markdown: str) -> dict[str, str]:
    """Heading anchors as GitHub makes them, each with the text of its section."""
    anchors: dict[str, str] = {}
    sections = re.split(r"^(#{1,6} .+)$", markdown, flags=re.MULTILINE)
    for heading, body in zip(sections[1::2], sections[2::2], strict=True):
        title = heading.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        anchors[slug] = body
    return anchors


def test_every_alert_links_to_a_readme_section_that_says_what_to_do() -> None:
    anchors = github_anchors((ROOT / "README.md").read_text())
    for rule in rules():
        url = rule["annotations"].get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url"
        assert "://" not in url, f"{rule['alert']}: runbook_url must not point at another host"
        path, _, anchor = url.partition("#")
        assert path == "README.md", url
        assert anchor == f"alert-{rule['alert'].lower()}", url
        assert anchor in anchors, f"README has no section #{anchor}"
        body = anchors[anchor].strip()
        assert len(body) > 80 and "`" in body, f"#{anchor} does not say what to do: {body!r}"


def test_promtool_checks_and_unit_tests_pass() -> None:
    tool = promtool()
    folder = CONFIG / "prometheus"
    check = subprocess.run(
        [tool, "check", "rules", "alerts.yml"], cwd=folder, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [tool, "test", "rules", "alerts_test.yml"], cwd=folder, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr
    # One instance and three: the cluster cases are there.
    names = [t["name"] for t in yaml.safe_load((folder / "alerts_test.yml").read_text())["tests"]]
    assert any(n.startswith("one instance") for n in names)
    assert any(n.startswith("three instances") for n in names)
