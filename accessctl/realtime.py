"""The one producer of realtime messages for operator dashboards (Channels group broadcast).

Payloads are TypedDicts with codes, never prose. Services call the ``*_broadcast`` functions;
they send after the surrounding transaction commits, so a dashboard never shows a rolled-back
event. Consumers (``accessctl/consumers.py``) only authenticate, join ``DASHBOARD_GROUP`` and
forward what arrives here.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard"


class MessageType(StrEnum):
    ACCESS_EVENT = "access.event"
    DOOR_STATE = "door.state"
    DEVICE_STATUS = "device.status"
    ALARM_RAISED = "alarm.raised"
    ALARM_ACKNOWLEDGED = "alarm.acknowledged"


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


def _send(message_type: MessageType, payload: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        # Consumers implement a handler per type: "access.event" -> access_event().
        async_to_sync(layer.group_send)(DASHBOARD_GROUP, {"type": str(message_type), "payload": payload})
    except Exception:
        # A dashboard hiccup must never fail a door decision; the event is in the database.
        logger.exception("realtime broadcast of %s failed", message_type)


def broadcast(message_type: MessageType, payload: dict) -> None:
    """Send ``payload`` to every dashboard once the current transaction (if any) commits."""
    transaction.on_commit(lambda: _send(message_type, payload))
