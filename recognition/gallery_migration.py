"""Gallery migration without downtime: build a model version's gallery in the background, then switch.

``model_registry promote V`` (admin action, ``POST /api/v1/models/{id}/promote/``) calls
:func:`gallery_migration_start`: a :class:`~recognition.models.GalleryMigration` row, and the
``recognition.gallery_migrate`` task on the gallery queue (a worker of its own, see
``settings.GALLERY_QUEUE``). The task (:func:`gallery_migration_run`) embeds every accepted enrolment
photo that has no vector of V yet with V's embedder, through the enrolment pipeline
(:func:`recognition.enrollment.photo_version_analyse`), in batches of
``RECOGNITION_GALLERY_MIGRATION_BATCH`` photos written in one transaction each, at most
``RECOGNITION_GALLERY_MIGRATION_RATE`` photos per second. After ``..._SLICE_S`` seconds it hands
over to a fresh task. Nothing but the vectors records what is done, so a killed worker loses at
most its current batch: the next run (the redelivered task, or :func:`gallery_migrations_resume`
from Celery beat) starts again from the photos still missing.

When no photo is missing, the version's HNSW index is built if it has none (concurrently), and,
for a promotion, the version is activated through
:func:`recognition.model_registry.model_version_transition`, whose check
(:func:`recognition.gallery_versions.gallery_ready`) runs under the registry lock: a photo accepted
while the switch happens makes the check fail, and the run embeds it and tries again. The old
version keeps its vectors and index (embedding-mode devices are decided in the version they send)
until it is retired (:func:`recognition.model_registry.model_version_retire`).

Photos accepted while a version is kept (being built, or built) are embedded with it by
:func:`photo_versions_topup` (the ``recognition.gallery_photo_versions`` task the enrolment
schedules on commit); :func:`gallery_topups_resume` (Celery beat) sends again those whose task
never ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accessctl.tokens import SystemActor
from faceengine.embedder import Embedder, EmbedderError
from recognition.calibration import threshold_measured
from recognition.enrollment import FaceAnalysis, photo_embedding_store, photo_version_analyse
from recognition.gallery_versions import (
    PHOTO_VERSIONS_TASK,
    gallery_failed_photos,
    gallery_missing_photos,
    gallery_photo_counts,
    gallery_ready,
    kept_versions,
)
from recognition.indexing import hnsw_ensure
from recognition.model_registry import (
    BundleRefused,
    RegistryError,
    State,
    model_version_note,
    model_version_transition,
    model_version_verified,
    model_version_verify,
)
from recognition.models import EMBEDDING_DIMS, EnrollmentPhoto, FaceEmbedding, GalleryMigration, ModelVersion
from recognition.staging import Backlog, staged_backlog

__all__ = [
    "DoorsFirst",
    "MigrationProgress",
    "gallery_migration_pause",
    "gallery_migration_progress",
    "gallery_migration_resume",
    "gallery_migration_run",
    "gallery_migration_start",
    "gallery_migrations_resume",
    "gallery_ready",
    "gallery_topups_resume",
    "photo_versions_topup",
]

logger = logging.getLogger(__name__)

Phase = GalleryMigration.State
MIGRATE_TASK = "recognition.gallery_migrate"
#: How many times a run re-scans and retries the switch when photos were accepted meanwhile.
SWITCH_ATTEMPTS = 5
#: At most this many ids of photos a version could not embed are kept on its migration row.
FAILED_IDS_KEPT = 10000
_LOCK_NAMESPACE = 0x67616C  # "gal": session advisory locks, one run per migration at a time


@dataclass(frozen=True)
class MigrationProgress:
    """What the admin and the API show of a migration."""

    model_version: str
    state: str
    activate: bool
    total: int
    done: int
    failed: int
    percent: float
    photos_per_s: float
    eta_s: float | None
    ready: bool
    last_error: str


# --------------------------------------------------------------------------- selectors


def gallery_migration_progress(migration: GalleryMigration) -> MigrationProgress:
    """done/total, speed and the time left of ``migration`` (as last written by its worker)."""
    left = max(0, migration.total - migration.done - migration.failed)
    rate = float(migration.photos_per_s or 0.0)
    eta = round(left / rate, 1) if rate > 0 and left else (0.0 if not left else None)
    return MigrationProgress(
        model_version=migration.model.model_version,
        state=migration.state,
        activate=migration.activate,
        total=migration.total,
        done=migration.done,
        failed=migration.failed,
        percent=round(100.0 * migration.done / migration.total, 1) if migration.total else 100.0,
        photos_per_s=round(rate, 2),
        eta_s=eta,
        ready=gallery_ready(migration.model.model_version),
        last_error=migration.last_error,
    )


# --------------------------------------------------------------------------- services


def _enqueue(migration_id: int) -> None:
    try:
        current_app.send_task(MIGRATE_TASK, args=[migration_id], queue=settings.GALLERY_QUEUE)
    except Exception:  # the beat sweep (gallery_migrations_resume) enqueues it again
        logger.exception("could not enqueue gallery migration %s; the periodic sweep will", migration_id)


def gallery_migration_start(
    *, model: ModelVersion, actor: Any = None, activate: bool = True, note: str = ""
) -> GalleryMigration:
    """Start building ``model``'s gallery in the background; with ``activate`` (a promotion) the
    version becomes active once the gallery is complete. Starting one that is queued or running
    changes nothing (a promotion request keeps ``activate``); a paused, failed or finished one is
    started again (it resumes from the photos still missing). One promotion at a time
    (``promotion_in_progress``); a promotion needs a calibrated threshold (``not_calibrated``) and a
    bundle that verifies. Recorded as a registry note."""
    if model.state == State.ACTIVE:
        raise RegistryError(f"{model.model_version} is already active.", code="active")
    if model.state == State.RETIRED:
        raise RegistryError(
            f"{model.model_version} is retired: move it back to candidate before promoting it.", code="retired"
        )
    if model.model_version not in EMBEDDING_DIMS:
        raise RegistryError(f"{model.model_version} has no gallery index (recognition.models.EMBEDDING_DIMS).")
    if activate:  # what activation will check at the end, checked before hours of re-embedding
        if not threshold_measured(model.model_version):
            raise RegistryError(
                f"{model.model_version} has no measured match threshold: once active it would deny every "
                "crop-mode face (model_not_calibrated). Calibrate it first (manage.py calibrate_threshold).",
                code="not_calibrated",
            )
        if not model.signature:
            raise BundleRefused(
                f"{model.model_version} is not signed: register it (manage.py model_registry register) first.",
                code="unsigned",
            )
        model_version_verify(model=model)
    else:
        model_version_verified(model.model_version)  # a bundle that does not verify is never built
    with transaction.atomic():
        # Every registry row locked in one order (as activation does): two promotions cannot both start.
        rows = {m.pk: m for m in ModelVersion.objects.select_for_update().order_by("pk")}
        model = rows[model.pk]
        other = (
            GalleryMigration.objects.filter(activate=True, state__in=[Phase.QUEUED, Phase.RUNNING, Phase.PAUSED])
            .exclude(model=model)
            .select_related("model")
            .first()
        )
        if activate and other is not None:
            raise RegistryError(
                f"{other.model.model_version} is being promoted ({other.state}): let it finish, or pause it and "
                "retire it, before promoting another version.",
                code="promotion_in_progress",
            )
        migration, created = GalleryMigration.objects.select_for_update().get_or_create(
            model=model, defaults={"activate": activate}
        )
        if not created and migration.state in (Phase.QUEUED, Phase.RUNNING):
            if activate and not migration.activate:
                migration.activate = True
                migration.save(update_fields=["activate"])
            return migration
        total, done = gallery_photo_counts(model.model_version)
        migration.state, migration.activate = Phase.QUEUED, activate
        migration.total, migration.done, migration.embedded = total, done, 0
        migration.failed, migration.failed_photo_ids, migration.last_error = 0, [], ""
        migration.photos_per_s, migration.started_at, migration.finished_at = 0.0, None, None
        migration.heartbeat_at = timezone.now()
        migration.requested_by = actor if getattr(actor, "pk", None) else None
        name = str(getattr(actor, "username", None) or getattr(actor, "label", None) or "system")
        migration.requested_by_name = name[:150]
        migration.save()
        what = "promotion requested: gallery build queued" if activate else "gallery build queued"
        what = f"{what} ({done}/{total} photos embedded)"
        model_version_note(model=model, actor=actor, note=f"{what}; {note}" if note else what)
        migration_id = migration.pk
        transaction.on_commit(lambda: _enqueue(migration_id))
    return migration


def gallery_migration_pause(*, migration: GalleryMigration, actor: Any = None) -> GalleryMigration:
    """Pause a queued or running migration (its worker stops after the current batch)."""
    with transaction.atomic():
        migration = GalleryMigration.objects.select_for_update().select_related("model").get(pk=migration.pk)
        if migration.state not in (Phase.QUEUED, Phase.RUNNING):
            raise RegistryError(f"the gallery build of {migration.model.model_version} is {migration.state}.")
        migration.state = Phase.PAUSED
        migration.save(update_fields=["state"])
        model_version_note(model=migration.model, actor=actor, note="gallery build paused")
    return migration


def gallery_migration_resume(*, migration: GalleryMigration, actor: Any = None) -> GalleryMigration:
    """Start a paused or failed migration again (:func:`gallery_migration_start`)."""
    return gallery_migration_start(model=migration.model, actor=actor, activate=migration.activate, note="resumed")


@contextmanager
def _run_lock(migration_id: int) -> Iterator[bool]:
    """A session advisory lock per migration: a redelivered task and the sweep's cannot run it twice."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, migration_id])
        (locked,) = cursor.fetchone()
    try:
        yield bool(locked)
    finally:
        if locked:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_NAMESPACE, migration_id])


