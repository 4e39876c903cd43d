"""Recognition health per door and model version: is recognition at this door still behaving as it
did? (A moved camera, new lighting, a dirty lens or a bad model show up here before anyone
complains at the door.)

Read from the access log, never on the decision path: every detection event already carries its
similarity, margin, reason and model version. A periodic task (:func:`health_evaluate_all`, Celery
beat ``recognition.health_evaluate``) summarises, per door and model version,

- the **recent window** (``RECOGNITION_HEALTH_RECENT_WINDOW_S``, default 6 h), and
- the door's own **baseline**: set once from the ``RECOGNITION_HEALTH_BASELINE_DAYS`` before the
  first window that has enough decisions, kept until an operator re-baselines
  (:func:`health_rebaseline`, after a deliberate change such as a new camera: the baseline is
  then taken from the decisions since the change),

and applies the rule in :mod:`recognition.drift` (PSI on similarity and margin, two-proportion z
on the unknown-face and quality-gate rates, each with a minimum count). Entering drift raises a
``recognition_drift`` alarm for the door (``accessctl.alarms``) whose details (and webhook) name the
metrics that drifted with their baseline and current figures (:func:`drift_alarm_details`);
staying in drift does not repeat it every run.

The quality gate runs before any model (a too-small face is refused without being embedded, its
event has no model version), so its rejection rate is the door's, the same in each of its rows.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from accessctl.alarms import alarm_raise
from accessctl.codes import Reason
from accessctl.exceptions import InvalidInput
from accessctl.models import AccessEvent, Alarm, Door
from recognition.drift import DriftRule, drift_signals, enough_data, window_summary
from recognition.gallery import PersonScore, person_score_rule
from recognition.models import RecognitionHealth

logger = logging.getLogger(__name__)

Status = RecognitionHealth.Status


def health_rule() -> DriftRule:
    """The drift rule with this deployment's settings."""
    return DriftRule(
        min_baseline=settings.RECOGNITION_HEALTH_MIN_BASELINE,
        min_recent=settings.RECOGNITION_HEALTH_MIN_RECENT,
        psi_limit=settings.RECOGNITION_HEALTH_PSI_LIMIT,
        z_limit=settings.RECOGNITION_HEALTH_Z_LIMIT,
        min_rate_change=settings.RECOGNITION_HEALTH_MIN_RATE_CHANGE,
    )


def _detections(door_id: int, start: datetime, end: datetime) -> Any:
    return AccessEvent.objects.filter(
        door_id=door_id, source=AccessEvent.Source.DETECTION, occurred_at__gte=start, occurred_at__lt=end
    )


