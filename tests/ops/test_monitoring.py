"""The operator's monitoring kit stays valid and only uses metrics the daemon really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from stsync_daemon.metrics import Metrics
from tests.support import promtool

CONFIG = Path(__file__).resolve().parents[2] / "config"


def exported_names() -> set[str]:
    text = Metrics().render().decode()
    names = set(re.findall(r"^# TYPE (\w+) ", text, flags=re.MULTILINE))
    for name in list(names):
        names |= {f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names | {"up"}


def used_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(stsync_\w+|up)\b(?=\s*[{\[)]|\s*$|\s*[>=<!])", expr)) | set(
        re.findall(r"\b(stsync_\w+)\b", expr)
    )


def test_dashboard_panels_query_only_exported_metrics() -> None:
    dashboard = json.loads((CONFIG / "grafana" / "stsync-dashboard.json").read_text())
    known = exported_names()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert used_names(expr) <= known, expr
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in (
        "runs",
        "failures by category",
        "records per second",
        "duration",
        "last success",
        "status class",
        "rate-limit",
    ):
        assert needed in titles


def test_alert_rules_use_exported_metrics() -> None:
    text = (CONFIG / "prometheus" / "alerts.yml").read_text()
    exprs = re.findall(r"expr: \|?\s*(.+?)\n\s+(?:for|labels):", text, flags=re.DOTALL)
    assert len(exprs) >= 4
    known = exported_names()
    for expr in exprs:
        assert used_names(expr) <= known, expr


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
