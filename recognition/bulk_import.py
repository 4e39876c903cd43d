"""Bulk enrolment from a folder or a .zip laid out as ``<Person_Name>/*.jpg``.

The reusable core of ``manage.py enroll_folder``; a web upload or a Celery task calls
:func:`photos_import` with its own ``progress`` callback. Each picture goes through
:func:`recognition.enrollment.photos_enroll` (a person's pictures in batches of
:data:`PERSON_BATCH`), so the quality checks and the identity check (held for review) are the same
as for a web upload. People are found by name (``Colin_Powell`` -> ``Colin Powell``) and created
when missing.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from django.db import transaction

from accessctl.models import Person
from recognition.enrollment import MAX_UPLOAD_BYTES, EnrollmentCode, PhotoUpload, photos_enroll
from recognition.models import EnrollmentPhoto

if TYPE_CHECKING:
    from faceengine.embedder import Embedder

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
#: A person's pictures are checked together in batches of this many (the first batch of a new
#: person picks its reference face by consensus, see recognition.enrollment).
PERSON_BATCH = 8


class ImportSourceError(ValueError):
    """The source is neither a folder nor a readable .zip file."""


@dataclass(frozen=True)
class ImportItem:
    """One picture to enrol: the person's folder name, its file name, and how to read it."""

    folder: str
    filename: str
    read: Callable[[], bytes] = field(repr=False, compare=False)

    @property
    def person_name(self) -> str:
        return person_name_from_folder(self.folder)


@dataclass(frozen=True)
class ItemOutcome:
    folder: str
    filename: str
    status: str  # EnrollmentPhoto.Status value, or "error"
    reason: str = ""
    photo_id: int | None = None
    person_id: int | None = None


@dataclass
class ImportSummary:
    total: int = 0
    people_created: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0  # held for review (the identity check); the key the import page shows
    errors: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    outcomes: list[ItemOutcome] = field(default_factory=list)
    #: Names the import would have created a person for, but whose photos were all refused.
    people_discarded: list[str] = field(default_factory=list)
    created_ids: set[int] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "people_created": self.people_created,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "reasons": dict(self.reasons),
            "people_discarded": list(self.people_discarded),
        }


ProgressCallback = Callable[[int, int, ItemOutcome], None]


def person_name_from_folder(folder: str) -> str:
    return " ".join(folder.replace("_", " ").split())


def _is_image_name(path: PurePosixPath) -> bool:
    return (
        path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") or part == "__MACOSX" for part in path.parts)
        and len(path.parts) >= 2
    )


def _folder_items(root: Path) -> list[ImportItem]:
    items = []
    for path in sorted(root.rglob("*")):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_file() and _is_image_name(rel):
            items.append(ImportItem(folder=rel.parent.name, filename=rel.name, read=path.read_bytes))
    return items


def _zip_items(path: Path) -> list[ImportItem]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImportSourceError(f"{path} is not a readable .zip file") from exc
    items = []
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        rel = PurePosixPath(info.filename)
        if info.is_dir() or not _is_image_name(rel):
            continue

        def read(info: zipfile.ZipInfo = info) -> bytes:
            # Never inflate more than an upload may hold (zip bombs), whatever the header claims.
            with archive.open(info) as fh:
                return fh.read(MAX_UPLOAD_BYTES + 1)

        items.append(ImportItem(folder=rel.parent.name, filename=rel.name, read=read))
    return items


def import_items(source: str | Path) -> list[ImportItem]:
    """The pictures of a folder or .zip, ``<Person_Name>/<file>`` (nested folders: the innermost
    folder names the person), sorted by path."""
    path = Path(source)
    if path.is_dir():
        return _folder_items(path)
    if path.is_file() and zipfile.is_zipfile(path):
        return _zip_items(path)
    raise ImportSourceError(f"{path} is neither a folder nor a .zip file")


def _person_for(name: str, cache: dict[str, Person], summary: ImportSummary) -> Person:
    person = cache.get(name)
    if person is not None:
        return person
    with transaction.atomic():
        matches = list(Person.objects.filter(name=name).order_by("id")[:2])
        if len(matches) > 1:
            raise LookupError(f"several people are named {name!r}; enrol these photos one by one")
        if matches:
            person = matches[0]
        else:
            person = Person.objects.create(name=name)
            summary.people_created += 1
            summary.created_ids.add(person.pk)
            logger.info("bulk import created person %s", person.pk)
    cache[name] = person
    return person


