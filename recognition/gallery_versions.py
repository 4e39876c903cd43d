"""Which model versions the gallery keeps, and whether a version's gallery is complete.

The gallery holds every version the fleet still uses (DESIGN.md): the active one, a version whose
gallery is being built or was built for a promotion (it has a
:class:`~recognition.models.GalleryMigration` row), and the previously active one after a promotion
(embedding-mode devices keep being decided in it until it is retired, which removes its vectors).
Every accepted enrolment photo gets a vector of each kept version: the enrolment embeds it with the
active one and, once committed, asks the gallery worker to embed it with the others
(:func:`photo_versions_schedule`).

:func:`gallery_ready` is the one test of "version V's gallery is complete", used by the activation
check (:func:`recognition.model_registry.model_version_transition`), the gallery migration and the
shadow comparison. It reads only.

The switch race: an enrolment that accepts a photo takes a share lock on the active registry row
(:func:`gallery_versions_lock`) in the transaction that writes its vector, and activation locks
every registry row for update before it checks :func:`gallery_ready`. So a photo accepted while a
promotion switches is either committed before the check (and counted as missing in the new
version: the activation is refused and the migration embeds it first) or decided after the switch
(and embedded in the new active version by the task its commit schedules).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from accessctl.process_cache import ProcessCache
from recognition.models import EMBEDDING_DIMS, EnrollmentPhoto, FaceEmbedding, GalleryMigration, ModelVersion

logger = logging.getLogger(__name__)

#: The Celery task that embeds one photo with every kept version it lacks (recognition.tasks).
PHOTO_VERSIONS_TASK = "recognition.gallery_photo_versions"


def kept_versions() -> list[str]:
    """The model versions whose gallery is kept (module docstring), active first."""
    rows = ModelVersion.objects.filter(
        Q(state=ModelVersion.State.ACTIVE) | Q(gallery_migration__isnull=False)
    ).values_list("model_version", "state")
    versions = sorted(rows, key=lambda r: (r[1] != ModelVersion.State.ACTIVE, r[0]))
    return [v for v, _ in versions if v in EMBEDDING_DIMS]


def _removed_load() -> frozenset[str]:
    rows = ModelVersion.objects.filter(state=ModelVersion.State.RETIRED, gallery_migration__isnull=True)
    return frozenset(rows.values_list("model_version", flat=True))


#: Read for every embedding-mode detection; a retirement elsewhere is seen within ``ttl_s``.
_REMOVED = ProcessCache("recognition-gallery-removed", ttl_s=30.0, cleared_by=(ModelVersion, GalleryMigration))


def gallery_removed(model_version: str) -> bool:
    """True when ``model_version`` is retired and its gallery removed (not a version kept after a
    promotion): no vector of it is left, so a device still embedding with it matches nobody.
    Kept per process for 30 s (a change in this process is seen at once)."""
    return model_version in _REMOVED.get(None, _removed_load)


def gallery_removed_cache_clear() -> None:
    _REMOVED.clear()


def _accepted_without(model_version: str) -> QuerySet[EnrollmentPhoto]:
    vectors = FaceEmbedding.objects.filter(photo_id=OuterRef("pk"), model_version=model_version)
    return EnrollmentPhoto.objects.filter(status=EnrollmentPhoto.Status.ACCEPTED).exclude(Exists(vectors))


def gallery_missing_photos(
    model_version: str,
    *,
    after_id: int = 0,
    limit: int | None = None,
    exclude: Collection[int] = (),
    uploaded_before: datetime | None = None,
) -> list[int]:
    """Ids (ascending, above ``after_id``, not in ``exclude``, uploaded before ``uploaded_before``)
    of accepted photos with no vector of ``model_version``."""
    photos = _accepted_without(model_version).filter(pk__gt=after_id)
    if exclude:
        photos = photos.exclude(pk__in=list(exclude))
    if uploaded_before is not None:
        photos = photos.filter(uploaded_at__lt=uploaded_before)
    ids = photos.order_by("pk").values_list("pk", flat=True)
    return list(ids[:limit] if limit else ids)


def gallery_photo_counts(model_version: str) -> tuple[int, int]:
    """(accepted photos, of which with a vector of ``model_version``)."""
    total = EnrollmentPhoto.objects.filter(status=EnrollmentPhoto.Status.ACCEPTED).count()
    done = (
        FaceEmbedding.objects.filter(model_version=model_version, photo__status=EnrollmentPhoto.Status.ACCEPTED)
        .values("photo_id")
        .distinct()
        .count()
    )
    return total, done


def gallery_failed_photos(model_version: str) -> list[int]:
    """Photos ``model_version`` could not embed (no usable face for it, original gone), as its
    migration recorded them."""
    row = GalleryMigration.objects.filter(model__model_version=model_version).values("failed_photo_ids").first()
    return [int(i) for i in (row or {}).get("failed_photo_ids") or []]


def gallery_gaps(model_version: str) -> tuple[int, int]:
    """(accepted photos still to embed in ``model_version``, people of the active version it lacks).

    A photo that the version's migration could not embed (no usable face for that model, file gone)
    is not counted as still to embed; the person it belongs to is, unless another of their photos
    covers them.
    """
    missing = _accepted_without(model_version).exclude(pk__in=gallery_failed_photos(model_version)).count()
    actives = ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE)
    active = actives.values_list("model_version", flat=True).first()
    people = 0
    if active and active != model_version:
        covered = FaceEmbedding.objects.filter(model_version=model_version, person_id=OuterRef("person_id"))
        people = (
            FaceEmbedding.objects.filter(model_version=active)
            .exclude(Exists(covered))
            .values("person_id")
            .distinct()
            .count()
        )
    return missing, people


def gallery_ready(model_version: str) -> bool:
    """True when ``model_version``'s gallery is complete: every accepted enrolment photo has a vector
    of it (except photos it could not embed) and it covers everyone the active version covers."""
    if model_version not in EMBEDDING_DIMS:
        return False
    return gallery_gaps(model_version) == (0, 0)


def gallery_versions_lock() -> None:
    """Share-lock the active registry row in the current transaction (an enrolment accepting a
    photo): an activation, which locks every row for update, waits for it (module docstring)."""
    if not connection.in_atomic_block:
        raise RuntimeError("gallery_versions_lock() belongs inside the transaction that writes the vector")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {ModelVersion._meta.db_table} WHERE state = 'active' FOR SHARE")


def photo_versions_schedule(photo_id: int, *, have: str) -> None:
    """Once the current transaction commits, embed accepted photo ``photo_id`` with every kept version
    other than ``have`` (the one the enrolment used) on the gallery queue. Nothing is sent when the
    active version is the only one kept (the usual case). A message the broker loses leaves the
    photo counted by :func:`gallery_ready`, so a promotion still embeds it before switching, and
    ``recognition.gallery_migration.gallery_topups_resume`` sends it again."""
    others = [v for v in kept_versions() if v != have]
    if not others:
        return

    def send() -> None:
        try:
            current_app.send_task(PHOTO_VERSIONS_TASK, args=[photo_id], queue=settings.GALLERY_QUEUE)
        except Exception:
            logger.exception("could not schedule photo %s for the gallery versions %s", photo_id, others)

    transaction.on_commit(send)
