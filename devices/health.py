"""Fleet health: heartbeats, online/offline status (last will), and the offline sweep.

A device whose signed heartbeat says that answers to its detections are overdue
(``answers_overdue`` >= ``DEVICE_DEGRADED_AFTER_OVERDUE``) is ``degraded``, not ``online``: it
reaches the broker but gets no door commands back (its commands subscription lost, the bridge or
the workers down). Its heartbeat puts it back online once answers flow. A heartbeat without the
field (an older agent) is not measured: such a device is ``online`` as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accessctl import realtime
from accessctl.alarms import alarm_raise
from accessctl.models import Alarm
from devices.allowlist import allowlist_acknowledge, allowlist_device_started
from devices.allowlist_triggers import TASKS, recompile_on_commit
from devices.model_rollout import rollout_offer_refresh, rollout_progress_record
from devices.models import EdgeDevice
from faceengine import protocol as p

logger = logging.getLogger(__name__)

# last_seen is written at most this often per device, to keep the hot path light.
_SEEN_RESOLUTION_S = 5.0


#: Statuses of a device that reaches the server; only its heartbeat tells one from the other.
_REACHABLE = (EdgeDevice.Status.ONLINE, EdgeDevice.Status.DEGRADED)


def _reachable_status(device: EdgeDevice) -> str:
    """A device heard from: ``degraded`` stays so until its heartbeat says answers flow again."""
    return EdgeDevice.Status.DEGRADED if device.status == EdgeDevice.Status.DEGRADED else EdgeDevice.Status.ONLINE


def _status_set(
    device: EdgeDevice,
    status: str,
    *,
    now: dt.datetime | None,
    extra: dict | None = None,
    alarm_details: dict | None = None,
) -> None:
    changed = device.status != status
    fields = {"status": status, "last_seen": now, **(extra or {})}
    EdgeDevice.objects.filter(pk=device.pk).exclude(status=EdgeDevice.Status.DISABLED).update(**fields)
    for key, value in fields.items():
        setattr(device, key, value)
    if changed:
        logger.info("device %s is now %s", device.uid, status)
        realtime.device_status_broadcast(
            device_id=device.pk, uid=device.uid, door_id=device.door_id, status=status, last_seen=device.last_seen
        )
        if status in (EdgeDevice.Status.OFFLINE, EdgeDevice.Status.DEGRADED):
            kind = Alarm.Kind.DEVICE_OFFLINE if status == EdgeDevice.Status.OFFLINE else Alarm.Kind.DEVICE_DEGRADED
            details = {"uid": device.uid, **(alarm_details or {})}
            alarm_raise(kind=kind, door=device.door, device_id=device.pk, device_uid=device.uid, details=details)


def device_seen(*, device: EdgeDevice) -> None:
    """Note that an authentic message arrived from ``device``."""
    now = timezone.now()
    if (
        device.status in _REACHABLE
        and device.last_seen
        and ((now - device.last_seen).total_seconds() < _SEEN_RESOLUTION_S)
    ):
        return
    _status_set(device, _reachable_status(device), now=now)


def heartbeat_status(heartbeat: p.Heartbeat) -> str:
    """``degraded`` when the heartbeat reports answers overdue (at or past the setting), else ``online``."""
    overdue = heartbeat.answers_overdue
    if overdue is not None and overdue >= max(settings.DEVICE_DEGRADED_AFTER_OVERDUE, 1):
        return EdgeDevice.Status.DEGRADED
    return EdgeDevice.Status.ONLINE


def _authentic(device_uid: str, raw: bytes, kind: p.TopicKind) -> tuple[EdgeDevice, p.Message] | None:
    device = EdgeDevice.objects.filter(uid=device_uid).select_related("door").first()
    if device is None or device.status == EdgeDevice.Status.DISABLED:
        logger.warning("%s from unknown or disabled device %s ignored", kind, device_uid[:64])
        return None
    try:
        message = p.open_message(
            p.topic_for(device_uid, kind),
            raw,
            device.public_key,
            now=time.time(),
            window_s=settings.DEVICE_TIMESTAMP_WINDOW_S,
        )
    except p.ProtocolError as exc:
        logger.warning("%s from device %s rejected: %s (%s)", kind, device_uid, exc.code, exc)
        if exc.code == p.Reason.BAD_SIGNATURE:
            alarm_raise(
                kind=Alarm.Kind.FORGED_SIGNATURE, door=device.door, device_id=device.pk, device_uid=device.uid,
                details={"topic": str(kind)},
            )  # fmt: skip
        return None
    return device, message


def heartbeat_ingest(*, device_uid: str, raw: bytes) -> None:
    """Record a signed heartbeat: versions, camera fps, spool depth, temperature."""
    opened = _authentic(device_uid, raw, p.TopicKind.HEARTBEAT)
    if opened is None:
        return
    device, heartbeat = opened
    assert isinstance(heartbeat, p.Heartbeat)
    data = heartbeat.to_dict()
    extra = {
        "agent_version": heartbeat.agent_version[:32],
        "model_version": (heartbeat.model_version or "")[:64],
        "last_heartbeat": data,
    }
    status = heartbeat_status(heartbeat)
    if status == EdgeDevice.Status.DEGRADED and device.status != status:
        logger.warning(
            "device %s reports %d detection(s) without an answer (oldest %ss): degraded",
            device.uid, heartbeat.answers_overdue, heartbeat.oldest_overdue_s,
        )  # fmt: skip
    alarm_details = {"answers_overdue": heartbeat.answers_overdue, "oldest_overdue_s": heartbeat.oldest_overdue_s}
    model_before = device.model_version
    _status_set(device, status, now=timezone.now(), extra=extra, alarm_details=alarm_details)
    _allowlist_acknowledge(device, heartbeat, model_changed=device.model_version != model_before)
    try:
        if heartbeat.model_update_state is not None:
            rollout_progress_record(device=device, heartbeat=heartbeat)
        rollout_offer_refresh(device=device, heartbeat=heartbeat)
    except Exception:  # the heartbeat itself is recorded; the next one reports again
        logger.exception("model rollout progress of device %s not recorded", device.uid)
    logger.debug("heartbeat from %s: spool=%s fps=%s", device.uid, heartbeat.spool_depth, heartbeat.camera_fps)


def _allowlist_acknowledge(device: EdgeDevice, heartbeat: p.Heartbeat, *, model_changed: bool) -> None:
    """The heartbeat's allow-list fields: acknowledge, and push the list again (a Celery task) when
    the device holds another version; a new model version (embedding mode) recompiles its door."""
    try:
        if allowlist_acknowledge(device, heartbeat):
            device_id = device.pk
            transaction.on_commit(lambda: TASKS.push.delay(device_id, True), robust=True)
        if model_changed and device.door_id:
            recompile_on_commit([device.door_id])
    except Exception:  # the heartbeat itself is recorded; the re-issue sweep catches up
        logger.exception("allow-list acknowledgement of device %s failed", device.uid)


def status_ingest(*, device_uid: str, raw: bytes) -> None:
    """Online/offline from the device; the broker's unsigned last will counts as an offline hint."""
    opened = _authentic(device_uid, raw, p.TopicKind.STATUS)
    if opened is None:
        return
    device, status = opened
    assert isinstance(status, p.Status)
    if status.state == p.DeviceState.ONLINE:
        _status_set(device, _reachable_status(device), now=timezone.now())
        allowlist_device_started(device)  # the agent (re)started: a full list if it holds another version
    else:
        # The last will is unsigned: keep the last authentic sighting as last_seen.
        _status_set(device, EdgeDevice.Status.OFFLINE, now=timezone.now() if status.signed else device.last_seen)


def devices_offline_sweep(*, now: dt.datetime | None = None) -> int:
    """Mark devices silent for longer than DEVICE_OFFLINE_AFTER_S offline; returns how many."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.DEVICE_OFFLINE_AFTER_S)
    stale = EdgeDevice.objects.filter(status__in=_REACHABLE).filter(Q(last_seen__lt=cutoff) | Q(last_seen=None))
    count = 0
    for device in stale.select_related("door"):
        _status_set(device, EdgeDevice.Status.OFFLINE, now=device.last_seen or now)
        count += 1
    return count
