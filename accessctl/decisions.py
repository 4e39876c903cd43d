"""Record a door decision and start its side effects: door command, dashboards, webhooks, alarms.

Called by the recognition task with the outcome of the face match (who, how similar), by the
bridge for rejected, late or repeated messages (one function each: :func:`rejection_record`,
:func:`late_detection_record`, :func:`decision_repeat`): this module and
:mod:`accessctl.offline_decisions` (decisions a door took alone) are the only writers of
detection events. The policy (``accessctl.policy``) decides; this module
writes the one AccessEvent for the detection and, once it is committed, tells the door, the
dashboards, the webhooks and the alarm rules. Nothing here knows how faces are embedded or how
MQTT works.

Per-person cooldown (a door's ``cooldown_s``): a person standing in front of the camera is one
decision, not one a second. A detection of the same person at the same door that the policy decides
the same way as one no more than ``cooldown_s`` earlier is recorded as ``suppressed_repeat`` (the
original's decision, ``details.repeat_of``), opens nothing (its device gets ``deny``
``suppressed_repeat``) and sends no webhook (see :func:`_cooldown_repeats`).

Races: the cooldown and anti-passback read the decisions recorded before. Two workers deciding the
same person at once take transaction-scoped advisory locks first (:func:`_decision_locks`: person+door
where a cooldown applies, person+area for anti-passback areas), so they decide one after the other;
these locks are always taken before the access log's chain lock, never after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accessctl import metrics, realtime
from accessctl.alarms import alarm_raise, attacks_check, second_factor_mismatches_check, unknown_faces_check
from accessctl.audit import EventDraft, event_record, events_record
from accessctl.codes import Decision, Reason
from accessctl.door_commands import device_command_send, door_commands_flush
from accessctl.models import AccessEvent, Alarm, Door, Person
from accessctl.passback import AreaDoor, PassbackViolation, area_doors, passback_evaluate, presences_record
from accessctl.policy import AccessRequest, access_evaluate_many, liveness_threshold
from accessctl.second_factor import factor_check
from accessctl.webhooks import webhook_dispatch_access_event
from faceengine import protocol as p

logger = logging.getLogger(__name__)

_HOSTILE = {Reason.BAD_SIGNATURE: Alarm.Kind.FORGED_SIGNATURE, Reason.REPLAY: Alarm.Kind.REPLAY}


@dataclass
class DecisionInput:
    """A face seen at a door, matched (``person_id``) or not (``unknown_reason``); see :func:`access_decide`.

    Liveness, all None when not measured: ``liveness_edge`` the device's live score fused over
    ``liveness_frames`` frames (signed, the one the policy judges), ``liveness_server`` the
    server's score of the crop (recorded, informational).
    """

    detection_id: str
    occurred_at: dt.datetime
    device_id: int | None
    device_uid: str
    door: Door | None
    person_id: int | None
    unknown_reason: Reason = Reason.UNKNOWN_FACE
    similarity: float | None = None
    margin: float | None = None
    threshold: float | None = None
    model_version: str = ""
    snapshot: str = ""
    details: dict[str, Any] | None = None
    too_late: bool = False
    liveness_edge: float | None = None
    liveness_frames: int | None = None
    liveness_server: float | None = None
    second_factor: p.SecondFactor | None = None
    #: faces of the track fused into the match (None: not matched)
    probes_fused: int | None = None


def access_decide(
    *,
    detection_id: str,
    occurred_at: dt.datetime,
    device_id: int | None,
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
    liveness_edge: float | None = None,
    liveness_frames: int | None = None,
    liveness_server: float | None = None,
    second_factor: p.SecondFactor | None = None,
) -> tuple[AccessEvent, bool]:
    """Apply the policy to a recognised (or unknown) face at a door and record the event.

    ``too_late``: the decision comes after the device's freshness window (a backlog); it is
    recorded with who it was, but denied ``stale_timestamp``: a door never opens minutes late.
    Returns ``(event, created)``; ``created`` is False when this detection was decided before
    (a redelivered task), in which case no side effect is repeated. The door command goes out
    after commit; the commands of one call are awaited together (:func:`door_commands_flush`).
    """
    decision_input = DecisionInput(
        detection_id=detection_id, occurred_at=occurred_at, device_id=device_id, device_uid=device_uid, door=door,
        person_id=person_id, unknown_reason=unknown_reason, similarity=similarity, margin=margin,
        threshold=threshold, model_version=model_version, snapshot=snapshot, details=details, too_late=too_late,
        liveness_edge=liveness_edge, liveness_frames=liveness_frames, liveness_server=liveness_server,
        second_factor=second_factor,
    )  # fmt: skip
    return access_decide_many([decision_input])[0]


def access_decide_many(inputs: Sequence[DecisionInput]) -> list[tuple[AccessEvent, bool]]:
    """:func:`access_decide` for several faces, in order: one policy query, one event INSERT.

    Several unknown faces at one door check the repeated-unknown alarm once (counting each face).
    """
    people = Person.objects.in_bulk({i.person_id for i in inputs if i.person_id})
    persons = [people.get(item.person_id) if item.person_id else None for item in inputs]
    requests: list[tuple[int, AccessRequest]] = []
    verdicts: list[tuple[Decision, Reason] | None] = []
    for n, (item, person) in enumerate(zip(inputs, persons, strict=True)):
        if item.too_late:
            verdicts.append((Decision.DENY, Reason.STALE_TIMESTAMP))
        elif item.door is None:
            verdicts.append((Decision.DENY, Reason.DOOR_UNASSIGNED))
        else:
            verdicts.append(None)
            unknown_reason = item.unknown_reason
            if person is None and unknown_reason == Reason.MATCHED:
                unknown_reason = Reason.UNKNOWN_FACE  # matched a person deleted since: nobody we know
            requests.append((n, AccessRequest(person, item.door, item.occurred_at, unknown_reason, item.liveness_edge)))
    for (n, _), result in zip(requests, access_evaluate_many([r for _, r in requests]), strict=True):
        verdicts[n] = (result.decision, result.reason)
    _second_factors(inputs, persons, verdicts)
    with transaction.atomic(savepoint=False):
        # cooldown and anti-passback read what earlier decisions recorded: serialised per person+door
        # and person+area until this transaction commits, so two workers deciding the same person at
        # the same instant decide one after the other (the second sees the first's event and presence)
        areas = _areas(inputs, persons)
        _decision_locks(inputs, persons, areas)
        repeats = _cooldown_repeats(inputs, persons, verdicts)
        for n, (decision, original) in repeats.items():
            verdicts[n] = (decision, Reason.SUPPRESSED_REPEAT)
            inputs[n].details = {**(inputs[n].details or {}), "repeat_of": original[0], "repeat_reason": original[1]}
        passback = _passback(inputs, persons, verdicts, repeats, areas)
        for n, violation in passback.items():
            inputs[n].details = {**(inputs[n].details or {}), "anti_passback": violation.as_details()}
            if violation.denies:
                verdicts[n] = (Decision.DENY, Reason.ANTI_PASSBACK)
        drafts = [_draft(*args) for args in zip(inputs, persons, verdicts, strict=True)]
        recorded = events_record(drafts)
        moves = [
            (person.pk, item.door.pk, item.occurred_at, event)
            for item, person, (event, created) in zip(inputs, persons, recorded, strict=True)
            if created and person is not None and item.door is not None and event.decision == Decision.GRANT
            and event.reason == Reason.MATCHED
        ]  # fmt: skip
        if moves:
            presences_record(moves, areas)
        metrics.decisions_count((event.decision, event.reason) for event, created in recorded if created)
        unknown_faces: Counter[Door] = Counter()
        attacks: Counter[Door] = Counter()
        mismatches: Counter[Door] = Counter()
        for item, person, (event, created) in zip(inputs, persons, recorded, strict=True):
            if created:
                event.door, event.person = item.door, person
                _notify(event, door=item.door, command=True, unknown_check=False)
                if event.reason == Reason.UNKNOWN_FACE and item.door is not None:
                    unknown_faces[item.door] += 1
                elif event.reason == Reason.PRESENTATION_ATTACK and item.door is not None:
                    attacks[item.door] += 1
                elif event.reason == Reason.SECOND_FACTOR_MISMATCH and item.door is not None:
                    mismatches[item.door] += 1
        for n, violation in passback.items():
            event, created = recorded[n]
            if created and not violation.denies:  # soft: granted, and the operators are told
                alarm_raise(
                    kind=Alarm.Kind.ANTI_PASSBACK, door=inputs[n].door, device_id=event.device_id,
                    device_uid=event.device_uid, event=event,
                    details={**violation.as_details(), "subject": str(event.subject_uid)},
                )  # fmt: skip
        for door, faces in unknown_faces.items():
            unknown_faces_check(door=door, new_faces=faces)
        for door, count in attacks.items():
            attacks_check(door=door, new_attacks=count)
        for door, count in mismatches.items():
            second_factor_mismatches_check(door=door, new=count)
        if any(created and event.device_id for event, created in recorded):
            # After the door commands (callbacks run in order): they are awaited together.
            transaction.on_commit(door_commands_flush)
    return recorded


def _second_factors(
    inputs: Sequence[DecisionInput], persons: Sequence[Person | None], verdicts: list[tuple[Decision, Reason] | None]
) -> None:
    """The second-factor rule (:mod:`accessctl.second_factor`) for the faces the policy granted at
    doors that may need one: a missing, late or wrong factor turns the grant into a denial."""
    for n, (item, person) in enumerate(zip(inputs, persons, strict=True)):
        door = item.door
        if person is None or door is None or door.second_factor == Door.SecondFactor.OFF:
            continue
        if verdicts[n] != (Decision.GRANT, Reason.MATCHED):
            continue
        result = factor_check(person=person, door=door, at=item.occurred_at, factor=item.second_factor)
        if result.details:
            item.details = {**(item.details or {}), **result.details}
        if result.reason is not None:
            verdicts[n] = (Decision.DENY, result.reason)


def _lock_key(*parts: object) -> int:
    """A signed 64-bit Postgres advisory-lock key for ``parts`` (stable across processes)."""
    digest = hashlib.blake2b(":".join(map(str, ("accessctl", *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _areas(inputs: Sequence[DecisionInput], persons: Sequence[Person | None]) -> dict[int, list[AreaDoor]]:
    """The anti-passback areas of the doors where someone was recognised (:func:`area_doors`), read
    once per batch for the locks, rule 10 and the presences."""
    return area_doors(
        list({item.door.pk for item, person in zip(inputs, persons, strict=True) if person is not None and item.door})
    )


def _decision_locks(
    inputs: Sequence[DecisionInput], persons: Sequence[Person | None], areas: Mapping[int, list[AreaDoor]]
) -> int:
    """Take the transaction-scoped advisory locks of these decisions: person+door for the doors with a
    cooldown, person+area for the doors of anti-passback areas (``areas``, :func:`_areas`; entry and
    exit: an exit moves the person too). One query for the locks (none when no door needs one),
    taken in key order (two batches never wait on each other in a cycle). Returns how many were taken."""
    pairs = {
        (person.pk, item.door)
        for item, person in zip(inputs, persons, strict=True)
        if person is not None and item.door is not None
    }
    if not pairs:
        return 0
    keys = {_lock_key("cooldown", person_id, door.pk) for person_id, door in pairs if door.cooldown_s > 0}
    keys |= {_lock_key("passback", person_id, a.area_id) for person_id, door in pairs for a in areas.get(door.pk, [])}
    if not keys:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k",
            [sorted(keys)],
        )
    return len(keys)


def _cooldown_repeats(
    inputs: Sequence[DecisionInput],
    persons: Sequence[Person | None],
    verdicts: Sequence[tuple[Decision, Reason] | None],
) -> dict[int, tuple[Decision, tuple[str, str]]]:
    """The inputs that repeat an earlier decision within their door's ``cooldown_s``: the same person
    at the same door, decided the same way (decision and reason) by a detection no more than
    ``cooldown_s`` earlier that was not itself a repeat. ``{index: (decision, (detection id, reason)
    of the original)}``. A repeat is recorded as ``suppressed_repeat`` and opens nothing; a verdict
    that differs (a presentation attack after a grant, a schedule that closed) is decided as usual.
    The window runs from the original decision, so a person still there after it is decided again.
    """
    wanted = [
        n
        for n, (item, person, verdict) in enumerate(zip(inputs, persons, verdicts, strict=True))
        if person is not None and verdict is not None and item.door is not None and item.door.cooldown_s > 0
    ]
    if not wanted:
        return {}
    earliest = min(inputs[n].occurred_at - dt.timedelta(seconds=inputs[n].door.cooldown_s) for n in wanted)  # type: ignore[union-attr]
    originals: list[tuple[int, int, dt.datetime, str, str, str]] = [  # person, door, at, detection, decision, reason
        (person_id, door_id, at, str(detection_id), decision, reason)
        for person_id, door_id, at, detection_id, decision, reason in AccessEvent.objects.filter(
            person_id__in={persons[n].pk for n in wanted},  # type: ignore[union-attr]
            door_id__in={inputs[n].door.pk for n in wanted},  # type: ignore[union-attr]
            source=AccessEvent.Source.DETECTION,
            occurred_at__gte=earliest,
        )
        .exclude(reason=Reason.SUPPRESSED_REPEAT)
        .order_by()
        .values_list("person_id", "door_id", "occurred_at", "detection_id", "decision", "reason")
    ]
    repeats: dict[int, tuple[Decision, tuple[str, str]]] = {}
    for n in sorted(wanted, key=lambda i: inputs[i].occurred_at):
        item, person, verdict = inputs[n], persons[n], verdicts[n]
        assert item.door is not None and person is not None and verdict is not None
        since = item.occurred_at - dt.timedelta(seconds=item.door.cooldown_s)
        earlier = [
            o for o in originals if o[0] == person.pk and o[1] == item.door.pk and since <= o[2] <= item.occurred_at
        ]
        latest = max(earlier, key=lambda o: o[2], default=None)
        if latest is not None and (latest[4], latest[5]) == (str(verdict[0]), str(verdict[1])):
            repeats[n] = (verdict[0], (latest[3], latest[5]))
        else:  # decided now: an original for the ones after it in this batch
            originals.append(
                (person.pk, item.door.pk, item.occurred_at, item.detection_id, str(verdict[0]), str(verdict[1]))
            )
    return repeats


def _passback(
    inputs: Sequence[DecisionInput],
    persons: Sequence[Person | None],
    verdicts: Sequence[tuple[Decision, Reason] | None],
    repeats: dict[int, object],
    areas: Mapping[int, list[AreaDoor]],
) -> dict[int, PassbackViolation]:
    """Rule 10 (:mod:`accessctl.passback`) for the faces granted now (not the suppressed repeats)."""
    granted = [
        n
        for n, (item, person, verdict) in enumerate(zip(inputs, persons, verdicts, strict=True))
        if n not in repeats
        and person is not None
        and item.door is not None
        and verdict == (Decision.GRANT, Reason.MATCHED)
    ]
    if not granted:
        return {}
    found = passback_evaluate([(persons[n], inputs[n].door) for n in granted], areas)  # type: ignore[misc]
    return {n: violation for n, violation in zip(granted, found, strict=True) if violation is not None}


def _draft(item: DecisionInput, person: Person | None, verdict: tuple[Decision, Reason] | None) -> EventDraft:
    assert verdict is not None, "every input has a verdict"
    return EventDraft(
        detection_id=item.detection_id, occurred_at=item.occurred_at, decision=verdict[0], reason=verdict[1],
        door_id=item.door.pk if item.door else None, device_id=item.device_id, device_uid=item.device_uid,
        person_id=person.pk if person else None, subject_uid=person.uid if person else None,
        similarity=item.similarity, margin=item.margin, threshold=item.threshold, model_version=item.model_version,
        liveness_edge=item.liveness_edge, liveness_frames=item.liveness_frames, liveness_server=item.liveness_server,
        liveness_threshold=liveness_threshold(item.door) if item.door is not None and not item.too_late else None,
        probes_fused=item.probes_fused, snapshot=item.snapshot, details=item.details,
    )  # fmt: skip


def _rejection_notify(event: AccessEvent) -> None:
    """Side effects of a rejected message's event: dashboards, webhooks, alarms for hostile input."""
    door = Door.objects.filter(pk=event.door_id).first() if event.door_id else None
    event.door = door
    _notify(event, door=door, command=False)


