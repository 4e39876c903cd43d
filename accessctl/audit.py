"""The access log: writing events (hash-chained, exactly once per detection) and verifying the chain.

``event_record`` is the only way events are written. It serialises writers with a transaction-level
advisory lock so each event's ``prev_hash`` is the hash of the event recorded just before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction

from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent

logger = logging.getLogger(__name__)

_CHAIN_LOCK_KEY = 0x61636365  # "acce": one advisory lock for the access-log chain
GENESIS_HASH = "0" * 64
_TABLE = AccessEvent._meta.db_table
#: Chained when any is set (see :func:`event_hash`).
LIVENESS_FIELDS = ("liveness_edge", "liveness_frames", "liveness_server", "liveness_threshold")


def event_hash(event: AccessEvent) -> str:
    """SHA-256 over the event's immutable fields and the previous hash (hex)."""
    body = {
        "prev": event.prev_hash,
        "detection_id": str(event.detection_id),
        "occurred_at": event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "source": event.source,
        "door": event.door_id,
        "device_uid": event.device_uid,
        "subject": str(event.subject_uid) if event.subject_uid else None,
        "decision": event.decision,
        "reason": event.reason,
        "similarity": None if event.similarity is None else round(event.similarity, 6),
        "margin": None if event.margin is None else round(event.margin, 6),
        "threshold": None if event.threshold is None else round(event.threshold, 6),
        "model_version": event.model_version,
        "details": event.details,
    }
    liveness = {name: getattr(event, name) for name in LIVENESS_FIELDS}
    if any(value is not None for value in liveness.values()):
        # Only when measured: events recorded before these columns existed keep their hashes.
        body.update({k: v if v is None or k == "liveness_frames" else round(v, 6) for k, v in liveness.items()})
    if event.allowlist_version is not None:
        # Only on a device's offline decision: every other event keeps the hash it had before.
        body["allowlist_version"] = event.allowlist_version
    if event.probes_fused is not None:
        # Only on a matched face: events recorded before the column existed keep their hashes.
        body["probes_fused"] = event.probes_fused
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class EventDraft:
    """An access event to be recorded (see :func:`event_record` for the fields)."""

    detection_id: uuid.UUID | str | None
    occurred_at: datetime
    decision: Decision
    reason: Reason
    source: str = AccessEvent.Source.DETECTION
    door_id: int | None = None
    device_id: int | None = None
    device_uid: str = ""
    person_id: int | None = None
    subject_uid: uuid.UUID | None = None
    actor_id: int | None = None
    similarity: float | None = None
    margin: float | None = None
    threshold: float | None = None
    model_version: str = ""
    liveness_edge: float | None = None
    liveness_frames: int | None = None
    liveness_server: float | None = None
    liveness_threshold: float | None = None
    allowlist_version: int | None = None
    probes_fused: int | None = None
    snapshot: str = ""
    details: dict[str, Any] | None = None


def event_record(
    *,
    detection_id: uuid.UUID | str | None,
    occurred_at: datetime,
    decision: Decision,
    reason: Reason,
    source: str = AccessEvent.Source.DETECTION,
    door_id: int | None = None,
    device_id: int | None = None,
    device_uid: str = "",
    person_id: int | None = None,
    subject_uid: uuid.UUID | None = None,
    actor_id: int | None = None,
    similarity: float | None = None,
    margin: float | None = None,
    threshold: float | None = None,
    model_version: str = "",
    liveness_edge: float | None = None,
    liveness_frames: int | None = None,
    liveness_server: float | None = None,
    liveness_threshold: float | None = None,
    allowlist_version: int | None = None,
    snapshot: str = "",
    details: dict[str, Any] | None = None,
) -> tuple[AccessEvent, bool]:
    """Append one event; returns ``(event, created)``.

    Idempotent on ``detection_id``: when an event for it already exists, that event is returned
    with ``created=False`` and nothing is written (a redelivered task or replayed message).
    """
    draft = EventDraft(
        detection_id=detection_id, occurred_at=occurred_at, decision=decision, reason=reason, source=source,
        door_id=door_id, device_id=device_id, device_uid=device_uid, person_id=person_id,
        subject_uid=subject_uid, actor_id=actor_id, similarity=similarity, margin=margin, threshold=threshold,
        model_version=model_version, liveness_edge=liveness_edge, liveness_frames=liveness_frames,
        liveness_server=liveness_server, liveness_threshold=liveness_threshold, allowlist_version=allowlist_version,
        snapshot=snapshot, details=details,
    )  # fmt: skip
    return events_record([draft])[0]


def events_record(drafts: Sequence[EventDraft]) -> list[tuple[AccessEvent, bool]]:
    """Append several events in order, under one chain lock and one INSERT; ``(event, created)``
    per draft, as :func:`event_record` (a detection seen before, or twice in ``drafts``, is not
    written again: its first event is returned with ``created=False``)."""
    ids = [uuid.UUID(str(d.detection_id)) if d.detection_id else uuid.uuid4() for d in drafts]
    if not drafts:
        return []
    # No savepoint: every writer takes the chain lock first and checks for the detections after
    # it, so neither the unique detection ids nor the chain can conflict here. Outside a
    # transaction this is one; inside the caller's, the lock is held until the caller commits.
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
            # A new statement after the lock: it sees every event committed before we got it.
            cursor.execute(
                f"SELECT ARRAY(SELECT id FROM {_TABLE} WHERE detection_id = ANY(%s::uuid[])), "
                f"(SELECT hash FROM {_TABLE} ORDER BY id DESC LIMIT 1)",
                [ids],
            )
            existing_ids, last = cursor.fetchone()
        known: dict[uuid.UUID, AccessEvent] = {}
        if existing_ids:
            known = {e.detection_id: e for e in AccessEvent.objects.filter(pk__in=existing_ids)}
        results: list[tuple[AccessEvent, bool]] = []
        new: list[AccessEvent] = []
        prev = last or GENESIS_HASH
        for detection_id, draft in zip(ids, drafts, strict=True):
            if detection_id in known:
                results.append((known[detection_id], False))
                continue
            event = AccessEvent(
                **{f.name: getattr(draft, f.name) for f in fields(EventDraft)},
                prev_hash=prev,
            )
            event.detection_id, event.decision, event.reason = detection_id, str(draft.decision), str(draft.reason)
            event.details = draft.details or {}
            event.hash = prev = event_hash(event)
            known[detection_id] = event
            new.append(event)
            results.append((event, True))
        AccessEvent.objects.bulk_create(new)
    for event in new:
        logger.info(
            "event %s detection=%s device=%s door=%s %s/%s",
            event.pk, event.detection_id, event.device_uid or "-", event.door_id or "-", event.decision, event.reason,
        )  # fmt: skip
    return results


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_broken_id: int | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.first_broken_id is None


def chain_verify(batch_size: int = 5000) -> ChainReport:
    """Walk the log in insertion order; report the first event whose link or hash is wrong."""
    expected_prev = GENESIS_HASH
    checked = 0
    first = True
    for event in AccessEvent.objects.order_by("id").iterator(chunk_size=batch_size):
        # After retention purges the oldest events, the chain starts at the oldest kept one.
        if not first and event.prev_hash != expected_prev:
            return ChainReport(checked, event.pk, "prev_hash does not match the previous event")
        if event_hash(event) != event.hash:
            return ChainReport(checked, event.pk, "hash does not match the event's content")
        expected_prev = event.hash
        first = False
        checked += 1
    return ChainReport(checked, None)