def _people_without_photos_discard(summary: ImportSummary) -> None:
    """Remove the people this import created when every photo of theirs was rejected (or failed).

    A person is kept when at least one photo is accepted or awaits review (any status other than
    rejected): a folder of non-face pictures must not leave an empty "Nobody" behind. Their
    rejected photos (rows and files) go with them; the outcomes then name no person or photo.
    """
    if not summary.created_ids:
        return
    kept = set(
        EnrollmentPhoto.objects.filter(person_id__in=summary.created_ids)
        .exclude(status=EnrollmentPhoto.Status.REJECTED)
        .values_list("person_id", flat=True)
    )
    doomed = summary.created_ids - kept
    if not doomed:
        return
    photos = list(EnrollmentPhoto.objects.filter(person_id__in=doomed))
    names = dict(Person.objects.filter(pk__in=doomed).values_list("pk", "name"))
    with transaction.atomic():
        Person.objects.filter(pk__in=doomed).delete()  # photos cascade
    for photo in photos:
        for stored in (photo.image, photo.crop):
            if stored:
                stored.storage.delete(stored.name)
    summary.people_created -= len(doomed)
    summary.created_ids -= doomed
    summary.people_discarded = sorted(names[pk] for pk in doomed)
    summary.outcomes = [
        replace(o, person_id=None, photo_id=None) if o.person_id in doomed else o for o in summary.outcomes
    ]
    logger.info("bulk import: %d new people discarded (no photo accepted or awaiting review)", len(doomed))


def _batches(items: list[ImportItem], size: int) -> list[list[ImportItem]]:
    """Consecutive pictures of the same folder (person), at most ``size`` together."""
    batches: list[list[ImportItem]] = []
    for item in items:
        if batches and batches[-1][0].folder == item.folder and len(batches[-1]) < size:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def _outcome(item: ImportItem, photo: EnrollmentPhoto, summary: ImportSummary) -> ItemOutcome:
    if photo.status == EnrollmentPhoto.Status.ACCEPTED:
        summary.accepted += 1
    elif photo.status in (EnrollmentPhoto.Status.HELD, EnrollmentPhoto.Status.PENDING):
        summary.duplicates += 1
        summary.reasons[photo.quality_reason] += 1
    else:
        summary.rejected += 1
        summary.reasons[photo.quality_reason or EnrollmentCode.BAD_IMAGE] += 1
    return ItemOutcome(
        folder=item.folder,
        filename=item.filename,
        status=photo.status,
        reason=photo.quality_reason,
        photo_id=photo.pk,
        person_id=photo.person_id,
    )


def photos_import(
    *,
    source: str | Path,
    uploaded_by: Any = None,
    progress: ProgressCallback | None = None,
    embedder: Embedder | None = None,
) -> ImportSummary:
    """Enrol every picture of ``source`` (folder or .zip); ``progress(done, total, outcome)``
    is called after each picture. One bad picture never stops the import."""
    items = import_items(source)
    summary = ImportSummary(total=len(items))
    people: dict[str, Person] = {}

    def report(outcome: ItemOutcome) -> None:
        summary.outcomes.append(outcome)
        if progress is not None:
            progress(len(summary.outcomes), summary.total, outcome)

    def failed(item: ImportItem, exc: Exception) -> None:
        logger.warning("bulk import: %s/%s failed: %s", item.folder, item.filename, exc)
        summary.errors += 1
        report(ItemOutcome(folder=item.folder, filename=item.filename, status="error", reason=str(exc)[:200]))

    for batch in _batches(items, PERSON_BATCH):
        readable: list[tuple[ImportItem, PhotoUpload]] = []
        for item in batch:
            try:
                readable.append((item, PhotoUpload(image=item.read(), filename=item.filename)))
            except (OSError, zipfile.BadZipFile) as exc:
                failed(item, exc)
        if not readable:
            continue
        decided: set[int] = set()

        def decided_one(index: int, photo: EnrollmentPhoto, readable: list = readable, decided: set = decided) -> None:
            decided.add(index)
            report(_outcome(readable[index][0], photo, summary))

        try:
            person = _person_for(batch[0].person_name, people, summary)
            photos_enroll(
                person=person,
                uploads=[upload for _, upload in readable],
                uploaded_by=uploaded_by,
                embedder=embedder,
                progress=decided_one,
            )
        except (LookupError, OSError) as exc:
            for index, (item, _) in enumerate(readable):
                if index not in decided:
                    failed(item, exc)
    _people_without_photos_discard(summary)
    logger.info("bulk import of %d pictures: %s", summary.total, summary.as_dict())
    return summary
