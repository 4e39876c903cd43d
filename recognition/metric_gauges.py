"""Scrape-time gauges of the recognition queue and the gallery (see :mod:`accessctl.metrics`).

The staged detections (``InboundDetection``) are the decision queue that matters: a row is a
verified detection without its decision yet, whatever the task broker holds. The tasks waiting in
the broker's recognition queue (and the shadow queue) are read too (a passive declare on a pooled broker connection; a
collector of its own, so a broker that is down leaves the database gauges alone). The gallery is
counted at most every ``METRICS_GALLERY_CACHE_S`` per process (a count over every photo).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from accessctl.broker_queue import broker_queue_depth
from recognition.models import FaceEmbedding, InboundDetection

_gallery_lock = threading.Lock()
_gallery: tuple[float, dict[str, int]] | None = None


def gallery_sizes(*, max_age_s: float | None = None) -> dict[str, int]:
    """Embeddings per model version, counted again when the last count is older than ``max_age_s``."""
    global _gallery
    max_age = settings.METRICS_GALLERY_CACHE_S if max_age_s is None else max_age_s
    with _gallery_lock:
        if _gallery is not None and time.monotonic() - _gallery[0] < max_age:
            return _gallery[1]
    counted = dict(
        FaceEmbedding.objects.order_by()
        .values_list("model_version")
        .annotate(n=Count("id"))
        .values_list("model_version", "n")
    )
    with _gallery_lock:
        _gallery = (time.monotonic(), counted)
    return counted


def broker_gauges() -> Iterable[Metric]:
    """Tasks waiting (not yet taken by a worker) in the broker's recognition and shadow queues."""
    from recognition.tasks import decide

    tasks = GaugeMetricFamily(
        "accessctl_recognition_queue_tasks", "Decision tasks waiting in the task broker's recognition queue."
    )
    tasks.add_metric([], float(broker_queue_depth(decide.app, settings.RECOGNITION_QUEUE)))
    shadow = GaugeMetricFamily(
        "accessctl_shadow_queue_tasks",
        "Shadow-decision tasks waiting in the task broker's shadow queue (at most ACCESSCTL_SHADOW_MAX_BACKLOG "
        "per deciding process).",
    )
    shadow.add_metric([], float(broker_queue_depth(decide.app, settings.RECOGNITION_SHADOW_QUEUE)))
    return [tasks, shadow]


def recognition_gauges() -> Iterable[Metric]:
    """Staged detections, the age of the oldest, and the gallery size per model version."""
    staged = InboundDetection.objects.order_by().aggregate(n=Count("id"), oldest=Min("received_at"))
    depth = GaugeMetricFamily(
        "accessctl_recognition_staged", "Verified detections staged and not decided yet (the decision queue)."
    )
    depth.add_metric([], float(staged["n"]))
    oldest = GaugeMetricFamily(
        "accessctl_recognition_oldest_staged_age_seconds", "Age of the oldest staged detection (0 when none)."
    )
    age = (timezone.now() - staged["oldest"]).total_seconds() if staged["oldest"] is not None else 0.0
    oldest.add_metric([], max(0.0, age))
    gallery = GaugeMetricFamily(
        "accessctl_gallery_embeddings", "Enrolled face embeddings per model version.", labels=["model_version"]
    )
    for model_version, count in sorted(gallery_sizes().items()):
        gallery.add_metric([model_version], float(count))
    return [depth, oldest, gallery]
