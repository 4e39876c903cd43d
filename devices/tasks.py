"""Periodic device tasks (Celery beat)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="devices.offline_sweep", ignore_result=True)
def offline_sweep() -> int:
    from devices.health import devices_offline_sweep

    return devices_offline_sweep()