def window_read(
    *, door_id: int, model_version: str, start: datetime, end: datetime, baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Summary of the door's decisions in ``model_version`` over ``[start, end)`` (two queries)."""
    rows = list(
        _detections(door_id, start, end)
        .filter(model_version=model_version)
        .values_list("similarity", "margin", "reason")
    )
    quality = _detections(door_id, start, end).aggregate(
        rejected=Count("pk", filter=Q(reason=Reason.LOW_QUALITY)),
        seen=Count("pk", filter=Q(reason=Reason.LOW_QUALITY) | ~Q(model_version="")),
    )
    summary = window_summary(
        similarities=[s for s, _, _ in rows if s is not None],
        margins=[m for _, m, _ in rows if m is not None],
        decisions=len(rows),
        unknown=sum(1 for _, _, r in rows if r == Reason.UNKNOWN_FACE),
        quality_rejected=quality["rejected"],
        quality_seen=quality["seen"],
        baseline=baseline,
    )
    summary.update(start=start.isoformat(), end=end.isoformat())
    return summary


def _baseline_store(row: RecognitionHealth, summary: dict[str, Any], start: datetime, end: datetime) -> None:
    row.baseline = {**summary, "person_score": str(person_score_rule())}
    row.baseline_count = summary["decisions"]
    row.baseline_from, row.baseline_until = start, end
    row.baseline_set_at = timezone.now()


def health_evaluate(*, door: Door, model_version: str, now: datetime | None = None) -> RecognitionHealth:
    """Evaluate one door and model version now: set the baseline if it has none and enough history,
    summarise the recent window, apply the rule, raise the alarm on entering drift."""
    now = now or timezone.now()
    rule = health_rule()
    recent_start = now - timedelta(seconds=settings.RECOGNITION_HEALTH_RECENT_WINDOW_S)
    with transaction.atomic():
        row, _ = RecognitionHealth.objects.select_for_update().get_or_create(door=door, model_version=model_version)
        scored_by = (row.baseline or {}).get("person_score", PersonScore.BEST_PHOTO)
        if row.baseline and scored_by != person_score_rule():
            # The site changed how people are scored: similarities move by design, not by drift.
            # Re-baseline on decisions made under the new rule only.
            logger.info("health door=%s model=%s: people now scored by %s; re-baselining", door.pk, model_version,
                        person_score_rule())  # fmt: skip
            row.baseline, row.baseline_from = {}, now
        if not row.baseline:
            if row.baseline_from is not None:  # re-baselined by an operator: from then on, up to now
                start, end = row.baseline_from, now
            else:
                start, end = recent_start - timedelta(days=settings.RECOGNITION_HEALTH_BASELINE_DAYS), recent_start
            summary = window_read(door_id=door.pk, model_version=model_version, start=start, end=end)
            if summary["decisions"] >= rule.min_baseline:
                _baseline_store(row, summary, start, end)
                logger.info("health door=%s model=%s: baseline set", door.pk, model_version)
        baseline = row.baseline or None
        recent = window_read(
            door_id=door.pk, model_version=model_version, start=recent_start, end=now, baseline=baseline
        )
        signals = drift_signals(baseline, recent, rule) if baseline else []
        recent["signals"] = signals
        before = row.status
        if not baseline:
            row.status = Status.NO_BASELINE
        elif not enough_data(baseline, recent, rule):
            row.status = Status.TOO_FEW
        else:
            row.status = Status.DRIFT if signals else Status.OK
        row.recent, row.recent_count, row.evaluated_at = recent, recent["decisions"], now
        row.save()
        if row.status == Status.DRIFT and before != Status.DRIFT:
            alarm_raise(
                kind=Alarm.Kind.RECOGNITION_DRIFT, door=door,
                details=drift_alarm_details(door=door, model_version=model_version, row=row, signals=signals),
            )  # fmt: skip
    if row.status == Status.DRIFT:
        logger.warning(
            "health door=%s model=%s drifted: %s", door.pk, model_version, ", ".join(s["signal"] for s in signals)
        )
    return row


def drift_alarm_details(
    *, door: Door, model_version: str, row: RecognitionHealth, signals: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the ``recognition_drift`` alarm (and its ``alarm.raised`` webhook) says: the door, the
    model version, which metrics drifted (``drifted``) and, for each, the test, its value and limit
    and the figures of the baseline and of the current (recent) window, with both windows' bounds."""
    recent = row.recent or {}
    return {
        "door_id": door.pk,
        "door_name": door.name,
        "model_version": model_version,
        "drifted": [s["signal"] for s in signals],
        "signals": [
            {key: s.get(key) for key in ("signal", "test", "value", "limit", "baseline", "current")} for s in signals
        ],
        "baseline_window": {
            "from": row.baseline_from.isoformat() if row.baseline_from else None,
            "until": row.baseline_until.isoformat() if row.baseline_until else None,
            "decisions": row.baseline_count,
        },
        "current_window": {"from": recent.get("start"), "until": recent.get("end"), "decisions": row.recent_count},
    }


def _pairs_to_evaluate(since: datetime) -> set[tuple[int, str]]:
    """(door, model version) of every door with decisions since ``since``, and every row kept."""
    recent = (
        AccessEvent.objects.filter(source=AccessEvent.Source.DETECTION, occurred_at__gte=since, door__isnull=False)
        .exclude(model_version="")
        .values_list("door_id", "model_version")
        .distinct()
    )
    return set(recent) | set(RecognitionHealth.objects.values_list("door_id", "model_version"))


def health_evaluate_all(*, now: datetime | None = None) -> list[RecognitionHealth]:
    """Evaluate every door and model version with recent decisions or a health row (the beat task)."""
    now = now or timezone.now()
    since = now - timedelta(seconds=settings.RECOGNITION_HEALTH_RECENT_WINDOW_S)
    pairs = sorted(_pairs_to_evaluate(since))
    doors = Door.objects.in_bulk({door_id for door_id, _ in pairs})
    rows = [health_evaluate(door=doors[d], model_version=m, now=now) for d, m in pairs if d in doors]
    logger.info("health: %d door/model pairs, %d drifting", len(rows), sum(1 for r in rows if r.status == Status.DRIFT))
    return rows


def health_rebaseline(
    *, row: RecognitionHealth, actor: Any, since: datetime | None = None, now: datetime | None = None
) -> RecognitionHealth:
    """Accept the door's behaviour since ``since`` (default: the start of the recent window) as its
    new normal, after a deliberate change (a new camera, new lighting, a new model).

    The baseline is cleared and taken again from the decisions since ``since``, up to now, as soon
    as there are enough of them (at once when there are); until then the door is ``no_baseline``
    and raises no drift alarm. Refused (:class:`InvalidInput`) for a ``since`` in the future.
    """
    now = now or timezone.now()
    since = since or now - timedelta(seconds=settings.RECOGNITION_HEALTH_RECENT_WINDOW_S)
    if since >= now:
        raise InvalidInput("A new baseline starts in the past.", code="invalid_since")
    with transaction.atomic():
        row = RecognitionHealth.objects.select_for_update().select_related("door").get(pk=row.pk)
        row.baseline, row.baseline_count = {}, 0
        row.baseline_from, row.baseline_until = since, None  # no baseline + a start: the operator's floor
        row.baseline_set_at = now
        row.baseline_set_by = actor if getattr(actor, "pk", None) is not None else None
        row.status = Status.NO_BASELINE
        row.save()
    logger.warning(
        "health door=%s model=%s re-baselined from %s by user %s",
        row.door_id, row.model_version, since.isoformat(), getattr(actor, "pk", "-"),
    )  # fmt: skip
    return health_evaluate(door=row.door, model_version=row.model_version, now=now)


def door_health_summaries(door_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """What a dashboard tile shows of each door's recognition health (one query): per model version
    its status and, when drifting, the signals (registered with ``accessctl.selectors``)."""
    out: dict[int, list[dict[str, Any]]] = {}
    rows = RecognitionHealth.objects.filter(door_id__in=door_ids).order_by("door_id", "model_version")
    for row in rows.only("door_id", "model_version", "status", "recent", "evaluated_at"):
        signals = [s["signal"].replace("_", " ") for s in (row.recent or {}).get("signals", [])]
        out.setdefault(row.door_id, []).append({
            "model_version": row.model_version, "status": row.status, "label": row.get_status_display(),
            "signals": signals, "evaluated_at": row.evaluated_at,
        })  # fmt: skip
    return out
