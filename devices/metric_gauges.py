"""Scrape-time gauges of the device registry (registered with :func:`accessctl.metrics.collector_register`).

One query over the devices, reading from each row's latest heartbeat only the fields exported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from devices.models import EdgeDevice

#: Statuses in which the device is reachable (``degraded``: heartbeats arrive, answers do not).
REACHABLE = (EdgeDevice.Status.ONLINE, EdgeDevice.Status.DEGRADED)


def device_gauges() -> Iterable[Metric]:
    """Per device: online, last-seen age, spool depth, camera fps, versions; and devices per status."""
    now = timezone.now()
    rows = EdgeDevice.objects.order_by().values_list(
        "uid", "status", "last_seen", "agent_version", "model_version",
        "last_heartbeat__spool_depth", "last_heartbeat__camera_fps", "door__name",
    )  # fmt: skip
    online = GaugeMetricFamily(
        "accessctl_device_online", "1 when the device is online or degraded, else 0.", labels=["device"]
    )
    seen = GaugeMetricFamily(
        "accessctl_device_last_seen_age_seconds",
        "Seconds since the device's last authentic message.",
        labels=["device"],
    )
    spool = GaugeMetricFamily(
        "accessctl_device_spool_depth", "Detections waiting in the device's spool (last heartbeat).", labels=["device"]
    )
    fps = GaugeMetricFamily(
        "accessctl_device_camera_fps", "Camera frames per second (last heartbeat).", labels=["device"]
    )
    info = GaugeMetricFamily(
        "accessctl_device_info",
        "Always 1: the device's door, status, agent and model versions as labels.",
        labels=["device", "door", "status", "agent_version", "model_version"],
    )
    statuses: Counter[str] = Counter({str(status): 0 for status in EdgeDevice.Status})
    for uid, status, last_seen, agent, model, spool_depth, camera_fps, door in rows:
        statuses[status] += 1
        online.add_metric([uid], 1.0 if status in REACHABLE else 0.0)
        if last_seen is not None:
            seen.add_metric([uid], max(0.0, (now - last_seen).total_seconds()))
        if isinstance(spool_depth, int | float):
            spool.add_metric([uid], float(spool_depth))
        if isinstance(camera_fps, int | float):
            fps.add_metric([uid], float(camera_fps))
        info.add_metric([uid, door or "", status, agent, model], 1.0)
    by_status = GaugeMetricFamily("accessctl_devices", "Registered devices by status.", labels=["status"])
    for status, count in sorted(statuses.items()):
        by_status.add_metric([status], float(count))
    return [online, seen, spool, fps, info, by_status]
