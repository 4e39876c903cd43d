"""deploy/grafana (issue 22): the dashboard loads, every panel queries the data source variable, the
panels cover what an operator watches, and every accessctl metric a query names is one /metrics
exposes (the same check as the Prometheus rules')."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.accessctl.project.test_deploy_prometheus import NAME, _exposed

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
#: Series Prometheus adds itself (not from /metrics).
PROMETHEUS_OWN = {"up", "scrape_duration_seconds"}


def _dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "accessctl.json").read_text())


def _panels() -> list[dict]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _exprs() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def test_the_dashboard_is_complete_and_uses_the_datasource_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        assert panel["title"] and panel["targets"], panel["id"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


@pytest.mark.django_db
def test_every_metric_the_dashboard_queries_is_exposed(tmp_path: Path, settings) -> None:
    exposed = _exposed(tmp_path, settings)
    used = {name for expr in _exprs() for name in NAME.findall(expr)}
    assert sorted(used - exposed) == []
    selectors = {name for expr in _exprs() for name in re.findall(r"\b([a-z_][a-z0-9_]*)\s*[{\[]", expr)}
    assert {name for name in selectors if not name.startswith("accessctl_")} <= PROMETHEUS_OWN


def test_the_panels_cover_what_an_operator_watches() -> None:
    used = {name for expr in _exprs() for name in NAME.findall(expr)}
    wanted = {
        "accessctl_decision_latency_seconds_bucket",  # p50/p99 by mode
        "accessctl_decisions_total",  # by result and reason
        "accessctl_bridge_lag_seconds_bucket",
        "accessctl_recognition_staged", "accessctl_recognition_oldest_staged_age_seconds",
        "accessctl_recognition_queue_tasks",
        "accessctl_device_online", "accessctl_device_spool_depth", "accessctl_device_camera_fps",
        "accessctl_webhook_deliveries_total", "accessctl_alarms_raised_total", "accessctl_alarms_open",
        "accessctl_device_allowlist_age_seconds", "accessctl_device_allowlist_expires_in_seconds",
        "accessctl_device_allowlist_acknowledged",
    }  # fmt: skip
    assert sorted(wanted - used) == []
    quantiles = {q for expr in _exprs() for q in re.findall(r"histogram_quantile\((0\.\d+)", expr)}
    assert {"0.5", "0.99"} <= quantiles


def test_the_provisioning_files_load() -> None:
    dashboards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "accessctl.yml").read_text())
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
