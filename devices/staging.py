"""Recovery of staged detections whose decision task was lost (worker killed, broker restarted)."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from devices.ingest import decision_enqueue
from devices.models import InboundDetection

logger = logging.getLogger(__name__)


def inbound_requeue(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Enqueue again the decisions of detections staged longer than DEVICE_INBOUND_RETRY_AFTER_S.

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
        decision_enqueue(str(detection_id))
        logger.warning(
            "detection %s had no decision after %ss; enqueued again",
            detection_id,
            settings.DEVICE_INBOUND_RETRY_AFTER_S,
        )
    return len(stuck)
