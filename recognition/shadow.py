"""Shadow decisions: a model version in state ``shadow`` decides live detections without acting.

Before a candidate is promoted, the operator wants to know how it would decide at the real doors.
While a version is ``shadow`` (and its gallery covers the people the active one covers:
:func:`recognition.shadow_sampling.shadow_versions_usable`), a sample of the live crop-mode detections
(``RECOGNITION_SHADOW_SAMPLE_RATE``, default 0.2) is decided by it too:

1. on the decision path, *after* the real decision committed and its door command went out
   (a ``transaction.on_commit`` callback registered after the decision's own),
   :func:`recognition.shadow_sampling.shadow_offer_after_commit` draws the sample; a hand-off
   thread of the process gives each one to the ``recognition.shadow_decide`` task on its own queue
   (``RECOGNITION_SHADOW_QUEUE``) with ids only: the real event, the shadow version and what the
   active model matched. It never raises into the decision and never waits for the broker;
2. a worker of that queue (``manage.py up`` starts one, concurrency 1) runs :func:`shadow_decide`:
   it reads the crop the real event kept (``AccessEvent.snapshot``), embeds it with the shadow
   version, searches that version's gallery with the door's threshold and margin rules for it, and
   puts both models' matches through the access policy (:func:`accessctl.policy.access_evaluate_many`,
   pure reads) at the same door and moment, with the same live score. The outcome is one
   :class:`~recognition.models.ShadowDecision` row. Nothing else: no door command, no access event,
   no webhook, no dashboard message, no alarm.

Bounded, whatever a peer sends: only a sample is offered; at most ``RECOGNITION_SHADOW_MAX_BACKLOG``
tasks wait in the shadow queue (the depth read from the broker at most once a second per process,
plus what this process sent since, so the queue holds at most that many per deciding process); a
task older than ``RECOGNITION_SHADOW_MAX_AGE_S`` when its turn comes is dropped. Every outcome
(queued, recorded, backlog, late, crop_gone, ...) is counted in ``accessctl_shadow_decisions``.

The crop may be gone by then (crop retention, a person's erasure): the sample is dropped
(``crop_gone``), nothing is recorded. The shadow decides on the event's kept crop alone: when the
real decision fused several faces of a track (``AccessEvent.probes_fused``), the active side of
the comparison is that fused match.

:func:`shadow_summary` gives the figures the admin page and ``GET /api/v1/models/{version}/shadow/``
show: samples, agreement (same person, same decision), the grant/deny confusion matrix and both
similarity distributions side by side.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import IntegrityError
from django.db.models import Avg, Count, F, Func, IntegerField, Max, Min, Q, Value

from accessctl import metrics
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Person
from accessctl.policy import AccessRequest, access_evaluate_many
from recognition.calibration import threshold_measured
from recognition.detections import ProbeError, crop_array, crop_read
from recognition.engine import version_embedder
from recognition.gallery_versions import gallery_ready
from recognition.matcher import match_decide
from recognition.models import ModelVersion, ShadowDecision
from recognition.shadow_sampling import Outcome

logger = logging.getLogger(__name__)

#: Similarity histogram: ``BUCKETS`` equal buckets over [LOW, HIGH), plus one below and one at or above.
LOW, HIGH, BUCKETS = 0.0, 1.0, 20


# --------------------------------------------------------------------------- the shadow worker side


def shadow_decide(
    *,
    event_id: int,
    model_version: str,
    active_person_id: int | None,
    active_reason: str,
    queued_at: float,
    now: float | None = None,
) -> str:
    """Decide the real event ``event_id`` again with shadow version ``model_version`` and record
    the comparison; returns the outcome (:class:`Outcome`), also counted in the metric. Idempotent
    (one row per version and event)."""
    try:
        outcome = _shadow_decide(event_id, model_version, active_person_id, active_reason, queued_at, now)
    except Exception:
        logger.exception("shadow decision of event %s by %s failed", event_id, model_version)
        outcome = Outcome.ERROR
    metrics.SHADOW_DECISIONS.labels(outcome).inc()
    return outcome


def _shadow_decide(
    event_id: int,
    model_version: str,
    active_person_id: int | None,
    active_reason: str,
    queued_at: float,
    now: float | None,
) -> str:
    age = (time.time() if now is None else now) - float(queued_at)
    if age > settings.RECOGNITION_SHADOW_MAX_AGE_S:
        logger.info("shadow decision of event %s by %s dropped: %.0f s late", event_id, model_version, age)
        return Outcome.LATE
    model = ModelVersion.objects.filter(model_version=model_version, state=ModelVersion.State.SHADOW).first()
    if model is None:
        return Outcome.NOT_SHADOW
    if ShadowDecision.objects.filter(model=model, event_id=event_id).exists():
        return Outcome.DUPLICATE
    event = AccessEvent.objects.select_related("door").filter(pk=event_id).first()
    if event is None or event.door is None:
        return Outcome.EVENT_GONE
    if not event.snapshot:
        return Outcome.CROP_GONE
    try:
        jpeg = crop_read(event.snapshot)
    except OSError:  # FileNotFoundError, or a storage that lost it
        logger.info("shadow decision of event %s: crop %s is gone", event_id, event.snapshot)
        return Outcome.CROP_GONE
    started = time.perf_counter()
    embedder = version_embedder(model.model_version)
    try:
        crop = crop_array(jpeg, embedder.input_size)
    except ProbeError:
        return Outcome.CROP_GONE  # replaced by something unreadable: nothing to compare
    vector = embedder.embed(crop[None])[0]
    match = match_decide(vector, model_version=model.model_version, door=event.door)
    ms = (time.perf_counter() - started) * 1000
    shadow_person_id, shadow_reason = match.person_id, match.reason
    if not threshold_measured(model.model_version, event.door):
        shadow_person_id, shadow_reason = None, Reason.MODEL_NOT_CALIBRATED  # as the real path would
    people = Person.objects.in_bulk({pk for pk in (active_person_id, shadow_person_id) if pk})
    active_person, shadow_person = people.get(active_person_id or 0), people.get(shadow_person_id or 0)
    requests = [
        AccessRequest(person, event.door, event.occurred_at, _unknown_reason(person, reason), event.liveness_edge)
        for person, reason in ((active_person, active_reason), (shadow_person, shadow_reason))
    ]
    active, shadow = access_evaluate_many(requests)
    same_person = (active_person.pk if active_person else None) == (shadow_person.pk if shadow_person else None)
    try:
        ShadowDecision.objects.create(
            model=model, event_id=event.pk, detection_id=event.detection_id, door=event.door,
            occurred_at=event.occurred_at, active_model_version=event.model_version,
            active_person=active_person, active_decision=active.decision, active_reason=active.reason,
            active_similarity=event.similarity, active_margin=event.margin,
            shadow_person=shadow_person, shadow_decision=shadow.decision, shadow_reason=shadow.reason,
            shadow_similarity=match.similarity, shadow_margin=match.margin, shadow_threshold=match.threshold,
            agreed_person=same_person,
            agreed_decision=active.decision == shadow.decision, ms=round(ms, 2),
        )  # fmt: skip
    except IntegrityError:
        return Outcome.DUPLICATE  # decided by another worker meanwhile
    logger.info(
        "shadow %s on event %s: %s/%s (active %s/%s) in %.0f ms",
        model.model_version, event.pk, shadow.decision, shadow.reason, active.decision, active.reason, ms,
    )  # fmt: skip
    return Outcome.RECORDED


def _unknown_reason(person: Person | None, reason: str) -> Reason:
    """The matcher's reason for the policy: a match on a person deleted since is an unknown face."""
    reason = Reason(reason)
    return Reason.UNKNOWN_FACE if person is None and reason == Reason.MATCHED else reason


