"""The one producer of realtime messages for operator dashboards (Channels group broadcast).

Payloads are TypedDicts with codes, never prose. Services call the ``*_broadcast`` functions;
they send after the surrounding transaction commits, so a dashboard never shows a rolled-back
event. Consumers (``accessctl/consumers.py``) only authenticate, join ``DASHBOARD_GROUP`` and
forward what arrives here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypedDict

from channels.layers import get_channel_layer
from django.db import transaction

from accessctl.offline_marks import OfflineMark, offline_mark

if TYPE_CHECKING:
    from datetime import datetime

    from accessctl.models import AccessEvent, Alarm, Door

logger = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard"


class MessageType(StrEnum):
    ACCESS_EVENT = "access.event"
    DOOR_STATE = "door.state"
    DEVICE_STATUS = "device.status"
    ALARM_RAISED = "alarm.raised"
    ALARM_ACKNOWLEDGED = "alarm.acknowledged"
    ALARM_CLEARED = "alarm.cleared"  # the condition ended (a forced or held-open door closed)


class AccessEventPayload(TypedDict):
    id: int
    detection_id: str
    occurred_at: str
    door_id: int | None
    door: str | None
    device_uid: str
    person_id: int | None
    person: str | None
    decision: str
    reason: str
    similarity: float | None
    margin: float | None
    thumbnail_url: str | None
    source: str
    recorded_at: str | None
    #: A door's own decision (source ``device_offline``): received vs occurred, allow-list version,
    #: the server's agreement (``accessctl.offline_marks``); None for every other event.
    offline: OfflineMark | None


class DoorStatePayload(TypedDict):
    id: int
    name: str
    mode: str


class DeviceStatusPayload(TypedDict):
    id: int
    uid: str
    door_id: int | None
    status: str
    last_seen: str | None


class AlarmPayload(TypedDict):
    id: int
    kind: str
    door_id: int | None
    device_uid: str | None
    raised_at: str
    count: int
    acknowledged: bool
    cleared: bool  # the condition ended by itself (door closed); still waits for an acknowledgement
    thumbnail_url: str | None  # the face of the latest occurrence, for alarms that keep one (presentation attacks)


class _LayerSender:
    """One event loop thread per process that sends to the channel layer.

    ``async_to_sync`` per message would start a loop and open a new Redis connection for every
    door decision; this loop keeps channels-redis' connection pool and sends in the background,
    so a decision never waits for the dashboards. Messages go out one at a time, in the order
    they were submitted (a lockdown's event before its door state). Started lazily and again after
    a fork (Celery's prefork children inherit the module, not the thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_order = asyncio.Lock()
        self._pid = 0

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="realtime-sender", daemon=True).start()
                self._loop, self._in_order, self._pid = loop, asyncio.Lock(), os.getpid()
            return self._loop

    async def _one_at_a_time(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        # Tasks start in submission order and the lock wakes its waiters first come, first served.
        async with self._in_order:
            return await coroutine

    def submit(self, coroutine: Coroutine[Any, Any, Any], what: str) -> Future:
        loop = self._running_loop()
        future = asyncio.run_coroutine_threadsafe(self._one_at_a_time(coroutine), loop)
        future.add_done_callback(lambda done: _log_failure(done, what))
        return future


def _log_failure(done: Future, what: str) -> None:
    exc = done.exception()
    if exc is not None:
        # A dashboard hiccup must never fail a door decision; the event is in the database.
        logger.error("realtime broadcast of %s failed: %s", what, exc, exc_info=exc)


_sender = _LayerSender()


def _send(message_type: MessageType, payload: dict) -> Future | None:
    layer = get_channel_layer()
    if layer is None:
        return None
    # Consumers implement a handler per type: "access.event" -> access_event().
    message = {"type": str(message_type), "payload": payload}
    return _sender.submit(layer.group_send(DASHBOARD_GROUP, message), str(message_type))


def broadcast(message_type: MessageType, payload: dict) -> None:
    """Send ``payload`` to every dashboard once the current transaction (if any) commits."""
    transaction.on_commit(lambda: _send(message_type, payload))


# --- Serialisers: the one place that turns models into the payloads above. ---------------------
# Imports are local so importing this module stays cheap for the MQTT bridge and Celery workers.


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def event_payload(event: AccessEvent) -> AccessEventPayload:
    """``AccessEvent`` -> payload. Select ``door`` and ``person`` with it to avoid extra queries."""
    from django.urls import reverse

    return AccessEventPayload(
        id=event.pk,
        detection_id=str(event.detection_id),
        occurred_at=event.occurred_at.isoformat(),
        door_id=event.door_id,
        door=event.door.name if event.door_id else None,
        device_uid=event.device_uid,
        person_id=event.person_id,
        person=event.person.name if event.person_id else None,
        decision=event.decision,
        reason=event.reason,
        similarity=event.similarity,
        margin=event.margin,
        thumbnail_url=reverse("event_thumbnail", args=[event.pk]) if event.snapshot else None,
        source=event.source,
        recorded_at=_iso(event.recorded_at),
        offline=offline_mark(event),
    )


def door_payload(door: Door) -> DoorStatePayload:
    return DoorStatePayload(id=door.pk, name=door.name, mode=door.mode)


def device_status_broadcast(
    *, device_id: int, uid: str, door_id: int | None, status: str, last_seen: datetime | None
) -> None:
    """Announce a device's new status (the devices app calls this; after commit)."""
    payload = DeviceStatusPayload(id=device_id, uid=uid, door_id=door_id, status=status, last_seen=_iso(last_seen))
    broadcast(MessageType.DEVICE_STATUS, dict(payload))


def alarm_payload(alarm: Alarm) -> AlarmPayload:
    """``Alarm`` -> payload."""
    return AlarmPayload(
        id=alarm.pk,
        kind=alarm.kind,
        door_id=alarm.door_id,
        device_uid=alarm.device_uid or None,
        raised_at=alarm.raised_at.isoformat(),
        count=alarm.count,
        acknowledged=alarm.acknowledged_at is not None,
        cleared=alarm.cleared_at is not None,
        thumbnail_url=alarm_thumbnail_url(alarm),
    )


def alarm_thumbnail_url(alarm: Alarm) -> str | None:
    """The crop of the alarm's latest event, when the alarm keeps one (``details["snapshot"]``)."""
    from django.urls import reverse

    if not (alarm.event_id and alarm.details.get("snapshot")):
        return None
    return reverse("event_thumbnail", args=[alarm.event_id])


def event_broadcast(event: AccessEvent) -> None:
    """Announce a recorded access event to every dashboard (after commit)."""
    broadcast(MessageType.ACCESS_EVENT, dict(event_payload(event)))