def rejection_record(
    *,
    detection_id: str | uuid.UUID,
    reason: Reason,
    message: str,
    device_uid: str,
    size: int,
    device_id: int | None = None,
    door_id: int | None = None,
    occurred_at: dt.datetime | None = None,
    details: dict[str, Any] | None = None,
) -> AccessEvent:
    """Record a rejected detection message (malformed, unknown device, bad signature, replay, ...)
    as a denied event and, the first time, tell the dashboards, the webhooks and the alarm rules.

    ``detection_id``: the device's id when the message is authentic, else one derived from the
    message bytes (a redelivered copy of the same bad message is recorded once). ``size``: the
    message's length in bytes.
    """
    event, created = event_record(
        detection_id=detection_id,
        occurred_at=occurred_at or timezone.now(),
        decision=Decision.DENY,
        reason=reason,
        device_id=device_id,
        door_id=door_id,
        device_uid=device_uid[:64],
        details={"error": message[:300], "bytes": size, **(details or {})},
    )
    if created:
        metrics.decisions_count([(event.decision, event.reason)])
        logger.warning("rejected detection from %s: %s (%s) event=%s", device_uid[:64], reason, message[:200], event.pk)
        _rejection_notify(event)
    return event


def late_detection_record(
    *, detection: p.Detection, device_id: int | None, device_uid: str, door_id: int | None, error: str
) -> AccessEvent:
    """A signed detection that arrived outside the timestamp window: denied ``stale_timestamp``,
    it never opens a door now. (One the device decided alone, with ``offline_decision``, is not
    late for its decision: it is staged and recorded by :mod:`accessctl.offline_decisions`.)
    """
    event, created = event_record(
        detection_id=detection.detection_id,
        occurred_at=dt.datetime.fromtimestamp(detection.captured_at, tz=dt.UTC),
        decision=Decision.DENY,
        reason=Reason.STALE_TIMESTAMP,
        door_id=door_id,
        device_id=device_id,
        device_uid=device_uid,
        model_version=detection.model_version or "",
        details={"error": error[:300], "sent_at": detection.sent_at},
    )
    if created:
        metrics.decisions_count([(event.decision, event.reason)])
        _rejection_notify(event)
    return event


