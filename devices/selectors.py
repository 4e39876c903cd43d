"""Reads of the device registry that other apps' pages show (registered with them at startup)."""

from __future__ import annotations

from django.db.models import Count, Prefetch, Q, QuerySet

from accessctl.models import Door
from devices.models import EdgeDevice


def door_devices_prefetch(doors: QuerySet[Door]) -> QuerySet[Door]:
    """``doors`` with their non-disabled devices (``door.devices``), for the dashboard's door tiles:
    each with its allow-list state (``device.allowlist``, ``device.offline_mode``) and the number of
    revocations it has not acknowledged (``device.unacked_revocation_count``)."""
    devices = (
        EdgeDevice.objects.exclude(status=EdgeDevice.Status.DISABLED)
        .select_related("allowlist")
        .annotate(unacked_revocation_count=Count("revocations", filter=Q(revocations__acknowledged_at__isnull=True)))
        .order_by("uid")
    )
    return doors.prefetch_related(Prefetch("devices", queryset=devices))


def devices_running_model(model_version: str) -> list[str]:
    """Uids of the devices (not disabled) whose last heartbeat reported ``model_version``: the
    registry refuses to retire a version they still decide in."""
    return list(
        EdgeDevice.objects.filter(model_version=model_version)
        .exclude(status=EdgeDevice.Status.DISABLED)
        .order_by("uid")
        .values_list("uid", flat=True)
    )
