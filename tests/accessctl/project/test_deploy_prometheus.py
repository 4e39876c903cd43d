"""deploy/prometheus (issue 22): the scrape config and the alert rules parse, every rule is complete,
and every accessctl metric they use is one /metrics exposes (with the data it needs present)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accessctl import metrics
from accessctl.heartbeats import heartbeat_forget, heartbeat_write
from accessctl.models import Alarm, Door
from devices.models import EdgeDevice

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy" / "prometheus"
NAME = re.compile(r"\b(accessctl_[a-z0-9_]+)")

pytestmark = pytest.mark.django_db


def _rules() -> list[dict]:
    document = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_scrape_config_loads_the_rules_and_authenticates() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "accessctl"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]


def test_every_rule_is_complete_and_named_once() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    wanted = {"AccessctlDoorDeviceOffline", "AccessctlRecognitionQueueBackingUp", "AccessctlDecisionLatencyP99High",
              "AccessctlAuditAnchorLate"}  # fmt: skip
    assert wanted <= set(names)


def _exposed(tmp_path: Path, settings) -> set[str]:
    """Sample names of a scrape with a device, heartbeats and an audit anchor present, plus every
    sample name of this package's counters and histograms."""
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"
    settings.AUDIT_ANCHOR_DIR.mkdir()
    (settings.AUDIT_ANCHOR_DIR / "2026-12.jsonl").write_text("{}\n")
    door = Door.objects.create(name="Hall")
    EdgeDevice.objects.create(
        uid="hall-1", door=door, public_key="x", status=EdgeDevice.Status.ONLINE, last_seen=timezone.now()
        - dt.timedelta(seconds=3), last_heartbeat={"spool_depth": 0, "camera_fps": 15.0},
    )  # fmt: skip
    heartbeat_write(kind="bridge", name="deploy-test", data={"connected": True, "silent_s": 0.1})
    heartbeat_write(kind="worker", name="deploy-test@host")
    try:
        body = Client().get("/metrics").content.decode()
    finally:
        heartbeat_forget(kind="bridge", name="deploy-test")
        heartbeat_forget(kind="worker", name="deploy-test@host")
    names = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    for metric in (metrics.DECISIONS, metrics.WEBHOOK_DELIVERIES, metrics.ALARMS_RAISED):
        names.add(f"{metric._name}_total")
    for metric in (metrics.DECISION_LATENCY, metrics.BRIDGE_LAG, metrics.GALLERY_SEARCH):
        names.update(f"{metric._name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def test_every_metric_the_rules_use_is_exposed(tmp_path: Path, settings) -> None:
    exposed = _exposed(tmp_path, settings)
    used = {name for rule in _rules() for name in NAME.findall(rule["expr"])}
    assert used, "the rules use accessctl metrics"
    assert sorted(used - exposed) == []


def test_alarm_kinds_the_rules_match_exist() -> None:
    kinds = {str(kind) for kind in Alarm.Kind}
    for rule in _rules():
        for pattern in re.findall(r'kind=~"([^"]+)"', rule["expr"]):
            assert set(pattern.split("|")) <= kinds, rule["alert"]
