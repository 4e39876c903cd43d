"""Celery tasks of the recognition app (thin adapters around services)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init
from django.conf import settings
from django.db import InterfaceError, OperationalError

from recognition.health import health_evaluate_all
from recognition.models import RecognitionHealth
from recognition.staging import inbound_requeue

logger = logging.getLogger(__name__)


def _background_only_worker() -> bool:
    """True in a worker that consumes only background queues (its -Q): gallery builds and/or shadow
    decisions, never a door decision."""
    from celery import current_app

    consumed = set(current_app.amqp.queues.consume_from or {})
    return bool(consumed) and consumed <= {settings.GALLERY_QUEUE, settings.RECOGNITION_SHADOW_QUEUE}


@worker_process_init.connect
def _load_model(**_: object) -> None:
    """Load the embedder (and the liveness scorer) once per worker process, before the first detection.

    A background worker (gallery builds, shadow decisions) loads nothing ahead (it loads the version
    it builds or shadows) and lowers its CPU priority (``RECOGNITION_GALLERY_WORKER_NICE``): on a
    shared machine the decisions come first."""
    from recognition.engine import active_embedder

    if _background_only_worker():
        from recognition.worker_priority import background_priority_lower

        priority = background_priority_lower(settings.RECOGNITION_GALLERY_WORKER_NICE)
        logger.info("background worker process ready (nice %d, session autogroup nice %s)", priority.nice,
                    "n/a" if priority.autogroup_nice is None else priority.autogroup_nice)  # fmt: skip
        return
    if settings.RECOGNITION_PRELOAD:
        # The model is the registry's active version (a database read; the parent closed its
        # connections before forking, see celery.fixups.django). A failure here is logged and the
        # first decision tries again (and records a processing error if it fails too).
        try:
            embedder = active_embedder()
        except Exception:
            logger.exception("worker could not preload the active embedder")
        else:
            logger.info("worker ready with embedder %s", embedder.model_version)
            if settings.LIVENESS_SERVER_SCORE:
                from recognition.liveness import active_liveness_scorer

                logger.info("worker ready with liveness scorer %s", active_liveness_scorer().model_version)
        if settings.RECOGNITION_PRELOAD_CHECK_S > 0:
            # A promotion's target is loaded in the background before it becomes active (and the
            # active one again if the load above failed): no load on a decision after a switch.
            # The reads above opened a connection Celery's Django fixup would close by descriptor
            # (it closes what a child inherited) while the preloader's thread opens its own: closed here.
            from django.db import connection

            from recognition.embedder_preload import embedder_preload_start

            connection.close()

            embedder_preload_start(
                interval_s=settings.RECOGNITION_PRELOAD_CHECK_S, retry_s=settings.RECOGNITION_PRELOAD_RETRY_S,
                lock_path=Path(settings.VAR_DIR) / "embedder-preload.lock",
                crop_window_s=settings.RECOGNITION_PRELOAD_CROP_WINDOW_S,
            )  # fmt: skip


#: Decisions survive a killed worker (acks_late + reject_on_worker_lost: redelivered) and retry
#: while the database is away; they are idempotent on the detection id.
_DECISION_TASK = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, InterfaceError, ConnectionError),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 20,
    "ignore_result": True,
}


@shared_task(name="recognition.decide", **_DECISION_TASK)
def decide(detection_id: str) -> str:
    """Decide one staged detection (idempotent on its id)."""
    from recognition.detections import detection_decide

    return detection_decide(detection_id=detection_id)


@shared_task(name="recognition.decide_many", **_DECISION_TASK)
def decide_many(detection_ids: list[str]) -> list[str]:
    """Decide staged detections that arrived together, in one transaction (see recognition.queueing).

    A transient database error retries the whole batch; what was decided before it is skipped
    then, because each decision is idempotent.
    """
    from recognition.detections import detections_decide

    return detections_decide(detection_ids)


def decisions_send(detection_ids: list[str]) -> None:
    """One ``recognition.decide`` task for one id, one ``recognition.decide_many`` for several.
    If the task broker is unreachable the staged rows stay and the inbound sweep enqueues them
    again, so the detections are delayed, not lost."""
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


@shared_task(name="recognition.inbound_sweep", ignore_result=True)
def inbound_sweep() -> int:
    """Enqueue again the decisions of detections staged too long (a lost task); Celery beat."""
    return inbound_requeue(send=decisions_send)


@shared_task(name="recognition.health_evaluate", ignore_result=True, acks_late=True)
def health_evaluate() -> int:
    """Recognition health of every door and model version against the door's baseline; Celery beat
    (routed to the default queue, off the decision queue). Returns how many pairs drift."""
    rows = health_evaluate_all()
    return sum(1 for row in rows if row.status == RecognitionHealth.Status.DRIFT)


@shared_task(
    name="recognition.shadow_decide",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    max_retries=3,
)
def shadow_decide(
    event_id: int, model_version: str, active_person_id: int | None, active_reason: str, queued_at: float
) -> str:
    """A shadow version decides a real event again without acting (``recognition.shadow``); routed to
    the shadow queue (``RECOGNITION_SHADOW_QUEUE``), fed by ``recognition.shadow_sampling``."""
    from recognition.shadow import shadow_decide as decide_in_shadow

    return decide_in_shadow(
        event_id=int(event_id), model_version=str(model_version),
        active_person_id=int(active_person_id) if active_person_id is not None else None,
        active_reason=str(active_reason), queued_at=float(queued_at),
    )  # fmt: skip


# =============================================================================================
# Gallery migration (recognition/gallery_migration.py), on the gallery queue (settings.GALLERY_QUEUE).
# =============================================================================================

_GALLERY_TASK = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": 10,
    "ignore_result": True,
}


@shared_task(name="recognition.gallery_migrate", **_GALLERY_TASK)
def gallery_migrate(migration_id: int) -> bool:
    """Run one slice of a gallery migration; enqueue the next slice while photos remain."""
    from recognition.gallery_migration import gallery_migration_run

    more = gallery_migration_run(migration_id=migration_id)
    if more:
        gallery_migrate.apply_async(args=[migration_id], queue=settings.GALLERY_QUEUE)
    return more


@shared_task(name="recognition.gallery_photo_versions", **_GALLERY_TASK)
def gallery_photo_versions(photo_id: int) -> list[str]:
    """Embed a newly accepted photo with the kept model versions it lacks."""
    from recognition.gallery_migration import photo_versions_topup

    return photo_versions_topup(photo_id=photo_id)


@shared_task(name="recognition.gallery_migrations_resume", ignore_result=True)
def gallery_migrations_resume() -> list[int]:
    """Enqueue again the migrations whose worker stopped writing progress; Celery beat."""
    from recognition.gallery_migration import gallery_migrations_resume as resume

    return resume()


@shared_task(name="recognition.gallery_topups_resume", ignore_result=True)
def gallery_topups_resume() -> dict[str, list[int]]:
    """Send again the photo top-ups that never ran (lost message, old model loaded); Celery beat."""
    from recognition.gallery_migration import gallery_topups_resume as resume

    return resume()


# =============================================================================================
# Bulk enrolment import (administrator UI). Separate from the decision tasks above.
# =============================================================================================


def _import_stage_local(job_id: str, target: Path) -> Path:
    """Copy a job's staged upload (``imports/<job>/``) from default storage into ``target``.

    Returns the zip archive's path, or the folder holding ``<Person_Name>/<photo>`` files.
    """
    from django.core.files.storage import default_storage

    from accessctl.storage import storage_walk

    prefix = f"imports/{job_id}"
    archive = f"{prefix}/archive.zip"
    if default_storage.exists(archive):
        local = target / "archive.zip"
        with default_storage.open(archive, "rb") as src, local.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        return local
    root = target / "files"
    for stored in storage_walk(default_storage, f"{prefix}/files"):
        relative = stored.name[len(f"{prefix}/files/") :]
        local = (root / relative).resolve()
        if root.resolve() not in local.parents:
            continue  # never write outside the staging folder
        local.parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(stored.name, "rb") as src, local.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


#: Per-photo verdicts listed in a finished import's result (the page shows them all).
IMPORT_ITEMS_LISTED = 5000


def _import_item(outcome: Any) -> dict[str, Any]:
    return {"person": outcome.folder, "file": outcome.filename, "status": outcome.status, "reason": outcome.reason,
            "person_id": outcome.person_id, "photo_id": outcome.photo_id}  # fmt: skip


def _import_unstage(job_id: str) -> None:
    from django.core.files.storage import default_storage

    from accessctl.storage import storage_delete_many, storage_walk

    names = [f.name for f in storage_walk(default_storage, f"imports/{job_id}")]
    storage_delete_many(default_storage, names)


@shared_task(
    bind=True,
    name="recognition.bulk_import_run",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    max_retries=3,
)
def bulk_import_run(self, job_id: str, user_id: int | None = None) -> dict:
    """Enrol every photo of an uploaded folder or zip (``<Person_Name>/*.jpg``) for the admin UI.

    The upload is staged in default storage under ``imports/<job_id>/`` by the view; progress
    (``done``/``total``, verdict counts) goes to the result backend, where the page polls it.
    """
    from django.contrib.auth import get_user_model

    from recognition.bulk_import import ImportSourceError, photos_import

    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    counts = {"done": 0, "total": 0, "accepted": 0, "rejected": 0, "duplicates": 0, "errors": 0}
    verdicts: dict[str, int] = {}  # photos per status, whatever statuses the enrolment service uses
    recent: list[dict] = []

    def progress(done: int, total: int, outcome: object) -> None:
        counts.update(done=done, total=total)
        key = {"accepted": "accepted", "held": "duplicates", "pending": "duplicates", "rejected": "rejected"}.get(
            outcome.status, "errors"
        )
        counts[key] += 1
        verdicts[outcome.status] = verdicts.get(outcome.status, 0) + 1
        recent.append(_import_item(outcome))
        del recent[:-8]
        self.update_state(state="PROGRESS", meta={**counts, "verdicts": verdicts, "recent": recent})

    with tempfile.TemporaryDirectory(prefix=f"import-{job_id}-") as tmp:
        source = _import_stage_local(job_id, Path(tmp))
        try:
            summary = photos_import(source=source, uploaded_by=user, progress=progress)
        except ImportSourceError as exc:
            logger.warning("bulk import %s: %s", job_id, exc)
            result = {**counts, "finished": True, "error": "The upload is not a folder of photos or a .zip file."}
        else:
            items = [_import_item(o) for o in summary.outcomes[:IMPORT_ITEMS_LISTED]]
            listed = {"items": items, "items_omitted": max(0, summary.total - len(items))}
            result = {**counts, **summary.as_dict(), "done": summary.total, "finished": True, "verdicts": verdicts,
                      "recent": recent, **listed}  # fmt: skip
    _import_unstage(job_id)
    logger.info("bulk import %s finished: %d pictures, %d accepted", job_id, result["total"], result["accepted"])
    return result