def decision_repeat(*, event: AccessEvent, detection: p.Detection, now: float | None = None) -> None:
    """Send the door command of a recorded decision again: the device asked again (``detection``,
    a re-send) because the first answer never reached it.

    Nothing is recorded (the event exists). It still opens only while the detection is fresh
    (:func:`faceengine.protocol.check_detection_freshness`: for a re-send, also its capture): a
    re-send never opens a door late. The device applies one answer per detection, so a second
    copy of this command changes nothing.
    """
    now = time.time() if now is None else now
    stale = not p.detection_is_fresh(detection, now, settings.DEVICE_TIMESTAMP_WINDOW_S)
    opens = event.decision == Decision.GRANT and event.reason != Reason.SUPPRESSED_REPEAT and not stale
    _door_command(event, Door.objects.filter(pk=event.door_id).first() if opens else None, stale=stale)


def _notify(event: AccessEvent, *, door: Door | None, command: bool, unknown_check: bool = True) -> None:
    """Queue every side effect of a newly recorded event; all run after commit.

    ``unknown_check=False``: the caller checks the repeated-unknown alarm itself (once per door).
    """
    if command and event.device_id:
        # Not waiting for the broker here: the decision task waits once for all its commands.
        transaction.on_commit(lambda: _door_command(event, door, wait=False))
    realtime.event_broadcast(event)
    if event.reason != Reason.SUPPRESSED_REPEAT:  # a repeat is no new decision for integrators
        webhook_dispatch_access_event(event)  # deliveries are queued after commit
    _alarms(event, door, unknown_check=unknown_check)


