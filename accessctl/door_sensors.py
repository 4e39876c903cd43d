"""The door itself: its position sensor and request-to-exit button, and the alarms they raise.

A device reports what its door's inputs saw as signed door events (``faceengine.protocol.DoorEvent``
on the ``door`` topic; ``devices.door_events`` verifies them and calls :func:`door_event_record`).
Each one is recorded once in the access log (source ``door``, its ``event_id`` as the detection id):

- ``exit_request`` (grant ``exit_request``): the button was pressed; the device released the lock itself.
- ``opened``: authorised when the door is held open by an operator, when a grant or an exit request
  was recorded at the door within the grant's relay pulse plus ``DOOR_OPEN_GRACE_S`` before it, or
  when the device says its relay was released at that moment (an offline grant or fail-safe, whose
  own record may arrive later): grant ``door_opened``. Otherwise deny ``forced_open`` and the
  ``forced_open`` alarm.
- ``closed`` (grant ``door_closed``): clears the door's ``forced_open`` / ``held_open`` alarms.

:func:`doors_held_open_sweep` (Celery beat) records deny ``held_open`` and raises the ``held_open``
alarm, once per opening, for an authorised opening still open after the door's ``held_open_s``.

A copy of an event already recorded (same device, same signed content) is acknowledged and ignored;
another payload under a recorded id is a ``replay`` for the caller to refuse.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accessctl import realtime
from accessctl.alarms import alarm_raise, alarms_clear
from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Alarm, Door, DoorPosition
from accessctl.webhooks import webhook_dispatch_access_event
from faceengine import protocol as p

logger = logging.getLogger(__name__)

#: Ids of held-open records: one per opening (uuid5 of the opening's event id).
HELD_OPEN_NAMESPACE = uuid.UUID("3f1d2c9e-6b3a-4f0e-8d57-2a9c4e7b1d60")

#: Recorded grants that let a door open (its relay released by the server or the device).
_OPENING_GRANTS = (
    Reason.MATCHED,
    Reason.REMOTE_UNLOCK,
    Reason.EXIT_REQUEST,
    Reason.OFFLINE_ALLOWED,
    Reason.OFFLINE_MATCHED,
)

_REASONS = {
    p.DoorEventKind.CLOSED: Reason.DOOR_CLOSED,
    p.DoorEventKind.EXIT_REQUEST: Reason.EXIT_REQUEST,
}


class DoorEventOutcome(StrEnum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # the same signed event again (QoS1 redelivery, spool re-send): ignored
    REPLAY = "replay"  # another payload (or device) under a recorded event id: the caller refuses it


def _at(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def opening_basis(*, door: Door, at: dt.datetime, released: bool | None) -> str | None:
    """Why an opening of ``door`` at ``at`` was allowed (``held_open_mode``, ``grant``,
    ``exit_request``, ``relay_released``), or None: forced open."""
    if door.mode == Door.Mode.HELD_OPEN:
        return "held_open_mode"
    grace = dt.timedelta(seconds=settings.DOOR_OPEN_GRACE_S)
    window = dt.timedelta(seconds=door.relay_pulse_ms / 1000.0) + grace
    recent = (
        AccessEvent.objects.filter(
            door_id=door.pk,
            decision=Decision.GRANT,
            reason__in=[str(r) for r in _OPENING_GRANTS],
            occurred_at__gte=at - window,
            occurred_at__lte=at + grace,  # the device's and the server's clocks may differ a little
        )
        .order_by("-occurred_at", "-id")
        .values_list("reason", flat=True)
        .first()
    )
    if recent is not None:
        return "exit_request" if recent == Reason.EXIT_REQUEST else "grant"
    if released:
        return "relay_released"
    return None


def door_event_record(
    *, event: p.DoorEvent, device_id: int | None, device_uid: str, door_id: int | None, digest: str
) -> DoorEventOutcome:
    """Record one verified door event of ``device_uid`` (see the module docstring); ``digest``: the
    SHA-256 of its signed payload (a copy is recognised by it)."""
    with transaction.atomic():
        known = AccessEvent.objects.filter(detection_id=event.event_id).only("source", "device_uid", "details").first()
        if known is not None:
            same = known.source == AccessEvent.Source.DOOR and known.device_uid == device_uid
            if same and (known.details or {}).get("payload_sha256") == digest:
                logger.info("door event %s from %s redelivered: recorded already", event.event_id, device_uid)
                return DoorEventOutcome.DUPLICATE
            return DoorEventOutcome.REPLAY
        door = Door.objects.filter(pk=door_id).first() if door_id else None
        position = _position_locked(door) if door is not None else None
        at = _at(event.occurred_at)
        details: dict[str, Any] = {"kind": str(event.kind), "payload_sha256": digest, "sent_at": event.sent_at}
        if event.released is not None:
            details["released"] = event.released
        decision, reason = Decision.GRANT, _REASONS.get(event.kind, Reason.DOOR_OPENED)
        basis: str | None = None
        if event.kind is p.DoorEventKind.OPENED and door is not None:
            basis = opening_basis(door=door, at=at, released=event.released)
            details["basis"] = basis
            if basis is None:
                decision, reason = Decision.DENY, Reason.FORCED_OPEN
        if event.kind is p.DoorEventKind.CLOSED and position is not None and position.is_open and position.opened_at:
            details["open_s"] = round((at - position.opened_at).total_seconds(), 3)
        if door is None:
            details["door"] = "unassigned"
        recorded, created = event_record(
            detection_id=event.event_id, occurred_at=at, decision=decision, reason=reason,
            source=AccessEvent.Source.DOOR, door_id=door.pk if door else None, device_id=device_id,
            device_uid=device_uid, details=details,
        )  # fmt: skip
        if not created:  # recorded meanwhile by another bridge: its copy did the rest
            return DoorEventOutcome.DUPLICATE
        recorded.door = door
        moved = position is not None and _position_update(
            position, event.kind, at=at, event=recorded, authorised=basis is not None
        )
        realtime.event_broadcast(recorded)
        webhook_dispatch_access_event(recorded)
        if reason == Reason.FORCED_OPEN:
            alarm_raise(
                kind=Alarm.Kind.FORCED_OPEN, door=door, device_id=device_id, device_uid=device_uid, event=recorded,
                details={"event_id": recorded.pk, "opened_at": at.isoformat(), "released": event.released},
            )  # fmt: skip
        elif event.kind is p.DoorEventKind.CLOSED and door is not None and moved:
            alarms_clear(
                door=door,
                kinds=tuple(str(kind) for kind in Alarm.DOOR_POSITION_KINDS),
                details={"closed_at": at.isoformat(), "closed_event_id": recorded.pk},
            )
    logger.info(
        "door event %s from %s: %s at door %s (%s)", event.event_id, device_uid, reason, door_id or "-", basis or "-"
    )
    return DoorEventOutcome.RECORDED


def _position_locked(door: Door) -> DoorPosition:
    DoorPosition.objects.get_or_create(door=door)
    return DoorPosition.objects.select_for_update().get(pk=door.pk)


def _position_update(
    position: DoorPosition, kind: p.DoorEventKind, *, at: dt.datetime, event: AccessEvent, authorised: bool
) -> bool:
    """Move the door to what ``kind`` says; False when it does not (an exit request, or an event
    older than the door's last change: spooled, arriving after a newer one; recorded, not applied)."""
    if kind is p.DoorEventKind.EXIT_REQUEST:
        return False
    if position.changed_at is not None and at < position.changed_at:
        return False
    if kind is p.DoorEventKind.OPENED:
        position.is_open, position.opened_at, position.opening_event = True, at, event
        position.authorised, position.held_alarmed = authorised, False
    else:
        position.is_open, position.opened_at, position.opening_event = False, None, None
        position.authorised, position.held_alarmed = False, False
    position.changed_at = at
    position.save()
    return True


def doors_held_open_sweep(*, now: dt.datetime | None = None) -> int:
    """Record ``held_open`` and raise its alarm for every authorised opening still open past its
    door's ``held_open_s`` (0: never), once per opening; returns how many. Doors an operator holds
    open (mode ``held_open``) are left alone."""
    now = now or timezone.now()
    due = (
        DoorPosition.objects.filter(is_open=True, authorised=True, held_alarmed=False, door__held_open_s__gt=0)
        .exclude(door__mode=Door.Mode.HELD_OPEN)
        .select_related("door")
    )
    raised = 0
    for candidate in due:
        if candidate.opened_at is None or candidate.opened_at + _held(candidate.door) > now:
            continue
        with transaction.atomic():
            position = (
                DoorPosition.objects.select_for_update(of=("self",))
                .select_related("door", "opening_event")
                .get(pk=candidate.pk)
            )
            if not (position.is_open and position.authorised and not position.held_alarmed):
                continue
            if position.opened_at != candidate.opened_at:
                continue  # closed and opened again meanwhile: the next sweep looks at the new opening
            raised += _held_open_raise(position, now)
    return raised


def _held(door: Door) -> dt.timedelta:
    return dt.timedelta(seconds=door.held_open_s)


def _held_open_raise(position: DoorPosition, now: dt.datetime) -> int:
    door, opening = position.door, position.opening_event
    assert position.opened_at is not None
    key = str(opening.detection_id) if opening is not None else position.opened_at.isoformat()
    details = {
        "opened_at": position.opened_at.isoformat(),
        "held_open_s": door.held_open_s,
        "open_s": round((now - position.opened_at).total_seconds(), 3),
        "opening_event_id": opening.pk if opening is not None else None,
    }
    recorded, created = event_record(
        detection_id=uuid.uuid5(HELD_OPEN_NAMESPACE, f"held_open:{door.pk}:{key}"),
        occurred_at=position.opened_at + _held(door), decision=Decision.DENY, reason=Reason.HELD_OPEN,
        source=AccessEvent.Source.DOOR, door_id=door.pk, device_id=opening.device_id if opening else None,
        device_uid=opening.device_uid if opening else "", details=details,
    )  # fmt: skip
    position.held_alarmed = True
    position.save(update_fields=["held_alarmed"])
    if not created:
        return 0
    recorded.door = door
    realtime.event_broadcast(recorded)
    webhook_dispatch_access_event(recorded)
    alarm_raise(
        kind=Alarm.Kind.HELD_OPEN, door=door, device_id=recorded.device_id, device_uid=recorded.device_uid,
        event=recorded, details={**details, "event_id": recorded.pk},
    )  # fmt: skip
    logger.warning("door %s held open %.0f s (limit %d s): event %s", door.pk, details["open_s"], door.held_open_s,
                   recorded.pk)  # fmt: skip
    return 1
