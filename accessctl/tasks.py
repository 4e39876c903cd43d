"""Celery tasks of the core app (thin: each calls one service)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from accessctl.anchoring import checkpoint_create
from accessctl.door_sensors import doors_held_open_sweep as held_open_sweep
from accessctl.privacy.retention import retention_apply as retention_run
from accessctl.webhook_delivery import WebhookDeliveryFailed, webhook_delivery_attempt

WEBHOOK_MAX_RETRIES = 10  # backoff 5 s, 10 s, 20 s, ... capped at 1 h: about 2.5 h in all


@shared_task(name="accessctl.retention_apply", acks_late=True)
def retention_apply() -> dict[str, Any]:
    """Daily retention run (Celery beat, see ``CELERY_BEAT_SCHEDULE``)."""
    return retention_run().as_dict()


@shared_task(name="accessctl.audit_checkpoint", acks_late=True)
def audit_checkpoint() -> dict[str, Any]:
    """Periodic signed checkpoint of the access log's head (Celery beat, see ``CELERY_BEAT_SCHEDULE``)."""
    checkpoint = checkpoint_create()
    return {"head_id": checkpoint.head_id, "count": checkpoint.count, "at": checkpoint.at.isoformat()}


@shared_task(name="accessctl.doors_held_open_sweep", ignore_result=True)
def doors_held_open_sweep() -> int:
    """Held-open alarms for doors open too long (Celery beat, see ``CELERY_BEAT_SCHEDULE``)."""
    return held_open_sweep()


@shared_task(
    bind=True,
    name="accessctl.webhook_deliver",
    acks_late=True,
    autoretry_for=(WebhookDeliveryFailed,),
    retry_backoff=5,
    retry_backoff_max=3600,
    retry_jitter=True,
    max_retries=WEBHOOK_MAX_RETRIES,
)
def webhook_deliver(self: Task, delivery_id: int) -> str:
    """Deliver one webhook; a delivered (or given-up) row is never sent again."""
    final = self.request.retries >= (self.max_retries or 0)
    return webhook_delivery_attempt(delivery_id=delivery_id, final=final)
