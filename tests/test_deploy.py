"""The deploy/ kit: promtool checks of the Prometheus files, and metric names that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, AppMaker

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "preview-worker.json"
METRIC_NAME = re.compile(r"\b(?:preview|flask)_[a-z_]+\b")


def promtool() -> str:
    """Return the path of promtool, or skip the test when it is not installed."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: apt-get install prometheus to run the alert tests")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in deploy/prometheus and return what it said."""
    return subprocess.run(
        [promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def alert_expressions() -> list[str]:
    """Return the expression of every rule in alerts.yml: one line, or a block after `|`."""
    expressions = []
    lines = ALERTS.read_text().splitlines()
    for index, line in enumerate(lines):
        key, _, rest = line.partition("expr:")
        if key.strip() or not rest:
            continue
        if rest.strip() not in ("|", "|-", ">", ">-"):
            expressions.append(rest.strip())
            continue
        indent = len(key)
        block = []
        for following in lines[index + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        expressions.append(" ".join(block).strip())
    return expressions


def dashboard_expressions() -> list[str]:
    """Return the query of every panel target in the Grafana dashboard."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def exported_names(app: Flask) -> set[str]:
    """Return every sample name the API's /metrics gives once it has served one request."""
    client = app.test_client()
    client.get("/api/preview/worker/health")
    answer = client.get("/metrics")
    assert answer.status_code == 200
    families = text_string_to_metric_families(answer.get_data(as_text=True))
    return {sample.name for family in families for sample in family.samples}


def test_prometheus_config_is_valid() -> None:
    """promtool accepts prometheus.yml and the rule file it names."""
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid() -> None:
    """promtool accepts alerts.yml."""
    result = run_promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    """Every alert fires on its trouble and stays quiet on a healthy service."""
    result = run_promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard query, with Grafana's variables filled in."""
    exprs = [expr.replace("$__rate_interval", "5m") for expr in dashboard_expressions()]
    rules = [{"record": f"dashboard:query{index}", "expr": e} for index, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"  # JSON is YAML, and promtool reads it
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_the_panels_and_a_datasource_variable() -> None:
    """The dashboard is recent JSON, with a Prometheus datasource variable every panel uses."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = dashboard["templating"]["list"]
    assert {"name": "datasource", "type": "datasource"}.items() <= variables[0].items()
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    queries = " ".join(dashboard_expressions())
    for needed in ("preview_queue_depth", "preview_jobs_total", "preview_dlq_size",
                   "preview_job_duration_seconds_bucket", "preview_workers",
                   "flask_http_request_total", "flask_http_request_duration_seconds_bucket"):
        assert needed in queries


def test_every_metric_used_is_exported(make_app: AppMaker) -> None:
    """Every metric name in the alerts and the dashboard appears on the API's /metrics."""
    used = {name for expr in alert_expressions() + dashboard_expressions()
            for name in METRIC_NAME.findall(expr)}
    assert len(alert_expressions()) == 6, "an alert expression was not read"
    assert used, "no metric names found in the expressions"
    missing = used - exported_names(make_app())
    assert not missing, f"not exported: {sorted(missing)}"
