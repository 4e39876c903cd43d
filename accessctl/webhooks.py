"""Signed webhooks: fan an event out to matching subscriptions and enqueue each delivery.

One :class:`~accessctl.models.WebhookDelivery` row per active subscription to the event type,
sent after commit by the ``accessctl.webhook_deliver`` task (``accessctl.tasks``, handed over at
startup: :func:`webhook_sender_register`), which runs ``accessctl.webhook_delivery`` (the signed
POST, its retries, the body format and :func:`~accessctl.webhook_delivery.verify_signature` for
integrators).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.db import transaction

from accessctl.models import WebhookDelivery, WebhookSubscription
from accessctl.offline_marks import offline_mark
from accessctl.process_cache import ProcessCache

if TYPE_CHECKING:
    from accessctl.models import AccessEvent, Alarm, Person

logger = logging.getLogger(__name__)

WILDCARD = "*"


class EventType(StrEnum):
    ACCESS_GRANTED = "access.granted"
    ACCESS_DENIED = "access.denied"
    ALARM_RAISED = "alarm.raised"
    ALARM_CLEARED = "alarm.cleared"
    DOOR_EVENT = "door.event"
    PERSON_CREATED = "person.created"
    PERSON_UPDATED = "person.updated"
    PERSON_DELETED = "person.deleted"


EVENT_TYPE_CHOICES = [(t.value, t.value) for t in EventType] + [(WILDCARD, "every event type")]


def webhook_secret_generate() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# --- dispatch ----------------------------------------------------------------------------------


#: How a recorded delivery is sent later: the ``accessctl.webhook_deliver`` task's ``delay``, registered
#: by ``AccessctlConfig.ready`` (the task runs ``accessctl.webhook_delivery``; this module only fans out).
_SENDERS: list[Callable[[int], object]] = []


def webhook_sender_register(send_later: Callable[[int], object]) -> None:
    """Set what sends a delivery (by id) after commit: called once, at startup."""
    _SENDERS[:] = [send_later]


def _enqueue(delivery_pk: int) -> None:
    try:
        if not _SENDERS:
            raise RuntimeError("no webhook sender registered (AccessctlConfig.ready registers the task)")
        _SENDERS[0](delivery_pk)
    except Exception:
        # The row stays pending; it can be re-sent from the admin.
        logger.exception("could not enqueue webhook delivery %s", delivery_pk)


#: Read on every door decision (see accessctl.process_cache).
SUBSCRIPTIONS = ProcessCache("webhook-subscriptions", ttl_s=5.0, cleared_by=(WebhookSubscription,))


def _active_subscriptions() -> list[tuple[int, frozenset[str]]]:
    """``(id, event types)`` of the active subscriptions."""

    def load() -> list[tuple[int, frozenset[str]]]:
        rows = WebhookSubscription.objects.filter(active=True).values_list("pk", "event_types")
        return [(pk, frozenset(types or ())) for pk, types in rows]

    return SUBSCRIPTIONS.get(None, load)


def webhook_dispatch(event_type: str, payload: dict[str, Any]) -> list[WebhookDelivery]:
    """Record one delivery per active subscription to ``event_type`` and send them after commit.

    ``payload`` must be JSON-serialisable (ids, codes, ISO timestamps; never images or
    embeddings). Call it inside the transaction that made the change: nothing is sent if it
    rolls back.
    """
    event_type = str(event_type)
    wanted = [pk for pk, types in _active_subscriptions() if event_type in types or WILDCARD in types]
    if not wanted:
        return []
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(subscription_id=pk, event_type=event_type, payload=payload) for pk in wanted]
    )
    for delivery in deliveries:
        transaction.on_commit(lambda pk=delivery.pk: _enqueue(pk))
    logger.info("webhook %s: %d deliveries queued", event_type, len(deliveries))
    return deliveries


def webhook_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery again (e.g. after it failed): back to pending, enqueued after commit."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status=WebhookDelivery.Status.PENDING)
    delivery.status = WebhookDelivery.Status.PENDING
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def access_event_webhook_payload(event: AccessEvent) -> dict[str, Any]:
    return {
        "event_id": event.pk,
        "detection_id": str(event.detection_id),
        "occurred_at": event.occurred_at.isoformat(),
        "door_id": event.door_id,
        "device_uid": event.device_uid,
        "person_id": event.person_id,
        "subject_uid": str(event.subject_uid) if event.subject_uid else None,
        "decision": event.decision,
        "reason": event.reason,
        "similarity": event.similarity,
        "margin": event.margin,
        "model_version": event.model_version,
        "liveness_edge": event.liveness_edge,
        "liveness_frames": event.liveness_frames,
        "liveness_server": event.liveness_server,
        "liveness_threshold": event.liveness_threshold,
        "source": event.source,
        "allowlist_version": event.allowlist_version,
        "probes_fused": event.probes_fused,
        "offline": offline_mark(event),
    }


def webhook_dispatch_access_event(event: AccessEvent) -> list[WebhookDelivery]:
    """``access.granted`` / ``access.denied`` for a recorded event (call from the deciding service)."""
    if event.source == "door":  # the door's inputs: opened, closed, exit request, forced, held open
        return webhook_dispatch(EventType.DOOR_EVENT, access_event_webhook_payload(event))
    event_type = EventType.ACCESS_GRANTED if event.decision == "grant" else EventType.ACCESS_DENIED
    return webhook_dispatch(event_type, access_event_webhook_payload(event))


#: Alarms whose webhook carries their details (what the receiver needs to act on them).
_ALARM_DETAILS_SENT = frozenset({"offline_disagreement", "forced_open", "held_open", "recognition_drift"})


def webhook_dispatch_alarm(alarm: Alarm, event_type: str = EventType.ALARM_RAISED) -> list[WebhookDelivery]:
    """``alarm.raised`` (or ``alarm.cleared``: a forced or held-open door closed) for ``alarm``."""
    payload: dict[str, Any] = {
        "alarm_id": alarm.pk,
        "kind": alarm.kind,
        "door_id": alarm.door_id,
        "device_id": alarm.device_id,
        "event_id": alarm.event_id,
        "raised_at": alarm.raised_at.isoformat() if alarm.raised_at else None,
        "count": alarm.count,
    }
    if alarm.cleared_at is not None:
        payload["cleared_at"] = alarm.cleared_at.isoformat()
    if alarm.kind in _ALARM_DETAILS_SENT:
        # the event and both verdicts (device, server); the door's position; what drifted and by how much
        payload["details"] = alarm.details
    return webhook_dispatch(event_type, payload)


def person_webhook_payload(person: Person) -> dict[str, Any]:
    return {
        "person_id": person.pk,
        "uid": str(person.uid),
        "external_id": person.external_id,
        "name": person.name,
        "status": person.status,
        "kind": person.kind,
        "valid_from": person.valid_from.isoformat() if person.valid_from else None,
        "valid_until": person.valid_until.isoformat() if person.valid_until else None,
    }
