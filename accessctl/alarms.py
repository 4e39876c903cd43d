"""Alarms: raised by services (forged signatures, watchlist hits, repeated unknown faces, presentation
attacks and repeated ones, devices going offline), folded while open so one incident is one alarm
with a count, acknowledged by an operator.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from accessctl import metrics, realtime
from accessctl.codes import Reason
from accessctl.models import AccessEvent, Alarm, Door
from accessctl.webhooks import EventType, webhook_dispatch_alarm

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

_ALARM_LOCK_NAMESPACE = 0x616C61  # "ala": advisory locks serialising raises of the same alarm
ACKNOWLEDGE_PERMISSION = "accessctl.view_dashboard"


def alarm_raise(
    *,
    kind: Alarm.Kind | str,
    door: Door | None = None,
    device_id: int | None = None,
    device_uid: str = "",
    event: AccessEvent | None = None,
    details: dict[str, Any] | None = None,
    occurrences: int = 1,
) -> Alarm:
    """Raise an alarm, or fold it into the open (unacknowledged) one of the same kind, door and device.

    The device is named by its registry id and uid (``device_id``, ``device_uid``) when there is one.

    Folding bumps ``count`` (by ``occurrences``: several at once) and ``last_seen_at``, points
    ``event`` at the latest occurrence and merges ``details``. Dashboards get ``alarm.raised`` after
    commit either way (they upsert by id).
    """
    kind = Alarm.Kind(kind)
    door_id = door.pk if door is not None else None
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Two workers seeing the same incident at once must not open two alarms.
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                [_ALARM_LOCK_NAMESPACE, f"{kind}:{door_id}:{device_id}"],
            )
        alarm = (
            Alarm.objects.select_for_update()
            .filter(
                kind=kind, door_id=door_id, device_id=device_id, acknowledged_at__isnull=True, cleared_at__isnull=True
            )
            .order_by("-raised_at", "-id")
            .first()
        )
        if alarm is None:
            alarm = Alarm.objects.create(
                kind=kind, door_id=door_id, device_id=device_id, device_uid=device_uid[:64], event=event,
                details=details or {}, count=max(occurrences, 1),
            )  # fmt: skip
            created = True
        else:
            Alarm.objects.filter(pk=alarm.pk).update(
                count=F("count") + max(occurrences, 1),
                last_seen_at=timezone.now(),
                event_id=event.pk if event is not None else alarm.event_id,
                details={**alarm.details, **(details or {})},
            )
            alarm.refresh_from_db()
            created = False
        realtime.broadcast(realtime.MessageType.ALARM_RAISED, dict(realtime.alarm_payload(alarm)))
        if created:
            webhook_dispatch_alarm(alarm)
            metrics.on_commit(lambda: metrics.ALARMS_RAISED.labels(str(kind)).inc())
    logger.warning(
        "alarm %s %s door=%s device=%s event=%s count=%d",
        alarm.pk, "raised" if created else "repeated", door_id or "-", device_uid or "-",
        event.pk if event else "-", alarm.count,
    )  # fmt: skip
    return alarm


def alarms_clear(*, door: Door, kinds: tuple[str, ...], details: dict[str, Any] | None = None) -> list[Alarm]:
    """The conditions ``kinds`` ended at ``door`` (it closed): mark their open alarms cleared, tell the
    dashboards (``alarm.cleared``) and the webhooks after commit. They still await an acknowledgement;
    a new occurrence opens a new alarm (:func:`alarm_raise` folds only into uncleared ones)."""
    now = timezone.now()
    cleared: list[Alarm] = []
    with transaction.atomic():
        for alarm in Alarm.objects.select_for_update().filter(
            door_id=door.pk, kind__in=kinds, cleared_at__isnull=True, acknowledged_at__isnull=True
        ):
            alarm.cleared_at = now
            alarm.details = {**alarm.details, **(details or {})}
            alarm.save(update_fields=["cleared_at", "details"])
            realtime.broadcast(realtime.MessageType.ALARM_CLEARED, dict(realtime.alarm_payload(alarm)))
            webhook_dispatch_alarm(alarm, EventType.ALARM_CLEARED)
            cleared.append(alarm)
    for alarm in cleared:
        logger.info("alarm %s (%s) cleared: door %s closed", alarm.pk, alarm.kind, door.pk)
    return cleared


def alarm_acknowledge(*, alarm: Alarm, actor: AbstractBaseUser) -> Alarm:
    """Mark ``alarm`` as seen by ``actor``; acknowledging twice keeps the first acknowledgement."""
    if not (actor.is_authenticated and actor.is_active and actor.has_perm(ACKNOWLEDGE_PERMISSION)):
        raise PermissionDenied("acknowledging alarms needs the accessctl.view_dashboard permission")
    with transaction.atomic():
        alarm = Alarm.objects.select_for_update().get(pk=alarm.pk)
        if alarm.acknowledged_at is not None:
            return alarm
        alarm.acknowledged_at = timezone.now()
        alarm.acknowledged_by = actor
        alarm.save(update_fields=["acknowledged_at", "acknowledged_by"])
        realtime.broadcast(realtime.MessageType.ALARM_ACKNOWLEDGED, dict(realtime.alarm_payload(alarm)))
    logger.info("alarm %s acknowledged by user %s", alarm.pk, actor.pk)
    return alarm


def _repeated_denials_check(
    *,
    door: Door,
    reason: Reason,
    kind: Alarm.Kind,
    count_key: str,
    window_s: int,
    threshold: int,
    now: datetime | None,
    new: int,
) -> Alarm | None:
    """Raise ``kind`` when ``door`` denied ``threshold`` or more detections for ``reason`` in the last
    ``window_s`` seconds; returns the (possibly folded) alarm, or ``None`` below the threshold.

    ``new``: how many of those denials were just recorded (a batch checks once); each one at or past
    the threshold counts as one occurrence, as if each had been checked on its own.
    """
    now = now or timezone.now()
    recent = AccessEvent.objects.filter(
        door_id=door.pk, reason=reason, occurred_at__gt=now - timedelta(seconds=window_s)
    ).order_by("-occurred_at", "-id")
    seen = recent.count()
    if seen < threshold:
        return None
    return alarm_raise(
        kind=kind,
        door=door,
        event=recent.first(),
        details={count_key: seen, "window_s": window_s},
        occurrences=min(max(new, 1), seen - threshold + 1),
    )


def unknown_faces_check(
    *, door: Door, window_s: int = 60, threshold: int = 3, now: datetime | None = None, new_faces: int = 1
) -> Alarm | None:
    """Raise ``REPEATED_UNKNOWN`` when ``door`` denied ``threshold`` or more unknown faces in the last
    ``window_s`` seconds (see :func:`_repeated_denials_check`)."""
    return _repeated_denials_check(
        door=door,
        reason=Reason.UNKNOWN_FACE,
        kind=Alarm.Kind.REPEATED_UNKNOWN,
        count_key="unknown_faces",
        window_s=window_s,
        threshold=threshold,
        now=now,
        new=new_faces,
    )


def attacks_check(*, door: Door, now: datetime | None = None, new_attacks: int = 1) -> Alarm | None:
    """Raise ``REPEATED_ATTACK`` when ``door`` denied ``settings.LIVENESS_ATTACK_ALARM_COUNT`` or more
    presentation attacks in the last ``settings.LIVENESS_ATTACK_ALARM_WINDOW_S`` seconds (each attack
    raises its own ``PRESENTATION_ATTACK`` alarm too)."""
    return _repeated_denials_check(
        door=door,
        reason=Reason.PRESENTATION_ATTACK,
        kind=Alarm.Kind.REPEATED_ATTACK,
        count_key="attacks",
        window_s=settings.LIVENESS_ATTACK_ALARM_WINDOW_S,
        threshold=settings.LIVENESS_ATTACK_ALARM_COUNT,
        now=now,
        new=new_attacks,
    )


def second_factor_mismatches_check(*, door: Door, now: datetime | None = None, new: int = 1) -> Alarm | None:
    """Raise ``SECOND_FACTOR_MISMATCH`` when ``door`` denied ``settings.SECOND_FACTOR_ALARM_COUNT`` or
    more faces for a PIN or card that was not theirs in the last ``settings.SECOND_FACTOR_ALARM_WINDOW_S``
    seconds (see :func:`_repeated_denials_check`)."""
    return _repeated_denials_check(
        door=door,
        reason=Reason.SECOND_FACTOR_MISMATCH,
        kind=Alarm.Kind.SECOND_FACTOR_MISMATCH,
        count_key="mismatches",
        window_s=settings.SECOND_FACTOR_ALARM_WINDOW_S,
        threshold=settings.SECOND_FACTOR_ALARM_COUNT,
        now=now,
        new=new,
    )
