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
