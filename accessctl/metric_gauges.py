"""Scrape-time gauges of the domain and of the processes' heartbeats (see :mod:`accessctl.metrics`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric

from accessctl.heartbeats import heartbeats_read
from accessctl.models import Alarm

#: The processes that write heartbeats (accessctl.heartbeats).
HEARTBEAT_KINDS = ("bridge", "worker")


def anchor_age_s(*, now: float | None = None) -> float | None:
    """Seconds since the last audit checkpoint was appended to its file (None: none yet)."""
    folder = Path(settings.AUDIT_ANCHOR_DIR)
    if not folder.is_dir():
        return None
    times = [path.stat().st_mtime for path in folder.glob("*.jsonl")]
    if not times:
        return None
    return max(0.0, (time.time() if now is None else now) - max(times))


def domain_gauges() -> Iterable[Metric]:
    """Open alarms per kind and the age of the latest audit anchor."""
    alarms = GaugeMetricFamily("accessctl_alarms_open", "Alarms not acknowledged, by kind.", labels=["kind"])
    open_counts = dict(
        Alarm.objects.filter(acknowledged_at__isnull=True).order_by().values_list("kind").annotate(n=Count("id"))
    )
    for kind in Alarm.Kind:
        alarms.add_metric([str(kind)], float(open_counts.get(str(kind), 0)))
    families: list[Metric] = [alarms]
    age = anchor_age_s()
    if age is not None:
        anchor = GaugeMetricFamily(
            "accessctl_audit_anchor_age_seconds", "Seconds since the latest signed checkpoint of the access log."
        )
        anchor.add_metric([], age)
        families.append(anchor)
    return families


def heartbeat_gauges() -> Iterable[Metric]:
    """Age of each bridge's and worker's heartbeat; each bridge's connection and silence."""
    age = GaugeMetricFamily(
        "accessctl_process_heartbeat_age_seconds",
        "Seconds since the process's last heartbeat.",
        labels=["kind", "name"],
    )
    connected = GaugeMetricFamily(
        "accessctl_bridge_connected", "1 when the bridge was connected to the broker at its last heartbeat.",
        labels=["bridge"],
    )  # fmt: skip
    silent = GaugeMetricFamily(
        "accessctl_bridge_silent_seconds", "Seconds the bridge had heard nothing at its last heartbeat.",
        labels=["bridge"],
    )  # fmt: skip
    for kind in HEARTBEAT_KINDS:
        for name, data in sorted(heartbeats_read(kind).items()):
            age.add_metric([kind, name], data["age_s"])
            if kind == "bridge":
                connected.add_metric([name], 1.0 if data.get("connected") else 0.0)
                silent.add_metric([name], float(data.get("silent_s") or 0.0))
    return [age, connected, silent]
