"""Door events in: one signed message on ``acs/v1/devices/<uid>/door`` verified and handed to the domain.

A device reports its door's position sensor (``opened`` / ``closed``) and request-to-exit button
(``exit_request``) as :class:`faceengine.protocol.DoorEvent` messages. This module checks the device
(known, enabled), the signature, the topic, the schema and the age of ``sent_at`` (a spooled event
is accepted up to ``DOOR_EVENT_MAX_AGE_S`` after it was signed, and never from the future beyond the
device timestamp window), then :func:`accessctl.door_sensors.door_event_record` records it and raises
the alarms. Every refusal is recorded once in the access log (``accessctl.decisions.rejection_record``:
malformed, unknown device, bad signature, stale, replay; a forged signature or a replay raises its
alarm), with an id derived from the message bytes, so a redelivered copy is recorded once.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

from django.conf import settings

from accessctl.codes import Reason
from accessctl.decisions import rejection_record
from accessctl.door_sensors import DoorEventOutcome, door_event_record
from devices import health
from devices.models import EdgeDevice
from faceengine import protocol as p

logger = logging.getLogger(__name__)

#: Ids of the access-log records of refused door messages (from the message bytes).
DOOR_REJECT_NAMESPACE = uuid.UUID("0c7f3e55-2d61-4b8a-9f0e-51b3a6c2d7e4")


class _Refused(Exception):
    def __init__(self, reason: Reason | str, message: str, device: EdgeDevice | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.device = Reason(reason), message, device


def door_event_ingest(*, device_uid: str, raw: bytes, now: float | None = None) -> str:
    """Verify one door message and have the domain record it; returns what happened (logs, tests):
    ``recorded``, ``duplicate`` or the refusal's reason code."""
    now = time.time() if now is None else now
    try:
        event, device = _verify(device_uid, raw, now)
        outcome = door_event_record(
            event=event,
            device_id=device.pk,
            device_uid=device.uid,
            door_id=device.door_id,
            digest=hashlib.sha256(p.canonical_json(event.to_dict())).hexdigest(),
        )
        if outcome is DoorEventOutcome.REPLAY:
            raise _Refused(Reason.REPLAY, f"door event {event.event_id} already recorded with other content", device)
        return str(outcome)
    except _Refused as refused:
        device = refused.device
        digest = hashlib.sha256(raw).hexdigest()
        rejection_record(
            detection_id=uuid.uuid5(DOOR_REJECT_NAMESPACE, f"{refused.reason}:{device_uid}:{digest}"),
            reason=refused.reason,
            message=refused.message,
            device_uid=device_uid,
            size=len(raw),
            device_id=device.pk if device else None,
            door_id=device.door_id if device else None,
            details={"topic": str(p.TopicKind.DOOR)},
        )
        return str(refused.reason)


def _verify(device_uid: str, raw: bytes, now: float) -> tuple[p.DoorEvent, EdgeDevice]:
    device = EdgeDevice.objects.filter(uid=device_uid).first()
    if device is None:
        raise _Refused(Reason.UNKNOWN_DEVICE, "no such device")
    if device.status == EdgeDevice.Status.DISABLED:
        raise _Refused(Reason.DEVICE_DISABLED, "device is disabled", device)
    try:
        payload = p.open_envelope(raw, device.public_key)
    except p.ProtocolError as exc:
        raise _Refused(exc.code, str(exc), device) from None
    try:
        event = p.payload_from_dict(p.TopicKind.DOOR, payload)
        assert isinstance(event, p.DoorEvent)
        if event.device_uid != device_uid:
            raise p.ProtocolError(Reason.TOPIC_MISMATCH, "payload device_uid differs from the topic's")
    except p.ProtocolError as exc:
        raise _Refused(exc.code, str(exc), device) from None
    health.device_seen(device=device)
    age = now - event.sent_at
    if age > settings.DOOR_EVENT_MAX_AGE_S or age < -settings.DEVICE_TIMESTAMP_WINDOW_S:
        raise _Refused(Reason.STALE_TIMESTAMP, f"door event signed {age:.0f} s ago", device)
    if event.occurred_at > event.sent_at + 1.0:
        raise _Refused(Reason.MALFORMED, "occurred_at is after sent_at", device)
    return event, device
