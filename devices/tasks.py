"""Periodic device tasks (Celery beat)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="devices.offline_sweep", ignore_result=True)
def offline_sweep() -> int:
    from devices.health import devices_offline_sweep

    return devices_offline_sweep()


@shared_task(name="devices.allowlist_door_recompile", ignore_result=True)
def allowlist_door_recompile(door_id: int) -> int:
    """Compile and push the allow-lists of a door's devices (debounced, see devices.allowlist_triggers)."""
    from devices.allowlist import door_allowlists_push
    from devices.allowlist_triggers import recompile_started

    recompile_started(door_id)
    return sum(1 for result in door_allowlists_push(door_id) if result.version is not None and not result.unchanged)


@shared_task(name="devices.allowlist_device_push", ignore_result=True)
def allowlist_device_push(device_id: int, full: bool = True) -> int | None:
    """Push one device's list again (a resync after a heartbeat showed another version)."""
    from devices.allowlist import allowlist_push
    from devices.models import EdgeDevice

    device = EdgeDevice.objects.filter(pk=device_id).first()
    return None if device is None else allowlist_push(device, full=full, force=True).version


@shared_task(name="devices.allowlist_reissue", ignore_result=True)
def allowlist_reissue() -> int:
    """Beat: re-issue lists past half their age, compile lists missing at allowlist doors, and send
    again revocations that were not sent or not acknowledged."""
    from devices.allowlist_triggers import allowlists_reissue

    return allowlists_reissue()
