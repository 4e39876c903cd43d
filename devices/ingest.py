"""Turn one raw MQTT message into a staged detection (and a queued decision), a heartbeat or a status.

The bridge calls ``message_ingest`` for every message. This module verifies; it never decides
access. Door events (position sensor, exit button) go to :mod:`devices.door_events`. Every message
on a detections topic ends in exactly one of:

- a staged detection plus a decision task (:mod:`recognition.staging`; batched for a burst by the
  bridge run's :class:`recognition.queueing.DecisionQueue`); the worker records the event. A
  detection the device decided alone (``offline_decision``) is staged too, fresh or late: the
  worker records the device's decision with the server's verdict and never answers it
  (:mod:`accessctl.offline_decisions`);
- an AccessEvent recording why it was rejected (malformed, unknown device, bad signature, topic
  mismatch, stale timestamp, replay), recorded by the domain (``accessctl.decisions``) — ids of
  rejected messages come from the message bytes, so a redelivered copy of the same bad message is
  recorded once;
- nothing new in the log when the detection is staged already (its decision task is enqueued
  again if it may have been lost) or when a device re-sends a decided detection because the answer
  never reached it (the recorded decision is sent again).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache

from accessctl.codes import Reason
from accessctl.decisions import decision_repeat, late_detection_record, rejection_record
from accessctl.metrics import BRIDGE_LAG
from accessctl.models import AccessEvent
from accessctl.offline_decisions import offline_decisions_answer
from devices import health
from devices.door_events import door_event_ingest
from devices.models import EdgeDevice
from faceengine import protocol as p
from recognition.models import InboundDetection
from recognition.queueing import DecisionQueue
from recognition.staging import Staged, detection_digest, detection_stage, staged_digest
from recognition.tasks import decisions_send

logger = logging.getLogger(__name__)

# Namespace for ids of events about messages that carry no trustworthy detection id.
REJECT_NAMESPACE = uuid.UUID("5b0f7a36-0f0c-4c5e-9a8e-6a1f4f2b9d10")


def message_ingest(
    topic: str, raw: bytes, ack: Callable[[], None] | None = None, *, queue: DecisionQueue | None = None
) -> None:
    """Entry point of the bridge for every message.

    ``ack`` acknowledges the message to the broker. It is called once the message is safe: when
    this returns, or, for a detection handed to the bridge run's ``queue`` (batching), once its
    task is out (the staging thread does not wait for that). Not called when this raises.
    Without ``queue`` each decision task is sent at once.
    """
    token = _ack_later.set(ack)
    try:
        _message_handle(topic, raw, queue)
    finally:
        pending = _ack_later.get()
        _ack_later.reset(token)
    if pending is not None:
        pending()  # nothing deferred it: safe now


def _message_handle(topic: str, raw: bytes, queue: DecisionQueue | None) -> None:
    try:
        uid, kind = p.parse_topic(topic)
    except p.ProtocolError:
        parts = topic.split("/")
        if len(parts) == 5 and "/".join(parts[:3]) == p.TOPIC_ROOT and parts[4] == p.TopicKind.DETECTIONS:
            # A detection message from a uid the protocol forbids: recorded like any other bad message.
            uid = parts[3].encode("unicode_escape").decode("ascii")[:64]
            detection_ingest(device_uid=uid, raw=raw, queue=queue, topic_error="invalid device uid in topic")
            return
        logger.warning("ignoring message on unexpected topic %r (%d bytes)", topic[:200], len(raw))
        return
    if kind == p.TopicKind.DETECTIONS:
        detection_ingest(device_uid=uid, raw=raw, queue=queue)
    elif kind == p.TopicKind.HEARTBEAT:
        health.heartbeat_ingest(device_uid=uid, raw=raw)
    elif kind == p.TopicKind.STATUS:
        health.status_ingest(device_uid=uid, raw=raw)
    elif kind == p.TopicKind.DOOR:
        door_event_ingest(device_uid=uid, raw=raw)


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


class Rejected(Exception):
    """Why a detection message is refused; :func:`detection_ingest` has the domain record it."""

    def __init__(
        self,
        reason: Reason | str,
        message: str,
        *,
        device: EdgeDevice | None = None,
        detection_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = Reason(reason)
        self.message = message
        self.device = device
        self.detection_id = detection_id
        self.details = details


def detection_ingest(
    *,
    device_uid: str,
    raw: bytes,
    now: float | None = None,
    queue: DecisionQueue | None = None,
    topic_error: str = "",
) -> str:
    """Verify one detection message and stage it for a decision. Returns what happened (for logs/tests).

    The steps, in order: verify (:func:`detection_verify`), check freshness, stage
    (:func:`recognition.staging.detection_stage`, which enqueues the decision). A refused message
    is recorded once, here, by the domain (:func:`accessctl.decisions.rejection_record`).
    """
    now = time.time() if now is None else now
    started = time.perf_counter()
    try:
        if topic_error:
            raise Rejected(Reason.MALFORMED, topic_error)
        detection, device = detection_verify(device_uid=device_uid, raw=raw)
        outcome = _fresh_stage(detection=detection, device=device, now=now, queue=queue)
        if outcome == Staged.STAGED:
            BRIDGE_LAG.labels("stage").observe(time.perf_counter() - started)
        return outcome
    except Rejected as rejected:
        device = rejected.device
        rejection_record(
            detection_id=rejected.detection_id or _message_id(str(rejected.reason), device_uid, raw),
            reason=rejected.reason,
            message=rejected.message,
            device_uid=device_uid,
            size=len(raw),
            device_id=device.pk if device else None,
            door_id=device.door_id if device else None,
            details=rejected.details,
        )
        return str(rejected.reason)


def detection_verify(*, device_uid: str, raw: bytes) -> tuple[p.Detection, EdgeDevice]:
    """The authentic detection in ``raw`` and its device (noted as seen); raises :class:`Rejected`."""
    try:
        envelope = p.split_envelope(raw)
    except p.ProtocolError as exc:
        raise Rejected(exc.code, str(exc)) from None
    claimed = {"claimed_detection_id": _claimed_id(envelope.payload)}
    device = EdgeDevice.objects.filter(uid=device_uid).first()
    if device is None:
        raise Rejected(Reason.UNKNOWN_DEVICE, "no such device", details=claimed)
    if device.status == EdgeDevice.Status.DISABLED:
        raise Rejected(Reason.DEVICE_DISABLED, "device is disabled", device=device, details=claimed)
    try:
        payload = p.verify_envelope(envelope, device.public_key)
    except p.ProtocolError as exc:
        raise Rejected(Reason.BAD_SIGNATURE, str(exc), device=device, details=claimed) from None
    # From here the message is authentic: its detection id is the device's own.
    try:
        detection = p.payload_from_dict(p.TopicKind.DETECTIONS, payload)
        assert isinstance(detection, p.Detection)
        if detection.device_uid != device_uid:
            raise p.ProtocolError(p.Reason.TOPIC_MISMATCH, "payload device_uid differs from the topic's")
    except p.ProtocolError as exc:
        mismatch = exc.code == p.Reason.TOPIC_MISMATCH
        raise Rejected(
            exc.code,
            str(exc),
            device=device,
            detection_id=claimed["claimed_detection_id"] if mismatch else None,
            details=claimed,
        ) from None
    health.device_seen(device=device)
    try:
        dt.datetime.fromtimestamp(detection.captured_at, tz=dt.UTC)  # representable (the event's time)
    except (OverflowError, OSError, ValueError):
        message = f"captured_at {detection.captured_at!r} is not a representable time"
        raise Rejected(Reason.MALFORMED, message, device=device, details=claimed) from None
    return detection, device


def _replay(detection: p.Detection, device: EdgeDevice) -> Rejected:
    details = {"replayed_detection_id": detection.detection_id, "attempt": detection.attempt}
    return Rejected(Reason.REPLAY, "detection already decided", device=device, details=details)


def _fresh_stage(*, detection: p.Detection, device: EdgeDevice, now: float, queue: DecisionQueue | None) -> str:
    """Stage a verified detection if it is fresh; a late one is the domain's to record (it never
    opens a door now), a copy of a decided one is a replay or a device asking again. A detection
    the device decided alone goes its own way (:func:`_offline_stage`), fresh or late."""
    if detection.offline_decision is not None:
        return _offline_stage(detection=detection, device=device, queue=queue)
    try:
        p.check_detection_freshness(detection, now, settings.DEVICE_TIMESTAMP_WINDOW_S)
    except p.ProtocolError as exc:
        if AccessEvent.objects.filter(detection_id=detection.detection_id).exists():
            raise _replay(detection, device) from None
        late_detection_record(
            detection=detection, device_id=device.pk, device_uid=device.uid, door_id=device.door_id, error=str(exc)
        )
        return Reason.STALE_TIMESTAMP
    staged = _stage(detection, device, queue)
    if staged != Staged.DECIDED:
        return str(staged)
    # Decided already: a device asking again because no answer came back (``attempt`` > 0, first
    # time seen: its decision is sent again, nothing is recorded), or a replay (recorded, alarmed).
    event = AccessEvent.objects.filter(detection_id=detection.detection_id).first()
    if event is not None and detection.attempt > 0 and event.device_uid == device.uid and _first_sight(detection):
        decision_repeat(event=event, detection=detection)
        logger.info(
            "detection %s from %s asked again (attempt %d): decision %s sent again",
            detection.detection_id, device.uid, detection.attempt, event.reason,
        )  # fmt: skip
        return "repeated"
    raise _replay(detection, device)


def _offline_stage(*, detection: p.Detection, device: EdgeDevice, queue: DecisionQueue | None) -> str:
    """Stage a detection the device decided alone (it carries ``offline_decision``), whatever its age.

    The decision task records it (:mod:`accessctl.offline_decisions`: the device's verdict, the
    server's, never a door command), so the bridge does no more than for any detection: one
    lookup in the access log and the staging INSERT. A copy of one recorded or staged already is
    acknowledged and ignored when it says the same (:func:`recognition.staging.detection_digest`:
    a spool redelivery), a replay when it does not or came from another device.
    """
    digest = detection_digest(detection)
    # No ORDER BY (``first()`` would add the log's ordering): the unique detection id finds it.
    recorded = list(
        AccessEvent.objects.filter(detection_id=detection.detection_id)
        .order_by()
        .only("source", "device_uid", "details", "reason", "detection_id")[:1]
    )
    if recorded:
        event = recorded[0]
        same = event.source == AccessEvent.Source.DEVICE_OFFLINE and event.device_uid == device.uid
        if same and (event.details or {}).get("payload_sha256") == digest:
            logger.info("offline decision %s from %s redelivered: recorded already", detection.detection_id, device.uid)
            # the device did not get the answer (it re-sends until one comes): the same answer again
            offline_decisions_answer([event])
            return "duplicate"
        raise _replay(detection, device)
    staged = next(iter(InboundDetection.objects.filter(detection_id=detection.detection_id).order_by()[:1]), None)
    if staged is not None and (staged.device_uid != device.uid or staged_digest(staged) != digest):
        raise _replay(detection, device)
    result = _stage(detection, device, queue)
    if result == Staged.DECIDED:  # recorded between the lookup and the INSERT: look again
        return _offline_stage(detection=detection, device=device, queue=queue)
    return str(result)


def _stage(detection: p.Detection, device: EdgeDevice, queue: DecisionQueue | None) -> Staged:
    """Stage a verified detection of ``device`` for the decision task (queued through ``queue``)."""
    return detection_stage(
        detection=detection,
        device_uid=device.uid,
        device_id=device.pk,
        door_id=device.door_id,
        enqueue=lambda detection_id: decision_enqueue(detection_id, queue),
    )


def _first_sight(detection: p.Detection) -> bool:
    """True the first time this (detection, attempt) is seen: a copy of a re-send is a replay."""
    key = f"accessctl:resend:{detection.detection_id}:{detection.attempt}"
    try:
        return bool(cache.add(key, 1, timeout=int(2 * settings.DEVICE_TIMESTAMP_WINDOW_S) + 1))
    except Exception:
        logger.warning("cache unavailable; treating re-send %s as new", key, exc_info=True)
        return True


#: The acknowledgement of the message being ingested, until something takes it (see message_ingest).
_ack_later: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("ack_later", default=None)


def decision_enqueue(detection_id: str, queue: DecisionQueue | None = None) -> None:
    """Queue the decision (through the bridge run's ``queue``, which then acknowledges the message
    once the task is out; without one, at once). If the task broker is unreachable the staged row
    stays and the periodic inbound sweep enqueues it again: delayed, not lost."""
    if queue is None:
        decisions_send([str(detection_id)])
        return
    if queue.enqueue(str(detection_id), on_sent=_ack_later.get()):
        _ack_later.set(None)  # the queue acknowledges the message once the task is out
