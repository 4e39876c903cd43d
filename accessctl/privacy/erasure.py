"""Data-subject rights: erase everything held about a person, or export it as a zip.

Erasure (``person_erase``) removes, in one transaction:

* enrolment photos and their face crops (files and rows), and every face embedding;
* the shadow decisions that matched the person (``recognition.ShadowDecision``: a candidate model's
  scores of their face);
* the face crops of the person's access events (files), clearing
  ``AccessEvent.snapshot``;
* the link from the person's events to the person (``person_id`` -> NULL). The event keeps
  ``subject_uid``, a random pseudonym that maps to nobody once the ``Person`` row is gone, so the
  access log stays complete and its hash chain stays valid (the chain never covered ``person_id``
  or ``snapshot``);
* person-identifying keys in the details of alarms raised for those events, and in stored
  webhook payloads about the person (a ``person.deleted`` webhook naming only the pseudonym is sent);
* the ``Person`` row (group memberships go with it).

The erasure itself is recorded in the access log as a system event (actor, pseudonym, counts).
Files are deleted last inside the transaction: when storage fails, the database changes roll
back and the erasure can simply be run again.

What this cannot reach: crops of the person that were never matched to them (their events name
nobody; they expire under the unknown-crop retention policy), ``AccessEvent.details``
(covered by the hash chain; the decision pipeline must never put names there), webhook payloads
already received by integrators, and database backups (they age out under the backup policy).

Export (``person_export``) returns a zip: ``person.json`` with every field, group, event, photo
record and embedding held about the person, and ``files/`` with the photo, crop and snapshot
images. Embedding vectors are included: they are biometric personal data under GDPR art. 4(14),
so the right of access covers them (they are only useful with the same model version).
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.apps import apps
from django.core.files.storage import Storage, default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Alarm, Person, WebhookDelivery
from accessctl.storage import storage_delete_many
from accessctl.webhooks import EventType, webhook_dispatch

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "accessctl-person-export/1"
# The erasure itself is a system record in the log (decision "deny": the person's access ended).
ERASURE_REASON = Reason.PERSON_ERASED
# Keys dropped from Alarm.details of the erased person's events.
_WEBHOOK_PERSON_KEYS = ("name", "external_id", "valid_from", "valid_until", "kind", "status", "notes")
_ALARM_PERSON_KEYS = ("person", "person_id", "person_uid", "person_name", "name", "external_id")


class ErasureError(Exception):
    """The person cannot be found or erased."""


@dataclass(frozen=True)
class ErasureReport:
    subject_uid: uuid.UUID
    photos_deleted: int
    embeddings_deleted: int
    events_pseudonymised: int
    snapshots_cleared: int
    alarms_scrubbed: int
    webhook_payloads_scrubbed: int
    files_deleted: int
    bytes_deleted: int
    audit_event_id: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["subject_uid"] = str(self.subject_uid)
        return out


def person_find(*, ident: str) -> Person:
    """A person by pseudonymous uid, primary key or HR ``external_id``."""
    query = Q(external_id=ident)
    try:
        query |= Q(uid=uuid.UUID(ident))
    except ValueError:
        pass
    if ident.isdigit():
        query |= Q(pk=int(ident))
    found = list(Person.objects.filter(query)[:2])
    if not found:
        raise ErasureError(f"no person matches {ident!r}")
    if len(found) > 1:
        raise ErasureError(f"{ident!r} matches several people; use the uid")
    return found[0]


def _photo_model() -> Any:
    return apps.get_model("recognition", "EnrollmentPhoto")


def _embedding_model() -> Any:
    return apps.get_model("recognition", "FaceEmbedding")


def _person_events(person: Person) -> Any:
    return AccessEvent.objects.filter(Q(person=person) | Q(subject_uid=person.uid))


def _size(storage: Storage, name: str) -> int:
    try:
        return int(storage.size(name))
    except (FileNotFoundError, OSError):
        return 0


def _webhook_payloads_scrub(person: Person) -> int:
    """Drop identifying keys from stored webhook payloads about ``person`` (sent or pending)."""
    scrubbed = 0
    deliveries = WebhookDelivery.objects.filter(Q(payload__person_id=person.pk) | Q(payload__uid=str(person.uid)))
    for delivery in deliveries.only("id", "payload"):
        payload = delivery.payload if isinstance(delivery.payload, dict) else {}
        kept = {k: v for k, v in payload.items() if k not in _WEBHOOK_PERSON_KEYS}
        if kept != payload:
            WebhookDelivery.objects.filter(pk=delivery.pk).update(payload={**kept, "erased": True})
            scrubbed += 1
    return scrubbed


def person_erase(*, person: Person, actor: Any = None, storage: Storage | None = None) -> ErasureReport:
    """Erase ``person`` (right to erasure); ``actor`` is the user doing it (recorded in the log)."""
    storage = storage or default_storage
    subject_uid = person.uid
    person_pk = person.pk
    with transaction.atomic():
        person = Person.objects.select_for_update().get(pk=person_pk)
        photos = list(_photo_model().objects.filter(person=person))
        names = [f.name for p in photos for f in (p.image, p.crop) if f and f.name]
        events = _person_events(person)
        snapshot_names = list(events.exclude(snapshot="").values_list("snapshot", flat=True))
        names = list(dict.fromkeys(names + snapshot_names))

        alarms_scrubbed = 0
        for alarm in Alarm.objects.filter(event__in=events).only("id", "details"):
            details = alarm.details if isinstance(alarm.details, dict) else {}
            kept = {k: v for k, v in details.items() if k not in _ALARM_PERSON_KEYS}
            if kept != details:
                Alarm.objects.filter(pk=alarm.pk).update(details=kept)
                alarms_scrubbed += 1

        webhooks_scrubbed = _webhook_payloads_scrub(person)
        snapshots_cleared = events.exclude(snapshot="").update(snapshot="")
        events_pseudonymised = events.filter(person__isnull=False).update(person=None)
        embeddings_deleted = _embedding_model().objects.filter(person=person).delete()[0]
        apps.get_model("recognition", "ShadowDecision").objects.filter(
            Q(active_person=person) | Q(shadow_person=person)
        ).delete()
        _photo_model().objects.filter(person=person).delete()
        photos_deleted = len(photos)
        person.delete()

        audit, _ = event_record(
            detection_id=None,
            occurred_at=timezone.now(),
            decision=Decision.DENY,
            reason=ERASURE_REASON,
            source=AccessEvent.Source.SYSTEM,
            subject_uid=subject_uid,
            actor_id=getattr(actor, "pk", None),
            details={
                "action": "person_erased",
                "photos": photos_deleted,
                "embeddings": embeddings_deleted,
                "events_pseudonymised": events_pseudonymised,
                "files": len(names),
            },
        )
        # Integrators (HR sync) learn that the person is gone; the payload names nobody.
        webhook_dispatch(EventType.PERSON_DELETED, {"person_id": person_pk, "uid": str(subject_uid), "erased": True})
        # Last, still inside the transaction: if storage fails, the database changes roll back.
        bytes_deleted = sum(_size(storage, n) for n in names)
        storage_delete_many(storage, names)

    report = ErasureReport(
        subject_uid=subject_uid,
        photos_deleted=photos_deleted,
        embeddings_deleted=embeddings_deleted,
        events_pseudonymised=events_pseudonymised,
        snapshots_cleared=snapshots_cleared,
        alarms_scrubbed=alarms_scrubbed,
        webhook_payloads_scrubbed=webhooks_scrubbed,
        files_deleted=len(names),
        bytes_deleted=bytes_deleted,
        audit_event_id=audit.pk,
    )
    logger.info(
        "erased person %s (subject %s) by user %s: %d photos, %d embeddings, %d events pseudonymised, "
        "%d files; event %s",
        person_pk, subject_uid, getattr(actor, "pk", None), photos_deleted, embeddings_deleted,
        events_pseudonymised, len(names), audit.pk,
    )  # fmt: skip
    return report


# --------------------------------------------------------------------------- export


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _file_entry(storage: Storage, name: str, files: dict[str, bytes], missing: list[str]) -> str | None:
    """Read ``name`` into ``files`` (zip path ``files/<name>``); returns the zip path or None."""
    if not name:
        return None
    path = f"files/{name}"
    if path in files:
        return path
    try:
        with storage.open(name, "rb") as handle:
            files[path] = handle.read()
    except (FileNotFoundError, OSError):
        missing.append(name)
        return None
    return path


def person_export(*, person: Person, storage: Storage | None = None) -> bytes:
    """Everything held about ``person`` as a zip (``person.json`` + ``files/``)."""
    storage = storage or default_storage
    files: dict[str, bytes] = {}
    missing: list[str] = []
    photos = []
    for photo in _photo_model().objects.filter(person=person).order_by("id"):
        photos.append(
            {
                "id": photo.pk,
                "status": photo.status,
                "uploaded_at": _iso(photo.uploaded_at),
                "quality_reason": photo.quality_reason,
                "quality_message": photo.quality_message,
                "quality": photo.quality,
                "box": photo.box,
                "image": _file_entry(storage, photo.image.name if photo.image else "", files, missing),
                "crop": _file_entry(storage, photo.crop.name if photo.crop else "", files, missing),
            }
        )
    embeddings = []
    for emb in _embedding_model().objects.filter(person=person).order_by("id"):
        vector = [float(x) for x in emb.embedding]
        embeddings.append(
            {
                "id": emb.pk,
                "photo_id": emb.photo_id,
                "model_version": emb.model_version,
                "quality": emb.quality,
                "created_at": _iso(emb.created_at),
                "dim": len(vector),
                "vector": vector,
            }
        )
    events = []
    for ev in _person_events(person).select_related("door").order_by("id"):
        events.append(
            {
                "id": ev.pk,
                "detection_id": str(ev.detection_id),
                "occurred_at": _iso(ev.occurred_at),
                "recorded_at": _iso(ev.recorded_at),
                "source": ev.source,
                "door": ev.door.name if ev.door else None,
                "device_uid": ev.device_uid,
                "decision": ev.decision,
                "reason": ev.reason,
                "similarity": ev.similarity,
                "margin": ev.margin,
                "threshold": ev.threshold,
                "model_version": ev.model_version,
                "details": ev.details,
                "snapshot": _file_entry(storage, ev.snapshot, files, missing),
            }
        )
    shadow = apps.get_model("recognition", "ShadowDecision").objects.filter(
        Q(active_person=person) | Q(shadow_person=person)
    )
    shadow_decisions = [
        {
            "event_id": row.event_id,
            "model_version": row.model.model_version,
            "occurred_at": _iso(row.occurred_at),
            "active_model_version": row.active_model_version,
            "active_matched_you": row.active_person_id == person.pk,
            "active_decision": row.active_decision,
            "active_similarity": row.active_similarity,
            "shadow_matched_you": row.shadow_person_id == person.pk,
            "shadow_decision": row.shadow_decision,
            "shadow_similarity": row.shadow_similarity,
        }
        for row in shadow.select_related("model").order_by("id")
    ]
    document = {
        "format": EXPORT_FORMAT,
        "exported_at": timezone.now().isoformat(),
        "person": {
            "uid": str(person.uid),
            "name": person.name,
            "external_id": person.external_id,
            "status": person.status,
            "kind": person.kind,
            "valid_from": _iso(person.valid_from),
            "valid_until": _iso(person.valid_until),
            "watchlist": person.watchlist,
            "notes": person.notes,
            "created_at": _iso(person.created_at),
            "updated_at": _iso(person.updated_at),
        },
        "access_groups": [{"id": g.pk, "name": g.name} for g in person.access_groups.order_by("name")],
        "enrolment_photos": photos,
        "embeddings": embeddings,
        "access_events": events,
        "shadow_decisions": shadow_decisions,  # a candidate face model's verdicts, compared before its use
        "missing_files": missing,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("person.json", json.dumps(document, indent=2, ensure_ascii=False, default=str))
        zf.writestr("README.txt", _README)
        for path, data in sorted(files.items()):
            zf.writestr(path, data, compress_type=zipfile.ZIP_STORED)  # JPEGs do not compress
    logger.info(
        "exported person %s: %d photos, %d embeddings, %d events, %d files",
        person.pk, len(photos), len(embeddings), len(events), len(files),
    )  # fmt: skip
    return buffer.getvalue()


_README = """\
Personal data export (accessctl).

person.json      every record held about you: your person record, access groups, enrolment
                 photos (with the quality check's verdict), face embeddings (the numeric face
                 templates used for recognition, with the model that made them), access events
                 (door, time, decision, reason, match similarity) and shadow decisions (how a
                 candidate face model, tried out beside the one in use, matched your face).
files/           the enrolment photos, face crops and door snapshots referenced from person.json.
"""