def _door_command(event: AccessEvent, door: Door | None, *, stale: bool = False, wait: bool = True) -> None:
    """Send the event's decision to its device: ``open`` with the door's relay pulse for a grant,
    else ``deny``. ``stale``: the capture is too old for a grant to open now (denied as stale).
    ``wait=False``: see :func:`accessctl.door_commands.device_command_send` (the caller flushes)."""
    granted = event.decision == Decision.GRANT and event.reason != Reason.SUPPRESSED_REPEAT  # a repeat opens nothing
    opens = granted and not stale
    try:
        device_command_send(
            event.device_uid,
            p.CommandKind.OPEN if opens else p.CommandKind.DENY,
            reason=Reason.STALE_TIMESTAMP if granted and stale else event.reason,
            pulse_ms=door.relay_pulse_ms if (opens and door) else 0,
            detection_id=str(event.detection_id),
            wait=wait,
        )
    except Exception:
        # The event is recorded; the device falls back to its own timeout. Logged with ids.
        logger.exception("door command for event %s (device %s) failed", event.pk, event.device_uid)


def _alarms(event: AccessEvent, door: Door | None, *, unknown_check: bool = True) -> None:
    kind = _HOSTILE.get(Reason(event.reason))
    if event.reason == Reason.WATCHLIST:
        kind = Alarm.Kind.WATCHLIST
    if event.reason == Reason.PRESENTATION_ATTACK:
        # With the face (the dashboard shows the crop) and who it looked like.
        alarm_raise(
            kind=Alarm.Kind.PRESENTATION_ATTACK, door=door, device_id=event.device_id, device_uid=event.device_uid,
            event=event, details={
                "reason": event.reason, "liveness": event.liveness_edge, "threshold": event.liveness_threshold,
                "subject": str(event.subject_uid) if event.subject_uid else None, "snapshot": event.snapshot,
            },
        )  # fmt: skip
    elif kind is not None:
        alarm_raise(
            kind=kind, door=door, device_id=event.device_id, device_uid=event.device_uid, event=event,
            details={"reason": event.reason},
        )  # fmt: skip
    elif event.reason == Reason.UNKNOWN_FACE and door is not None and unknown_check:
        unknown_faces_check(door=door)
