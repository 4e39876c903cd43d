"""Record the decisions a door took alone (no server) and check them against the server's view.

A detection that carries an ``offline_decision`` (``faceengine.protocol.OfflineDecision``) was
decided at the door already: the door opened, or did not, while it could not reach the server.
Whether it reaches the bridge within the freshness window (the link came back quickly) or long
after (replayed from the device's spool), it follows this one path, called by the decision task
(``recognition.detections``) in the transaction that unstages it:

1. the event is recorded exactly once (idempotent on ``detection_id``) with the device's verdict:
   its original time (``captured_at``), source ``device_offline``, reason
   :func:`faceengine.protocol.offline_reason`, grant iff the door opened, the person the device
   named (``person_ref``, a person uid; an unknown ref stays in the details), the device's
   similarity, liveness and allow-list version;
2. the server's verdict, with what it knows now, goes with it (``details["server"]``): the policy
   for the face the server recognised itself when it could (crop, or an embedding in a model
   version it has a gallery for), else for the person the device named, at the original time;
3. never an ``open``: the door decided already, and an opening now would be minutes late; the
   answer is a ``deny`` naming the recorded reason, so the device knows it is in the log;
4. a grant the server would deny now (e.g. the person was suspended while the door was cut off)
   raises an ``offline_disagreement`` alarm with both verdicts; a denial the server would have
   granted is only recorded (``details["agrees"] = False``); a presentation attack the door
   refused alone raises the ``presentation_attack`` alarm, as online.

Fail-safe / fail-secure decisions (basis ``fail_safe`` / ``fail_secure``) are recorded the same
way, as ``offline_allowed`` / ``offline_denied``; a fail-safe release raises no disagreement alarm
at a door whose fail mode is ``safe`` (the site chose it, for everyone), and does at any other
door (it opened against its configuration).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accessctl import metrics, realtime
from accessctl.alarms import alarm_raise
from accessctl.audit import EventDraft, events_record
from accessctl.codes import Decision, Reason
from accessctl.decisions import DecisionInput
from accessctl.door_commands import device_command_send, door_commands_flush
from accessctl.models import AccessEvent, Alarm, Door, Person
from accessctl.policy import AccessRequest, access_evaluate_many
from accessctl.webhooks import webhook_dispatch_access_event
from faceengine import protocol as p

logger = logging.getLogger(__name__)

#: The offline basis of a fail-safe release (the door opens for everyone while cut off).
FAIL_SAFE_BASIS = "fail_safe"


@dataclass
class OfflineInput:
    """A detection a device decided alone, ready to be recorded (see :func:`offline_decisions_record`).

    ``detection``: where and when, the liveness evidence, the crop and details; when
    ``recognised`` its ``person_id`` / ``unknown_reason`` / ``similarity`` / ``threshold`` /
    ``model_version`` are the server's own match of the face, else the server could not compare
    it (no crop, a model version it has no gallery for, a face too small: ``unknown_reason`` says
    why). ``received_at``: when the bridge received it; ``late``: it arrived outside the freshness
    window (synced after an outage). ``payload_sha256``: the detection's evidence digest, kept to
    tell a redelivered copy from a different payload under the same id.
    """

    detection: DecisionInput
    offline: p.OfflineDecision
    recognised: bool
    received_at: dt.datetime
    late: bool
    sent_at: float | None = None
    payload_sha256: str = ""


@dataclass(frozen=True)
class _Verdict:
    decision: Decision
    reason: Reason
    person: Person | None = None


def _person_uid(ref: str | None) -> str | None:
    try:
        return str(uuid.UUID(ref)) if ref else None
    except ValueError:
        return None


def _device_verdict(offline: p.OfflineDecision) -> tuple[Decision, Reason]:
    opened = offline.action == p.OfflineAction.OPEN
    reason = p.offline_reason(action=offline.action, basis=offline.basis, reason=offline.reason)
    return (Decision.GRANT if opened else Decision.DENY), reason


def offline_decisions_record(inputs: Sequence[OfflineInput]) -> list[tuple[AccessEvent, bool]]:
    """Record offline decisions in order, with the server's verdict; ``(event, created)`` each.

    One policy query and one INSERT for all of them. A detection recorded before (a redelivered
    task) is returned with ``created=False`` and nothing is repeated. Side effects (dashboards,
    webhooks, the disagreement alarm) start after commit; the device's answer is a ``deny`` naming
    the recorded reason (:func:`offline_decisions_answer`), never an ``open``.
    """
    if not inputs:
        return []
    referenced = {_person_uid(item.offline.person_ref) for item in inputs} - {None}
    by_uid = {str(person.uid): person for person in Person.objects.filter(uid__in=referenced)}
    recognised = Person.objects.in_bulk(
        {item.detection.person_id for item in inputs if item.recognised and item.detection.person_id}
    )
    named = [by_uid.get(_person_uid(item.offline.person_ref) or "") for item in inputs]
    requests: list[AccessRequest] = []
    slots: list[tuple[int, str]] = []
    for n, (item, person) in enumerate(zip(inputs, named, strict=True)):
        det = item.detection
        if det.door is None:
            continue
        if item.offline.person_ref is not None or not item.recognised:
            # The device's claim, judged with today's data (an unknown ref is nobody we know).
            unknown = Reason.MATCHED if person is not None else Reason.UNKNOWN_FACE
            requests.append(AccessRequest(person, det.door, det.occurred_at, unknown, det.liveness_edge))
            slots.append((n, "named"))
        if item.recognised:
            seen = recognised.get(det.person_id) if det.person_id else None
            unknown = det.unknown_reason
            if seen is None and unknown == Reason.MATCHED:
                unknown = Reason.UNKNOWN_FACE  # matched a person deleted since
            requests.append(AccessRequest(seen, det.door, det.occurred_at, unknown, det.liveness_edge))
            slots.append((n, "recognised"))
    verdicts: dict[tuple[int, str], _Verdict] = {}
    for slot, request, result in zip(slots, requests, access_evaluate_many(requests), strict=True):
        verdicts[slot] = _Verdict(result.decision, result.reason, request.person)
    drafts: list[EventDraft] = []
    servers: list[_Verdict] = []
    for n, (item, person) in enumerate(zip(inputs, named, strict=True)):
        server = verdicts.get((n, "recognised")) or verdicts.get((n, "named"))
        if server is None:
            server = _Verdict(Decision.DENY, Reason.DOOR_UNASSIGNED)
        servers.append(server)
        drafts.append(_draft(item, person, server, verdicts.get((n, "named"))))
    with transaction.atomic():
        recorded = events_record(drafts)
        for item, person, server, (event, created) in zip(inputs, named, servers, recorded, strict=True):
            if created:
                event.door, event.person = item.detection.door, person
                _notify(event, item, server)
        created_now = [(event, item) for item, (event, created) in zip(inputs, recorded, strict=True) if created]
        metrics.decisions_count((event.decision, event.reason) for event, _ in created_now)
        metrics.on_commit(lambda: _latency_observe([item for _, item in created_now]))
        answers = [event for event, _ in recorded if event.source == AccessEvent.Source.DEVICE_OFFLINE]
        transaction.on_commit(lambda: offline_decisions_answer(answers))
    return recorded


def offline_decisions_answer(events: Sequence[AccessEvent]) -> None:
    """Tell each device its offline decision is in the log: a ``deny`` naming the recorded reason
    (never ``open``: the door acted when it decided; a late answer must not open it). Without an
    answer the device would keep re-sending it and report it overdue (shown ``degraded``)."""
    for event in events:
        try:
            device_command_send(
                event.device_uid, p.CommandKind.DENY, reason=event.reason, detection_id=str(event.detection_id),
                wait=False,
            )  # fmt: skip
        except Exception:  # recorded; the device re-sends and the copy is answered then
            logger.exception("answer to offline decision %s (device %s) not sent", event.detection_id, event.device_uid)
    if events:
        door_commands_flush()


def _latency_observe(items: Sequence[OfflineInput]) -> None:
    """The device's own time to decide (capture to decision), the ``offline`` decision latency."""
    for item in items:
        metrics.decision_latency_observe("offline", item.offline.decided_at - item.detection.occurred_at.timestamp())