# --------------------------------------------------------------------------- figures


def _buckets(field: str) -> Func:
    return Func(F(field), Value(LOW), Value(HIGH), Value(BUCKETS), function="width_bucket", output_field=IntegerField())


def shadow_summary(*, model: ModelVersion) -> dict[str, Any]:
    """The shadow figures of ``model`` over all its samples (seven queries): counts, agreement rates,
    the grant/deny confusion (active decision -> shadow decision), and the two similarity histograms."""
    rows = ShadowDecision.objects.filter(model=model)
    agg = rows.aggregate(
        samples=Count("pk"),
        same_person=Count("pk", filter=Q(agreed_person=True)),
        same_decision=Count("pk", filter=Q(agreed_decision=True)),
        same_both=Count("pk", filter=Q(agreed_person=True, agreed_decision=True)),
        mean_ms=Avg("ms"),
        first_at=Min("occurred_at"),
        last_at=Max("occurred_at"),
    )
    samples = agg["samples"]

    def rate(k: int) -> float | None:
        return round(k / samples, 4) if samples else None

    decisions = [Decision.GRANT.value, Decision.DENY.value]
    confusion = {a: dict.fromkeys(decisions, 0) for a in decisions}
    for row in rows.values("active_decision", "shadow_decision").annotate(n=Count("pk")).order_by():
        confusion.setdefault(row["active_decision"], {})[row["shadow_decision"]] = row["n"]
    counts: dict[str, dict[int | None, int]] = {}
    for side in ("active", "shadow"):
        grouped = rows.annotate(bucket=_buckets(f"{side}_similarity")).values("bucket").annotate(n=Count("pk"))
        counts[side] = {row["bucket"]: row["n"] for row in grouped.order_by()}
    width = (HIGH - LOW) / BUCKETS
    buckets = []
    for n in range(BUCKETS + 2):  # width_bucket: 0 below LOW, BUCKETS + 1 at or above HIGH
        low = None if n == 0 else round(LOW + (n - 1) * width, 4)
        high = None if n == BUCKETS + 1 else round(LOW + n * width, 4)
        buckets.append({"low": low, "high": high, "active": counts["active"].get(n, 0),
                        "shadow": counts["shadow"].get(n, 0)})  # fmt: skip
    actives = list(rows.values_list("active_model_version", flat=True).distinct().order_by())
    active = ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE).values_list("model_version", flat=True)
    active_version = active.first()
    covers = gallery_ready(model.model_version) if active_version and active_version != model.model_version else None
    return {
        "model_version": model.model_version,
        "state": model.state,
        "active_model_versions": actives,
        # Whether its gallery covers the people the active version's covers (a shadow decides only then).
        "gallery_covers_active": covers,
        "samples": samples,
        "first_at": agg["first_at"],
        "last_at": agg["last_at"],
        "mean_ms": round(agg["mean_ms"], 2) if agg["mean_ms"] is not None else None,
        "agreement": {
            "same_person": agg["same_person"],
            "same_decision": agg["same_decision"],
            "same_both": agg["same_both"],
            "person_rate": rate(agg["same_person"]),
            "decision_rate": rate(agg["same_decision"]),
            "both_rate": rate(agg["same_both"]),
        },
        "confusion": confusion,
        "similarity": {
            "buckets": buckets,
            "no_score": {"active": counts["active"].get(None, 0), "shadow": counts["shadow"].get(None, 0)},
        },
    }