def _still_kept(model_id: int) -> ModelVersion | None:
    """In the write transaction: the version row (share-locked, so a retirement waits) when its
    gallery is still kept (active, or with a migration row), else None."""
    model = ModelVersion.objects.raw(
        f"SELECT * FROM {ModelVersion._meta.db_table} WHERE id = %s FOR SHARE", [model_id]
    )  # fmt: skip
    row = next(iter(model), None)
    if row is None or (row.state != State.ACTIVE and not GalleryMigration.objects.filter(model_id=model_id).exists()):
        return None
    return row


def _commit_without_waiting() -> None:
    """This transaction's commit does not wait for its WAL to reach the disk (``synchronous_commit``
    off, this transaction only): the build's commits stop queueing with the door decisions' for the
    WAL flush (the decisions' waits during a build are IO:WalSync / LWLock:WALWrite, sampled by
    ``bench/model_promotion.py``; the gain was within that bench's run-to-run noise). A crash can
    lose the build's last fraction of a second of vectors, never a decision's: the build is resumed
    from the vectors that are there and embeds the missing ones again."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = off")


def _analyses_store(model_id: int, analyses: dict[int, FaceAnalysis]) -> tuple[int, list[int]] | None:
    """Write the vectors of one batch in one transaction: only for photos still accepted (locked, so
    a concurrent rejection waits and then removes them) that have no vector of the version yet.
    Returns (stored, failed photo ids), or None when the version's gallery is no longer kept."""
    with transaction.atomic():
        _commit_without_waiting()
        model = _still_kept(model_id)
        if model is None:
            return None
        # The photos are locked before their vectors are read: a second writer of the same photo (a
        # top-up sent again by the sweep while the first still ran) waits, then sees its vector.
        photos = list(
            EnrollmentPhoto.objects.select_for_update()
            .filter(pk__in=list(analyses), status=EnrollmentPhoto.Status.ACCEPTED)
            .order_by("pk")
        )
        have = set(
            FaceEmbedding.objects.filter(photo_id__in=list(analyses), model_version=model.model_version).values_list(
                "photo_id", flat=True
            )
        )
        stored, failed = 0, []
        for photo in photos:
            analysis = analyses[photo.pk]
            if photo.pk in have:
                continue
            if not analysis.ok or analysis.embedding is None or analysis.model_version != model.model_version:
                failed.append(photo.pk)
                continue
            photo_embedding_store(photo=photo, analysis=analysis)
            stored += 1
    return stored, failed


