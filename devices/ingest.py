"""Turn one raw MQTT message into a staged detection (and a queued decision), a heartbeat or a status.

The bridge calls ``message_ingest`` for every message. This module verifies; it never decides
access. Every message on a detections topic ends in exactly one of:

- a staged ``InboundDetection`` plus a decision task (``recognition.decide``, or one
  ``recognition.decide_many`` for a burst: see :mod:`devices.batching`); the worker records the event;
- an AccessEvent recording why it was rejected (malformed, unknown device, bad signature, topic
  mismatch, stale timestamp, replay) — ids of rejected messages come from the message bytes, so
  a redelivered copy of the same bad message is recorded once;
- nothing new in the log when the detection is staged already (its decision task is enqueued
  again if it may have been lost) or when a device re-sends a decided detection because the answer
  never reached it (the recorded decision is sent again).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from psycopg.types.json import Jsonb

from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent
from devices import health
from devices.batching import DecisionBatcher
from devices.models import EdgeDevice, InboundDetection
from faceengine import protocol as p

logger = logging.getLogger(__name__)

# Namespace for ids of events about messages that carry no trustworthy detection id.
REJECT_NAMESPACE = uuid.UUID("5b0f7a36-0f0c-4c5e-9a8e-6a1f4f2b9d10")


def message_ingest(topic: str, raw: bytes, ack: Callable[[], None] | None = None) -> None:
    """Entry point of the bridge for every message.

    ``ack`` acknowledges the message to the broker. It is called once the message is safe: when
    this returns, or, for a detection handed to the decision batcher, once its task is out (the
    staging thread does not wait for that). Not called when this raises.
    """
    token = _ack_later.set(ack)
    try:
        _message_handle(topic, raw)
    finally:
        pending = _ack_later.get()
        _ack_later.reset(token)
    if pending is not None:
        pending()  # nothing deferred it: safe now


def _message_handle(topic: str, raw: bytes) -> None:
    try:
        uid, kind = p.parse_topic(topic)
    except p.ProtocolError:
        parts = topic.split("/")
        if len(parts) == 5 and "/".join(parts[:3]) == p.TOPIC_ROOT and parts[4] == p.TopicKind.DETECTIONS:
            # A detection message from a uid the protocol forbids: recorded like any other bad message.
            uid = parts[3].encode("unicode_escape").decode("ascii")[:64]
            _reject(reason=Reason.MALFORMED, message="invalid device uid in topic", device_uid=uid, raw=raw)
            return
        logger.warning("ignoring message on unexpected topic %r (%d bytes)", topic[:200], len(raw))
        return
    if kind == p.TopicKind.DETECTIONS:
        detection_ingest(device_uid=uid, raw=raw)
    elif kind == p.TopicKind.HEARTBEAT:
        health.heartbeat_ingest(device_uid=uid, raw=raw)
    elif kind == p.TopicKind.STATUS:
        health.status_ingest(device_uid=uid, raw=raw)


def _message_id(kind: str, device_uid: str, raw: bytes) -> uuid.UUID:
    # Per topic: the same bad bytes from two devices are two records; a redelivered copy is one.
    return uuid.uuid5(REJECT_NAMESPACE, f"{kind}:{device_uid}:{hashlib.sha256(raw).hexdigest()}")


def _claimed_id(payload: Any) -> str | None:
    if isinstance(payload, dict):
        try:
            return p.validate_uuid4(payload.get("detection_id"))
        except p.ProtocolError:
            return None
    return None


def _reject(
    *,
    reason: Reason,
    message: str,
    device_uid: str,
    raw: bytes,
    device: EdgeDevice | None = None,
    detection_id: str | uuid.UUID | None = None,
    occurred_at: dt.datetime | None = None,
    details: dict[str, Any] | None = None,
) -> AccessEvent:
    """Record a rejected detection message as a denied AccessEvent (and alarm when hostile)."""
    event_id = detection_id or _message_id(str(reason), device_uid, raw)
    event, created = event_record(
        detection_id=event_id,
        occurred_at=occurred_at or timezone.now(),
        decision=Decision.DENY,
        reason=reason,
        device_id=device.pk if device else None,
        door_id=device.door_id if device else None,
        device_uid=device_uid[:64],
        details={"error": message[:300], "bytes": len(raw), **(details or {})},
    )
    if created:
        logger.warning("rejected detection from %s: %s (%s) event=%s", device_uid[:64], reason, message[:200], event.pk)
        from accessctl.decisions import rejection_notify

        rejection_notify(event=event)
    return event


def _store_crop(detection_id: str, jpeg: bytes, captured_at: float) -> str:
    day = dt.datetime.fromtimestamp(captured_at, tz=dt.UTC)
    name = f"crops/{day:%Y/%m/%d}/{detection_id}.jpg"
    return default_storage.save(name, ContentFile(jpeg))


def detection_ingest(*, device_uid: str, raw: bytes, now: float | None = None) -> str:
    """Verify one detection message and stage it for a decision. Returns what happened (for logs/tests)."""
    now = time.time() if now is None else now
    try:
        envelope = p.split_envelope(raw)
    except p.ProtocolError as exc:
        _reject(reason=Reason(exc.code), message=str(exc), device_uid=device_uid, raw=raw)
        return str(exc.code)
    claimed = _claimed_id(envelope.payload)
    device = EdgeDevice.objects.filter(uid=device_uid).first()
    if device is None:
        _reject(
            reason=Reason.UNKNOWN_DEVICE,
            message="no such device",
            device_uid=device_uid,
            raw=raw,
            details={"claimed_detection_id": claimed},
        )
        return Reason.UNKNOWN_DEVICE
    if device.status == EdgeDevice.Status.DISABLED:
        _reject(
            reason=Reason.DEVICE_DISABLED,
            message="device is disabled",
            device_uid=device_uid,
            raw=raw,
            device=device,
            details={"claimed_detection_id": claimed},
        )
        return Reason.DEVICE_DISABLED
    try:
        payload = p.verify_envelope(envelope, device.public_key)
    except p.ProtocolError as exc:
        _reject(
            reason=Reason.BAD_SIGNATURE,
            message=str(exc),
            device_uid=device_uid,
            raw=raw,
            device=device,
            details={"claimed_detection_id": claimed},
        )
        return Reason.BAD_SIGNATURE
    # From here the message is authentic: its detection id is the device's own.
    try:
        detection = p.payload_from_dict(p.TopicKind.DETECTIONS, payload)
        assert isinstance(detection, p.Detection)
        if detection.device_uid != device_uid:
            raise p.ProtocolError(p.Reason.TOPIC_MISMATCH, "payload device_uid differs from the topic's")
    except p.ProtocolError as exc:
        _reject(
            reason=Reason(exc.code),
            message=str(exc),
            device_uid=device_uid,
            raw=raw,
            device=device,
            detection_id=claimed if exc.code == p.Reason.TOPIC_MISMATCH else None,
            details={"claimed_detection_id": claimed},
        )
        return str(exc.code)
    health.device_seen(device=device)
    try:
        dt.datetime.fromtimestamp(detection.captured_at, tz=dt.UTC)  # representable (the event's time)
    except (OverflowError, OSError, ValueError):
        _reject(
            reason=Reason.MALFORMED,
            message=f"captured_at {detection.captured_at!r} is not a representable time",
            device_uid=device_uid,
            raw=raw,
            device=device,
            details={"claimed_detection_id": claimed},
        )
        return Reason.MALFORMED
    try:
        p.check_freshness(detection.sent_at, now, settings.DEVICE_TIMESTAMP_WINDOW_S)
        if detection.attempt:  # a re-send is signed anew: the face itself must still be fresh
            p.check_freshness(detection.captured_at, now, settings.DEVICE_TIMESTAMP_WINDOW_S)
    except p.ProtocolError as exc:
        if AccessEvent.objects.filter(detection_id=detection.detection_id).exists():
            return _replay_reject(detection=detection, device=device, raw=raw)
        from accessctl.decisions import late_detection_record

        late_detection_record(detection=detection, device=device, error=str(exc))
        return Reason.STALE_TIMESTAMP
    return detection_stage(detection=detection, device=device, raw=raw)


def _replay_reject(*, detection: p.Detection, device: EdgeDevice, raw: bytes) -> str:
    _reject(
        reason=Reason.REPLAY,
        message="detection already decided",
        device_uid=device.uid,
        raw=raw,
        device=device,
        details={"replayed_detection_id": detection.detection_id, "attempt": detection.attempt},
    )
    return Reason.REPLAY


_STAGE_SQL = (
    f"INSERT INTO {InboundDetection._meta.db_table} (detection_id, device_id, received_at, payload, crop, enqueued) "
    "SELECT %s, %s, now(), %s, %s, 1 "
    f"WHERE NOT EXISTS (SELECT 1 FROM {AccessEvent._meta.db_table} WHERE detection_id = %s) "
    "ON CONFLICT (detection_id) DO NOTHING RETURNING id"
)


def detection_stage(*, detection: p.Detection, device: EdgeDevice, raw: bytes) -> str:
    """Stage a verified, fresh detection and enqueue its decision.

    One statement stages it unless it is staged already or decided already (the unique
    detection id and the access log say so), which keeps the bridge's per-message cost to one
    round trip. A detection that is decided already is either a device asking again because no
    answer came back (``attempt`` > 0, first time seen: its decision is sent again, nothing is
    recorded) or a replay (recorded, alarm raised).
    """
    payload = detection.to_dict()
    payload.pop("crop_jpeg", None)
    crop = (
        _store_crop(detection.detection_id, detection.crop_jpeg, detection.captured_at) if detection.crop_jpeg else ""
    )
    with connection.cursor() as cursor:
        cursor.execute(
            _STAGE_SQL,
            [detection.detection_id, device.pk, Jsonb(payload), crop, detection.detection_id],
        )
        staged = cursor.fetchone() is not None
    if staged:
        if connection.in_atomic_block:
            transaction.on_commit(lambda: decision_enqueue(detection.detection_id))
        else:
            decision_enqueue(detection.detection_id)
        logger.debug("staged detection %s from %s", detection.detection_id, device.uid)
        return "staged"
    if crop:
        default_storage.delete(crop)
    event = AccessEvent.objects.filter(detection_id=detection.detection_id).first()
    if event is None:
        if _enqueue_again(detection):
            decision_enqueue(detection.detection_id)
            logger.info(
                "detection %s from %s came again (attempt %d) while staged: enqueued again",
                detection.detection_id, device.uid, detection.attempt,
            )  # fmt: skip
            return "requeued"
        logger.info("duplicate detection %s from %s ignored (already staged)", detection.detection_id, device.uid)
        return "duplicate"
    if detection.attempt > 0 and event.device_uid == device.uid and _first_sight(detection):
        from accessctl.decisions import decision_repeat

        decision_repeat(event=event)
        logger.info(
            "detection %s from %s asked again (attempt %d): decision %s sent again",
            detection.detection_id, device.uid, detection.attempt, event.reason,
        )  # fmt: skip
        return "repeated"
    return _replay_reject(detection=detection, device=device, raw=raw)


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


def _first_sight(detection: p.Detection) -> bool:
    """True the first time this (detection, attempt) is seen: a copy of a re-send is a replay."""
    key = f"accessctl:resend:{detection.detection_id}:{detection.attempt}"
    try:
        return bool(cache.add(key, 1, timeout=int(2 * settings.DEVICE_TIMESTAMP_WINDOW_S) + 1))
    except Exception:
        logger.warning("cache unavailable; treating re-send %s as new", key, exc_info=True)
        return True


#: A device re-sending a detection that has been staged this long gets its task enqueued again.
REQUEUE_ON_RESEND_AFTER_S = 5.0
#: Longest a staging thread waits for its batch to reach the task broker (then the sweep has it).
ENQUEUE_WAIT_S = 5.0
#: Set by the bridge while it runs (:func:`decision_batching`); None: one task per detection.
_batcher: DecisionBatcher | None = None
#: The acknowledgement of the message being ingested, until something takes it (see message_ingest).
_ack_later: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("ack_later", default=None)
#: The batcher thread's broker connection for reading the backlog.
_backlog_connection: Any = None


def decision_enqueue(detection_id: str) -> None:
    """Queue the decision. If the task broker is unreachable the staged row stays and the
    periodic inbound sweep enqueues it again, so the detection is delayed, not lost."""
    batcher = _batcher
    if batcher is not None:
        ack = _ack_later.get()
        try:
            sent = batcher.add(str(detection_id), on_sent=ack)
        except RuntimeError:
            pass  # closing: send it directly
        else:
            if ack is not None:
                _ack_later.set(None)  # the batcher acknowledges the message once the task is out
            else:
                sent.wait(ENQUEUE_WAIT_S)  # the caller acknowledges after this returns
            return
    decisions_send([str(detection_id)])


def decision_backlog() -> int:
    """Tasks waiting (not yet taken by a worker) in the recognition queue."""
    from accessctl.project.celery import app

    global _backlog_connection
    if _backlog_connection is None:
        _backlog_connection = app.connection_for_read()
    try:
        declared = _backlog_connection.default_channel.queue_declare(queue=settings.RECOGNITION_QUEUE, passive=True)
    except Exception as exc:
        _backlog_connection.release()  # a failed passive declare closes the channel (AMQP)
        _backlog_connection = None
        if str(getattr(exc, "reply_code", "")) == "404":  # amqp NotFound; kombu's virtual transports say "404"
            return 0  # no worker declared the queue yet: nothing is waiting in it
        raise
    return int(declared.message_count)


def decisions_send(detection_ids: list[str]) -> None:
    """One ``recognition.decide`` task for one id, one ``recognition.decide_many`` for several."""
    from recognition.tasks import decide, decide_many

    task, args = (decide, detection_ids) if len(detection_ids) == 1 else (decide_many, [detection_ids])
    try:
        task.apply_async(
            args=args,
            queue=settings.RECOGNITION_QUEUE,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception:
        logger.exception("could not enqueue the decision of %s; the inbound sweep will retry", ", ".join(detection_ids))


@contextlib.contextmanager
def decision_batching(
    *, max_size: int | None = None, wait_s: float = 0.002, hold_s: float | None = None
) -> Iterator[DecisionBatcher]:
    """While the block runs, :func:`decision_enqueue` batches (see :mod:`devices.batching`); a due
    batch is held up to ``hold_s`` while the recognition queue has a backlog. Defaults:
    ``MQTT_BRIDGE_BATCH_MAX`` and ``MQTT_BRIDGE_BATCH_HOLD_MS``."""
    global _batcher
    batcher = DecisionBatcher(
        decisions_send,
        max_size=max_size if max_size is not None else settings.MQTT_BRIDGE_BATCH_MAX,
        wait_s=wait_s,
        backlog=decision_backlog,
        hold_s=hold_s if hold_s is not None else settings.MQTT_BRIDGE_BATCH_HOLD_MS / 1000,
    )
    _batcher = batcher
    try:
        yield batcher
    finally:
        _batcher = None
        batcher.close()