def _verdict_details(verdict: _Verdict) -> dict[str, Any]:
    return {
        "decision": str(verdict.decision),
        "reason": str(verdict.reason),
        "person": str(verdict.person.uid) if verdict.person is not None else None,
    }


def _draft(item: OfflineInput, person: Person | None, server: _Verdict, named: _Verdict | None) -> EventDraft:
    det, offline = item.detection, item.offline
    decision, reason = _device_verdict(offline)
    synced_after_s = max(0.0, (item.received_at - det.occurred_at).total_seconds())
    server_details: dict[str, Any] = {
        **_verdict_details(server),
        "basis": "recognition" if item.recognised else "person_ref",
        "checked_at": timezone.now().isoformat(),
    }
    if item.recognised:
        server_details["recognition"] = {
            "reason": str(det.unknown_reason),
            "similarity": det.similarity,
            "threshold": det.threshold,
            "model_version": det.model_version,
        }
    elif det.unknown_reason not in (Reason.UNKNOWN_FACE, Reason.MATCHED):
        server_details["recognition_unavailable"] = str(det.unknown_reason)  # model_mismatch, low_quality, ...
    if named is not None and item.recognised:
        server_details["person_ref_verdict"] = _verdict_details(named)
    details: dict[str, Any] = {
        **(det.details or {}),
        "offline_decision": offline.to_dict(),
        "received_at": item.received_at.isoformat(),
        "synced_after_s": round(synced_after_s, 3),
        "late": item.late,
        "server": server_details,
        "agrees": server.decision == decision,
        "door_fail_mode": det.door.fail_mode if det.door is not None else None,
    }
    ahead_s = (det.occurred_at - item.received_at).total_seconds()
    if ahead_s > settings.DEVICE_TIMESTAMP_WINDOW_S:
        # Seen "in the future": the device's clock is wrong (or its key in the wrong hands). Kept
        # with the time it claims, flagged; the dashboard and the API show it.
        details["clock_ahead_s"] = round(ahead_s, 3)
    if item.sent_at is not None:
        details["sent_at"] = item.sent_at
    if item.payload_sha256:
        details["payload_sha256"] = item.payload_sha256
    if offline.person_ref is not None and person is None:
        details["person_ref_unknown"] = offline.person_ref[:64]
    return EventDraft(
        detection_id=det.detection_id, occurred_at=det.occurred_at, decision=decision, reason=reason,
        source=AccessEvent.Source.DEVICE_OFFLINE, door_id=det.door.pk if det.door else None, device_id=det.device_id,
        device_uid=det.device_uid, person_id=person.pk if person else None,
        subject_uid=person.uid if person else None, similarity=offline.similarity,
        model_version=det.model_version, liveness_edge=det.liveness_edge, liveness_frames=det.liveness_frames,
        liveness_server=det.liveness_server, allowlist_version=offline.allowlist_version, snapshot=det.snapshot,
        details=details,
    )  # fmt: skip


