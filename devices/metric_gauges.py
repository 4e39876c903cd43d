"""Scrape-time gauges of the device registry (registered with :func:`accessctl.metrics.collector_register`).

One query over the devices (their door's fail mode and their offline allow-list joined), reading
from each row's latest heartbeat only the fields exported.

The offline allow-list gauges exist for the devices of doors in fail mode ``allowlist`` (not
disabled): the age of the latest version issued, whether the device acknowledged it, and when the
list the device says it holds expires; ``accessctl_allowlist_max_age_seconds`` is the configured
lifetime, so an alert can compare against half of it (when the beat reissues) without a constant.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from django.conf import settings
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from accessctl.models import Door
from devices.models import EdgeDevice

#: Statuses in which the device is reachable (``degraded``: heartbeats arrive, answers do not).
REACHABLE = (EdgeDevice.Status.ONLINE, EdgeDevice.Status.DEGRADED)


def device_gauges() -> Iterable[Metric]:
    """Per device: online, last-seen age, spool depth, camera fps, versions, its offline allow-list;
    and devices per status."""
    now = timezone.now()
    rows = EdgeDevice.objects.order_by().values_list(
        "uid", "status", "last_seen", "agent_version", "model_version",
        "last_heartbeat__spool_depth", "last_heartbeat__camera_fps", "door__name", "door__fail_mode",
        "allowlist__version", "allowlist__issued_at", "allowlist__refused", "allowlist__acked_version",
        "allowlist__acked_expires_at",
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
        labels=["device", "door", "fail_mode", "status", "agent_version", "model_version"],
    )
    list_age = GaugeMetricFamily(
        "accessctl_device_allowlist_age_seconds",
        "Seconds since the latest offline allow-list issued to the device was compiled (allowlist doors).",
        labels=["device"],
    )
    list_acked = GaugeMetricFamily(
        "accessctl_device_allowlist_acknowledged",
        "1 when the device's last heartbeat acknowledged the latest allow-list issued to it, else 0 "
        "(none compiled, refused, or not acknowledged yet; allowlist doors).",
        labels=["device"],
    )
    list_expiry = GaugeMetricFamily(
        "accessctl_device_allowlist_expires_in_seconds",
        "Seconds until the allow-list the device acknowledged holding expires (negative: expired; "
        "absent: it holds none; allowlist doors).",
        labels=["device"],
    )
    statuses: Counter[str] = Counter({str(status): 0 for status in EdgeDevice.Status})
    for (
        uid, status, last_seen, agent, model, spool_depth, camera_fps, door, fail_mode,
        list_version, list_issued, list_refused, acked_version, acked_expires,
    ) in rows:  # fmt: skip
        statuses[status] += 1
        online.add_metric([uid], 1.0 if status in REACHABLE else 0.0)
        if last_seen is not None:
            seen.add_metric([uid], max(0.0, (now - last_seen).total_seconds()))
        if isinstance(spool_depth, int | float):
            spool.add_metric([uid], float(spool_depth))
        if isinstance(camera_fps, int | float):
            fps.add_metric([uid], float(camera_fps))
        info.add_metric([uid, door or "", fail_mode or "", status, agent, model], 1.0)
        if fail_mode == Door.FailMode.ALLOWLIST and status != EdgeDevice.Status.DISABLED:
            if list_issued is not None:
                list_age.add_metric([uid], max(0.0, (now - list_issued).total_seconds()))
            current = bool(list_version) and not list_refused and acked_version == list_version
            list_acked.add_metric([uid], 1.0 if current else 0.0)
            if acked_expires is not None:
                list_expiry.add_metric([uid], (acked_expires - now).total_seconds())
    max_age = GaugeMetricFamily(
        "accessctl_allowlist_max_age_seconds", "Lifetime of an offline allow-list (ACCESSCTL_ALLOWLIST_MAX_AGE)."
    )
    max_age.add_metric([], float(settings.ALLOWLIST_MAX_AGE_S))
    by_status = GaugeMetricFamily("accessctl_devices", "Registered devices by status.", labels=["status"])
    for status, count in sorted(statuses.items()):
        by_status.add_metric([status], float(count))
    return [online, seen, spool, fps, info, list_age, list_acked, list_expiry, max_age, by_status]
