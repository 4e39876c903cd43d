"""Stage verified detections for their decision, and recover those whose decision task was lost.

The bridge (``devices.ingest``) verifies a message and calls :func:`detection_stage`; the decision
(``recognition.detections``) unstages it in the transaction that records its event; the periodic
sweep (:func:`inbound_requeue`) enqueues again what lingers (worker killed, broker restarted).
Enqueueing itself is the caller's: a function that takes detection ids (``recognition.queueing``
batches them for the bridge, ``recognition.tasks.decisions_send`` sends them directly).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from psycopg.types.json import Jsonb

from accessctl.models import AccessEvent
from accessctl.storage import crop_store
from faceengine import protocol as p
from recognition.models import InboundDetection

logger = logging.getLogger(__name__)

#: A device re-sending a detection that has been staged this long gets its task enqueued again.
REQUEUE_ON_RESEND_AFTER_S = 5.0


class Staged(StrEnum):
    """What :func:`detection_stage` did."""

    STAGED = "staged"  # new: staged, decision enqueued
    REQUEUED = "requeued"  # staged already, its task may be lost: enqueued again
    DUPLICATE = "duplicate"  # staged already and queued: nothing to do
    DECIDED = "decided"  # its event exists: a device asking again or a replay (the caller's call)


_STAGE_SQL = (
    f"INSERT INTO {InboundDetection._meta.db_table} "
    "(detection_id, device_uid, device_id, door_id, received_at, payload, crop, enqueued) "
    "SELECT %s, %s, %s, %s, now(), %s, %s, 1 "
    f"WHERE NOT EXISTS (SELECT 1 FROM {AccessEvent._meta.db_table} WHERE detection_id = %s) "
    "ON CONFLICT (detection_id) DO NOTHING RETURNING id"
)


def detection_stage(
    *,
    detection: p.Detection,
    device_uid: str,
    device_id: int | None,
    door_id: int | None,
    enqueue: Callable[[str], None],
) -> Staged:
    """Stage a verified, fresh detection and ``enqueue`` its decision (after commit inside a transaction).

    One statement stages it unless it is staged already or decided already (the unique
    detection id and the access log say so), which keeps the bridge's per-message cost to one
    round trip.
    """
    payload = detection.to_dict()
    payload.pop("crop_jpeg", None)
    captured_at = dt.datetime.fromtimestamp(detection.captured_at, tz=dt.UTC)
    jpeg = detection.crop_jpeg
    crop = crop_store(detection_id=detection.detection_id, jpeg=jpeg, captured_at=captured_at) if jpeg else ""
    with connection.cursor() as cursor:
        cursor.execute(
            _STAGE_SQL,
            [detection.detection_id, device_uid, device_id, door_id, Jsonb(payload), crop, detection.detection_id],
        )
        staged = cursor.fetchone() is not None
    if staged:
        if connection.in_atomic_block:
            transaction.on_commit(lambda: enqueue(detection.detection_id))
        else:
            enqueue(detection.detection_id)
        logger.debug("staged detection %s from %s", detection.detection_id, device_uid)
        return Staged.STAGED
    if crop:
        default_storage.delete(crop)
    if AccessEvent.objects.filter(detection_id=detection.detection_id).exists():
        return Staged.DECIDED
    if _enqueue_again(detection):
        enqueue(detection.detection_id)
        logger.info(
            "detection %s from %s came again (attempt %d) while staged: enqueued again",
            detection.detection_id, device_uid, detection.attempt,
        )  # fmt: skip
        return Staged.REQUEUED
    logger.info("duplicate detection %s from %s ignored (already staged)", detection.detection_id, device_uid)
    return Staged.DUPLICATE


#: Transport fields left out of a detection's evidence digest: a device signing the same detection
#: again (a re-send) changes them, not what it saw or decided.
_TRANSPORT_FIELDS = ("sent_at", "attempt")


def _digest(payload: dict, crop: bytes | None) -> str:
    evidence = {k: v for k, v in payload.items() if k not in _TRANSPORT_FIELDS and k != "crop_jpeg"}
    digest = hashlib.sha256(p.canonical_json(evidence))
    digest.update(hashlib.sha256(crop or b"").digest())
    return digest.hexdigest()


def detection_digest(detection: p.Detection) -> str:
    """SHA-256 (hex) of what a detection says (its fields and crop, not ``sent_at`` / ``attempt``):
    two copies with the same digest are the same detection; a different one under the same id is
    a replay."""
    return _digest(detection.to_dict(), detection.crop_jpeg)


def staged_digest(inbound: InboundDetection) -> str:
    """:func:`detection_digest` of a staged detection (its crop read back from storage)."""
    detection = p.Detection.from_dict(inbound.payload, crop_stored=True)
    crop = None
    if inbound.crop:
        with default_storage.open(inbound.crop, "rb") as handle:
            crop = handle.read()
    return _digest(detection.to_dict(), crop)


def _enqueue_again(detection: p.Detection) -> bool:
    """Whether a detection that is staged already should get its decision task again.

    Its task may be lost: a broker redelivering the message means the bridge that staged it died
    before acknowledging, possibly before enqueueing. Deciding is idempotent, so it is enqueued
    again at once rather than after the inbound sweep. A device's re-send counts only when the
    row has been staged for a while: a younger one is just queued behind others, and enqueueing
    it again on every re-send would only add load.
    """
    rows = InboundDetection.objects.filter(detection_id=detection.detection_id)
    if detection.attempt:
        rows = rows.filter(received_at__lt=timezone.now() - dt.timedelta(seconds=REQUEUE_ON_RESEND_AFTER_S))
    return bool(rows.update(enqueued=F("enqueued") + 1))


@dataclass(frozen=True)
class Backlog:
    """Door decisions waiting right now: how many detections are staged and how long the oldest
    has waited (0.0 when none)."""

    staged: int
    oldest_s: float


_BACKLOG_SQL = (
    "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(received_at)), 0) "
    f"FROM {InboundDetection._meta.db_table} WHERE received_at > clock_timestamp() - make_interval(secs => %s)"
)


def staged_backlog(*, within_s: float) -> Backlog:
    """The detections staged in the last ``within_s`` seconds and not decided yet (one index range
    scan). Older rows are lost tasks left for :func:`inbound_requeue`, not load: they are not
    counted, so one stuck row does not look like a queue of doors waiting."""
    with connection.cursor() as cursor:
        cursor.execute(_BACKLOG_SQL, [float(within_s)])
        staged, oldest = cursor.fetchone()
    return Backlog(staged=int(staged), oldest_s=max(0.0, float(oldest)))


def inbound_requeue(*, send: Callable[[list[str]], None], now: dt.datetime | None = None, limit: int = 500) -> int:
    """Enqueue again (with ``send``) the decisions of detections staged longer than
    DEVICE_INBOUND_RETRY_AFTER_S.

    Safe to run at any time: the decision is idempotent on the detection id.
    """
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.DEVICE_INBOUND_RETRY_AFTER_S)
    stuck = list(
        InboundDetection.objects.filter(received_at__lt=cutoff)
        .order_by("received_at")
        .values_list("pk", "detection_id")[:limit]
    )
    for pk, detection_id in stuck:
        InboundDetection.objects.filter(pk=pk).update(enqueued=F("enqueued") + 1)
        send([str(detection_id)])
        logger.warning(
            "detection %s had no decision after %ss; enqueued again",
            detection_id,
            settings.DEVICE_INBOUND_RETRY_AFTER_S,
        )
    return len(stuck)
