"""Reads of the device registry that other apps' pages show (registered with them at startup)."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from accessctl.models import Door
from devices.models import EdgeDevice


def door_devices_prefetch(doors: QuerySet[Door]) -> QuerySet[Door]:
    """``doors`` with their non-disabled devices (``door.devices``), for the dashboard's door tiles."""
    devices = EdgeDevice.objects.exclude(status=EdgeDevice.Status.DISABLED).order_by("uid")
    return doors.prefetch_related(Prefetch("devices", queryset=devices))
