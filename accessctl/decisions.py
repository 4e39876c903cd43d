"""Record a door decision and start its side effects: door command, dashboards, webhooks, alarms.

Called by the recognition task with the outcome of the face match (who, how similar), by the
bridge for rejected or late messages. The policy (``accessctl.policy``) decides; this module
writes the one AccessEvent for the detection and, once it is committed, tells the door, the
dashboards, the webhooks and the alarm rules. Nothing here knows how faces are embedded or how
MQTT works.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from django.conf import settings
from django.db import transaction

from accessctl import realtime
from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Alarm, Door, Person
from accessctl.policy import access_evaluate
from accessctl.webhooks import webhook_dispatch_access_event

logger = logging.getLogger(__name__)

_HOSTILE = {Reason.BAD_SIGNATURE: Alarm.Kind.FORGED_SIGNATURE, Reason.REPLAY: Alarm.Kind.REPLAY}


def access_decide(
    *,
    detection_id: str,
    occurred_at: dt.datetime,
    device_id: int,
    device_uid: str,
    door: Door | None,
    person_id: int | None,
    unknown_reason: Reason = Reason.UNKNOWN_FACE,
    similarity: float | None = None,
    margin: float | None = None,
    threshold: float | None = None,
    model_version: str = "",
    snapshot: str = "",
    details: dict[str, Any] | None = None,
    too_late: bool = False,
) -> tuple[AccessEvent, bool]:
    """Apply the policy to a recognised (or unknown) face at a door and record the event.

    ``too_late``: the decision comes after the device's freshness window (a backlog); it is
    recorded with who it was, but denied ``stale_timestamp``: a door never opens minutes late.
    Returns ``(event, created)``; ``created`` is False when this detection was decided before
    (a redelivered task), in which case no side effect is repeated.
    """
    person = Person.objects.filter(pk=person_id).first() if person_id else None
    if too_late:
        decision, reason = Decision.DENY, Reason.STALE_TIMESTAMP
    elif door is None:
        decision, reason = Decision.DENY, Reason.DOOR_UNASSIGNED
    else:
        result = access_evaluate(person=person, door=door, at=occurred_at, unknown_reason=unknown_reason)
        decision, reason = result.decision, result.reason
    with transaction.atomic(savepoint=False):
        event, created = event_record(
            detection_id=detection_id,
            occurred_at=occurred_at,
            decision=decision,
            reason=reason,
            door_id=door.pk if door else None,
            device_id=device_id,
            device_uid=device_uid,
            person_id=person.pk if person else None,
            subject_uid=person.uid if person else None,
            similarity=similarity,
            margin=margin,
            threshold=threshold,
            model_version=model_version,
            snapshot=snapshot,
            details=details,
        )
        if created:
            event.door, event.person = door, person
            _notify(event, door=door, command=True)
    return event, created


def rejection_notify(*, event: AccessEvent) -> None:
    """Side effects of a rejected message's event: dashboards, webhooks, alarms for hostile input."""
    door = Door.objects.filter(pk=event.door_id).first() if event.door_id else None
    event.door = door
    _notify(event, door=door, command=False)


def late_detection_record(*, detection: Any, device: Any, error: str) -> AccessEvent:
    """A signed detection that arrived outside the timestamp window (e.g. replayed from the spool).

    It never opens a door now. If the device decided alone while offline, that decision is
    synced into the log (source ``device_offline``); otherwise it is denied ``stale_timestamp``.
    """
    offline = getattr(detection, "offline_decision", None)
    details: dict[str, Any] = {"error": error[:300], "sent_at": detection.sent_at}
    source = AccessEvent.Source.DETECTION
    decision, reason = Decision.DENY, Reason.STALE_TIMESTAMP
    occurred_at = dt.datetime.fromtimestamp(detection.captured_at, tz=dt.UTC)
    if offline is not None:
        source = AccessEvent.Source.DEVICE_OFFLINE
        opened = str(offline.action) == "open"
        decision = Decision.GRANT if opened else Decision.DENY
        reason = Reason.OFFLINE_ALLOWED if opened else Reason.OFFLINE_DENIED
        details["offline_decision"] = offline.to_dict()
    event, created = event_record(
        detection_id=detection.detection_id,
        occurred_at=occurred_at,
        decision=decision,
        reason=reason,
        source=source,
        door_id=device.door_id,
        device_id=device.pk,
        device_uid=device.uid,
        model_version=getattr(detection, "model_version", None) or "",
        details=details,
    )
    if created:
        rejection_notify(event=event)
    return event


def decision_repeat(*, event: AccessEvent, now: float | None = None) -> None:
    """Send the door command of a recorded decision again: the device asked again (a re-sent
    detection) because the first answer never reached it.

    Nothing is recorded (the event exists). It still opens only while the face's capture is
    within the device timestamp window: a re-send never opens a door late. The device applies
    one answer per detection, so a second copy of this command changes nothing.
    """
    now = time.time() if now is None else now
    stale = now - event.occurred_at.timestamp() > settings.DEVICE_TIMESTAMP_WINDOW_S
    opens = event.decision == Decision.GRANT and not stale
    _door_command(event, Door.objects.filter(pk=event.door_id).first() if opens else None, stale=stale)


def _notify(event: AccessEvent, *, door: Door | None, command: bool) -> None:
    """Queue every side effect of a newly recorded event; all run after commit."""
    if command and event.device_id:
        transaction.on_commit(lambda: _door_command(event, door))
    realtime.event_broadcast(event)
    webhook_dispatch_access_event(event)  # deliveries are queued after commit
    _alarms(event, door)


def _door_command(event: AccessEvent, door: Door | None, *, stale: bool = False) -> None:
    """Send the event's decision to its device: ``open`` with the door's relay pulse for a grant,
    else ``deny``. ``stale``: the capture is too old for a grant to open now (denied as stale)."""
    from devices.commands import command_send
    from edge_agent.protocol import CommandKind

    granted = event.decision == Decision.GRANT
    opens = granted and not stale
    try:
        command_send(
            event.device_uid,
            CommandKind.OPEN if opens else CommandKind.DENY,
            reason=Reason.STALE_TIMESTAMP if granted and stale else event.reason,
            pulse_ms=door.relay_pulse_ms if (opens and door) else 0,
            detection_id=str(event.detection_id),
        )
    except Exception:
        # The event is recorded; the device falls back to its own timeout. Logged with ids.
        logger.exception("door command for event %s (device %s) failed", event.pk, event.device_uid)


def _alarms(event: AccessEvent, door: Door | None) -> None:
    from accessctl.alarms import alarm_raise, unknown_faces_check

    kind = _HOSTILE.get(Reason(event.reason))
    if event.reason == Reason.WATCHLIST:
        kind = Alarm.Kind.WATCHLIST
    if kind is not None:
        alarm_raise(kind=kind, door=door, device=event.device, event=event, details={"reason": event.reason})
    elif event.reason == Reason.UNKNOWN_FACE and door is not None:
        unknown_faces_check(door=door)