def disagrees(event: AccessEvent) -> bool:
    """True for an offline grant the server would deny: what the alarm is about. A fail-safe
    release at a door whose fail mode is ``safe`` is what the site chose (for everyone): no alarm;
    at a door set to anything else it is a door that opened against its configuration."""
    details = event.details or {}
    server = details.get("server") or {}
    basis = (details.get("offline_decision") or {}).get("basis")
    if event.source != AccessEvent.Source.DEVICE_OFFLINE or event.decision != Decision.GRANT:
        return False
    if basis == FAIL_SAFE_BASIS and details.get("door_fail_mode") == Door.FailMode.SAFE:
        return False
    return server.get("decision") == Decision.DENY


def _notify(event: AccessEvent, item: OfflineInput, server: _Verdict) -> None:
    """Dashboards and webhooks after commit; the disagreement alarm in the same transaction."""
    realtime.event_broadcast(event)
    webhook_dispatch_access_event(event)
    if disagrees(event):
        alarm_raise(
            kind=Alarm.Kind.OFFLINE_DISAGREEMENT, door=item.detection.door, device_id=event.device_id,
            device_uid=event.device_uid, event=event, details={
                "event_id": event.pk, "detection_id": str(event.detection_id),
                "occurred_at": event.occurred_at.isoformat(), "allowlist_version": event.allowlist_version,
                "device": {"decision": event.decision, "reason": event.reason,
                           "person": str(event.subject_uid) if event.subject_uid else None},
                "server": _verdict_details(server),
            },
        )  # fmt: skip
        logger.warning(
            "offline grant %s at %s (device %s) disagrees with the server: %s",
            event.detection_id, event.door_id or "-", event.device_uid, server.reason,
        )  # fmt: skip
    elif event.reason == Reason.OFFLINE_PRESENTATION_ATTACK:
        # A photo or a screen held up to the door while it was cut off: the same alarm as online.
        alarm_raise(
            kind=Alarm.Kind.PRESENTATION_ATTACK, door=item.detection.door, device_id=event.device_id,
            device_uid=event.device_uid, event=event, details={
                "reason": event.reason, "liveness": event.liveness_edge, "offline": True,
                "subject": str(event.subject_uid) if event.subject_uid else None, "snapshot": event.snapshot,
            },
        )  # fmt: skip
    if not event.details.get("agrees", True) and event.decision == Decision.DENY:
        logger.info("offline denial %s (device %s): the server would grant", event.detection_id, event.device_uid)