class DoorsFirst:
    """The build's yield to door decisions: before each photo, while a staged detection has waited
    longer than ``busy_age_s`` for its decision (:func:`recognition.staging.staged_backlog`), wait in
    steps of ``step_s``, at most ``max_s`` per photo (so the build always moves on, slowly, under
    a load that never lets up). ``busy_age_s`` 0 turns it off. Between waits the operating system's
    priority (``recognition.worker_priority``) keeps the build's compute behind the decisions'; this
    also covers what the build makes others do (PostgreSQL, the disk) and a worker the operating
    system cannot lower (one container per worker, equal CPU shares)."""

    def __init__(
        self,
        *,
        busy_age_s: float,
        max_s: float,
        step_s: float = 0.05,
        backlog: Callable[[], Backlog] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.busy_age_s = max(0.0, float(busy_age_s))
        self.max_s = max(0.0, float(max_s))
        self.step_s = max(0.001, float(step_s))
        self.within_s = max(1.0, float(settings.DEVICE_INBOUND_RETRY_AFTER_S))
        self._backlog = backlog or (lambda: staged_backlog(within_s=self.within_s))
        self._sleep = sleep
        self.waited_s = 0.0  # in all, since it was made
        self.waits = 0  # photos it held back

    @classmethod
    def from_settings(cls) -> DoorsFirst:
        return cls(busy_age_s=settings.RECOGNITION_GALLERY_YIELD_AGE_S, max_s=settings.RECOGNITION_GALLERY_YIELD_MAX_S)

    def busy(self) -> bool:
        return self.busy_age_s > 0 and self._backlog().oldest_s > self.busy_age_s

    def wait(self) -> float:
        """Wait while door decisions are behind (at most ``max_s``); returns the seconds waited."""
        waited = 0.0
        while waited < self.max_s and self.busy():
            step = min(self.step_s, self.max_s - waited)
            self._sleep(step)
            waited += step
        if waited:
            self.waits += 1
            self.waited_s += waited
        return waited


class _Pacer:
    """At most ``rate`` photos per second over a slice (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.rate = max(0.0, float(rate))
        self.started = time.monotonic()
        self.count = 0

    def after(self, photos: int) -> None:
        self.count += photos
        if self.rate > 0:
            wait = self.started + self.count / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def speed(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.count / elapsed if elapsed > 0 else 0.0


def _fail(migration_id: int, message: str) -> None:
    logger.error("gallery migration %s failed: %s", migration_id, message)
    GalleryMigration.objects.filter(pk=migration_id).update(
        state=Phase.FAILED, last_error=message[:300], finished_at=timezone.now(), heartbeat_at=timezone.now()
    )


def gallery_migration_run(
    *,
    migration_id: int,
    slice_s: float | None = None,
    rate: float | None = None,
    batch: int | None = None,
    embedder: Embedder | None = None,
    between_batches: Callable[[GalleryMigration], None] | None = None,
    doors: DoorsFirst | None = None,
) -> bool:
    """Run migration ``migration_id`` for at most ``slice_s`` seconds (module docstring). Returns
    True when photos remain (the caller enqueues the next slice), False when it finished, failed,
    was paused or removed, or another run holds it. ``between_batches`` is called after each batch
    (tests and the bench use it to act at the worst moment). Before each photo the run yields to
    door decisions that are waiting (``doors``, by default :meth:`DoorsFirst.from_settings`)."""
    slice_s = settings.RECOGNITION_GALLERY_MIGRATION_SLICE_S if slice_s is None else slice_s
    rate = settings.RECOGNITION_GALLERY_MIGRATION_RATE if rate is None else rate
    batch = max(1, int(settings.RECOGNITION_GALLERY_MIGRATION_BATCH if batch is None else batch))
    with _run_lock(migration_id) as locked:
        if not locked:
            logger.info("gallery migration %s is run by another worker", migration_id)
            return False
        migration = GalleryMigration.objects.select_related("model").filter(pk=migration_id).first()
        if migration is None or migration.state not in (Phase.QUEUED, Phase.RUNNING):
            return False
        version = migration.model.model_version
        now = timezone.now()
        GalleryMigration.objects.filter(pk=migration_id).update(
            state=Phase.RUNNING, started_at=migration.started_at or now, heartbeat_at=now
        )
        try:
            emb = embedder or _version_embedder(version)
        except (RegistryError, EmbedderError, FileNotFoundError, OSError) as exc:
            _fail(migration_id, f"cannot load {version}: {exc}")
            return False
        deadline = time.monotonic() + slice_s
        pacer = _Pacer(rate)
        doors = doors or DoorsFirst.from_settings()
        failed = set(migration.failed_photo_ids or [])
        for attempt in range(SWITCH_ATTEMPTS):
            cursor, found = 0, 0
            while ids := gallery_missing_photos(version, after_id=cursor, limit=batch, exclude=failed):
                found += len(ids)
                photos = EnrollmentPhoto.objects.in_bulk(ids)
                analyses = {}
                for pk, photo in photos.items():
                    doors.wait()
                    analyses[pk] = photo_version_analyse(photo, emb)
                result = _analyses_store(migration.model_id, analyses)
                if result is None:
                    logger.warning("gallery migration %s stopped: %s is no longer kept", migration_id, version)
                    return False
                stored, newly_failed = result
                failed.update(newly_failed)
                cursor = ids[-1]
                pacer.after(len(ids))
                migration = _progress_write(migration_id, version, stored, failed, pacer.speed(), doors)
                if migration is None or migration.state != Phase.RUNNING:
                    logger.info("gallery migration %s of %s stops (%s)", migration_id, version,
                                migration.state if migration else "removed")  # fmt: skip
                    return False
                if between_batches is not None:
                    between_batches(migration)
                if time.monotonic() >= deadline:
                    return True
            refused = _finish(migration_id, version, failed)
            if refused is None:
                return False
            if attempt and not found:  # nothing left to embed, yet incomplete: photos it cannot embed
                _fail(migration_id, f"cannot activate {version}: {refused}")
                return False
        _fail(migration_id, f"photos kept arriving while switching to {version}; promote it again")
        return False


def _version_embedder(version: str) -> Embedder:
    from recognition.engine import version_embedder

    return version_embedder(version)


def _progress_write(
    migration_id: int, version: str, stored: int, failed: set[int], speed: float, doors: DoorsFirst
) -> GalleryMigration | None:
    total, done = gallery_photo_counts(version)
    with transaction.atomic():
        _commit_without_waiting()  # total and done are counted again from the vectors at the next write
        migration = GalleryMigration.objects.select_for_update().select_related("model").filter(pk=migration_id).first()
        if migration is None:
            return None
        migration.total, migration.done, migration.embedded = total, done, migration.embedded + stored
        migration.failed, migration.failed_photo_ids = len(failed), sorted(failed)[:FAILED_IDS_KEPT]
        migration.photos_per_s, migration.heartbeat_at = round(speed, 3), timezone.now()
        migration.save(
            update_fields=["total", "done", "embedded", "failed", "failed_photo_ids", "photos_per_s", "heartbeat_at"]
        )
    logger.info("gallery migration %s of %s: %d/%d photos (%.1f photos/s; yielded to door decisions %.1f s "
                "before %d photos)", migration_id, version, done, total, speed, doors.waited_s,
                doors.waits)  # fmt: skip
    return migration


def _finish(migration_id: int, version: str, failed: set[int]) -> str | None:
    """No photo left: build the index if there is none, switch for a promotion. None when finished
    (done, or failed for good), else why the switch was refused (photos accepted meanwhile, or
    people whose photos this version cannot embed): the caller scans again."""
    hnsw_ensure(version)
    migration = GalleryMigration.objects.select_related("model").get(pk=migration_id)
    if migration.activate and migration.model.state != State.ACTIVE:
        try:
            model_version_transition(
                model=migration.model, to_state=State.ACTIVE, actor=SystemActor(label="gallery migration"),
                note=f"promoted: gallery complete ({migration.done}/{migration.total} photos, {len(failed)} failed)",
            )  # fmt: skip
        except RegistryError as exc:
            if exc.code != "gallery_incomplete":
                _fail(migration_id, f"cannot activate {version}: {exc.message}")
                return None
            logger.info("gallery migration %s: the switch to %s found the gallery incomplete; scanning again",
                        migration_id, version)  # fmt: skip
            return exc.message
    total, done = gallery_photo_counts(version)
    GalleryMigration.objects.filter(pk=migration_id).update(
        state=Phase.DONE, total=total, done=done, finished_at=timezone.now(), heartbeat_at=timezone.now()
    )
    logger.warning("gallery migration %s of %s done: %d/%d photos, %d failed%s", migration_id, version, done, total,
                   len(failed), ", version active" if migration.activate else "")  # fmt: skip
    return None


def gallery_migrations_resume(*, stale_s: float | None = None) -> list[int]:
    """Enqueue again the migrations that are queued or running but whose worker has not written
    progress for ``stale_s`` seconds (a killed worker, a lost message); Celery beat. Their run
    resumes from the photos still missing."""
    stale_s = 3 * settings.RECOGNITION_GALLERY_MIGRATION_SLICE_S + 60 if stale_s is None else stale_s
    cutoff = timezone.now() - timezone.timedelta(seconds=stale_s)
    ids = list(
        GalleryMigration.objects.filter(state__in=[Phase.QUEUED, Phase.RUNNING], heartbeat_at__lt=cutoff).values_list(
            "pk", flat=True
        )
    )
    for migration_id in ids:
        GalleryMigration.objects.filter(pk=migration_id).update(heartbeat_at=timezone.now())
        logger.warning("gallery migration %s made no progress for %.0f s: enqueued again", migration_id, stale_s)
        _enqueue(migration_id)
    return ids


def photo_versions_topup(*, photo_id: int, embedders: dict[str, Embedder] | None = None) -> list[str]:
    """Embed accepted photo ``photo_id`` with every kept model version it has no vector of (the
    task an enrolment schedules on commit). Returns the versions it was embedded with."""
    photo = EnrollmentPhoto.objects.filter(pk=photo_id, status=EnrollmentPhoto.Status.ACCEPTED).first()
    if photo is None:
        return []
    have = set(FaceEmbedding.objects.filter(photo_id=photo_id).values_list("model_version", flat=True))
    added = []
    for version in kept_versions():
        if version in have:
            continue
        model_id = ModelVersion.objects.filter(model_version=version).values_list("pk", flat=True).first()
        try:
            emb = (embedders or {}).get(version) or _version_embedder(version)
        except (RegistryError, EmbedderError, FileNotFoundError, OSError):
            logger.exception("photo %s: cannot load %s; its migration's next pass embeds it", photo_id, version)
            continue
        result = _analyses_store(model_id, {photo_id: photo_version_analyse(photo, emb)})
        if result and result[0]:
            added.append(version)
        elif result and result[1]:
            _failed_add(model_id, result[1])
            logger.warning("photo %s could not be embedded with %s: counted as failed for it", photo_id, version)
    if added:
        logger.info("photo %s embedded with the kept versions %s", photo_id, ", ".join(added))
    return added


def _failed_add(model_id: int, photo_ids: list[int]) -> None:
    """Record photos that version ``model_id`` cannot embed on its migration row (where the build
    records its own), so that :func:`gallery_topups_resume` does not send them again and again."""
    with transaction.atomic():
        migration = GalleryMigration.objects.select_for_update().filter(model_id=model_id).first()
        if migration is None:
            return
        failed = set(migration.failed_photo_ids or []) | set(photo_ids)
        GalleryMigration.objects.filter(pk=migration.pk).update(
            failed_photo_ids=sorted(failed)[:FAILED_IDS_KEPT], failed=len(failed)
        )


#: The sweep leaves alone photos uploaded less than this long ago: their top-up may still be queued.
TOPUP_GRACE_S = 120.0
#: At most this many photos are sent again per sweep (the gallery worker takes them one by one).
TOPUP_SWEEP_LIMIT = 500


def gallery_topups_resume(*, grace_s: float = TOPUP_GRACE_S, limit: int = TOPUP_SWEEP_LIMIT) -> dict[str, list[int]]:
    """Send again the top-ups that never ran (Celery beat): an accepted photo that a kept version
    lacks while no build of that version is under way. The enrolment's top-up message was lost (the
    broker was down when it committed, or the message went with a dead broker), or the photo was
    accepted by a process that still had the previous model loaded when a promotion switched. Left
    alone, that person would never be recognised in that version: in crop mode if it is the active
    one, by the devices still on it otherwise. Photos uploaded within ``grace_s`` (their top-up may
    be queued), photos the version could not embed, and versions being built or paused (their build
    embeds them) are skipped. Returns {version: the photo ids it lacked}; at most ``limit`` photos
    are sent, and none more once the broker refuses one (the next sweep sends them)."""
    building = set(
        GalleryMigration.objects.filter(state__in=[Phase.QUEUED, Phase.RUNNING, Phase.PAUSED]).values_list(
            "model__model_version", flat=True
        )
    )
    cutoff = timezone.now() - timezone.timedelta(seconds=grace_s)
    lacking: dict[str, list[int]] = {}
    for version in kept_versions():
        if version in building:
            continue
        ids = gallery_missing_photos(
            version, exclude=gallery_failed_photos(version), uploaded_before=cutoff, limit=limit
        )
        if ids:
            lacking[version] = ids
    sent = 0
    for photo_id in sorted({pk for ids in lacking.values() for pk in ids})[:limit]:
        try:
            current_app.send_task(PHOTO_VERSIONS_TASK, args=[photo_id], queue=settings.GALLERY_QUEUE)
        except Exception:  # the next sweep sends it
            logger.exception("gallery sweep: could not send photo %s to the gallery worker", photo_id)
            break
        sent += 1
    for version, ids in lacking.items():
        logger.warning("gallery sweep: %d accepted photos lack a vector of %s (a lost top-up?), first ids %s; "
                       "%d photos sent to the gallery worker again", len(ids), version, ids[:5], sent)  # fmt: skip
    return lacking
