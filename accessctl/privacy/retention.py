"""Retention: how long each kind of personal data is kept, a dry-run report, and the purge itself.

Policies come from settings (``ACCESSCTL_RETAIN_*_DAYS``; a negative value keeps that kind forever):

=====================  ==========================================  =======
kind                   what                                        default
=====================  ==========================================  =======
``unknown_crops``      face crops nobody was matched to            7 days
``known_crops``        face crops matched to a person              30 days
``access_events``      the access log                              365 days
``rejected_photos``    enrolment photos the quality check refused  30 days
=====================  ==========================================  =======

Image files are found by their dated storage names (see :mod:`accessctl.storage`), so files whose
database row was lost are purged as well. Deleting a crop also clears ``AccessEvent.snapshot``
where it pointed to it (the append-only trigger allows exactly that update).

Access events are purged as a *prefix* of the log in insertion order (the shadow decisions made on
them, ``recognition.ShadowDecision``, go with them): an old event recorded after
a newer one (an offline door syncing late) is held back until everything before it is old, so the
hash chain stays one unbroken chain that starts at the oldest kept event (``chain_verify`` accepts
any ``prev_hash`` on the first event). Each purge is itself recorded as a system event whose details
carry the number of events removed and the hash of the last one, which anchors the kept chain.
The application's database role cannot delete events: the purge record is written first and the
owner's ``accessctl_events_purge`` function deletes the prefix it names, in the same transaction,
after checking it against the retention period the owner configured (accessctl/project/dbroles.py). A
signed checkpoint of the chain head is written after each purge (accessctl/anchoring.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.files.storage import Storage, default_storage
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from accessctl.anchoring import checkpoint_create
from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent
from accessctl.storage import (
    CROPS_PREFIX,
    StoredFile,
    storage_delete_many,
    storage_listdir,
    storage_walk,
)

logger = logging.getLogger(__name__)

BATCH = 500
_RETENTION_LOCK_KEY = 0x72657465  # "rete": one retention run at a time
# A purge leaves a system record anchoring the kept part of the hash chain.
HOUSEKEEPING_REASON = Reason.RETENTION_PURGE


class DataKind(StrEnum):
    UNKNOWN_CROPS = "unknown_crops"
    KNOWN_CROPS = "known_crops"
    ACCESS_EVENTS = "access_events"
    REJECTED_PHOTOS = "rejected_photos"


_SETTING = {
    DataKind.UNKNOWN_CROPS: "RETAIN_UNKNOWN_CROPS_DAYS",
    DataKind.KNOWN_CROPS: "RETAIN_KNOWN_CROPS_DAYS",
    DataKind.ACCESS_EVENTS: "RETAIN_EVENTS_DAYS",
    DataKind.REJECTED_PHOTOS: "RETAIN_REJECTED_PHOTOS_DAYS",
}


@dataclass(frozen=True)
class RetentionPolicy:
    kind: DataKind
    days: int | None  # None: kept forever

    def cutoff(self, now: datetime) -> datetime | None:
        """Data older than this (strictly) is expired; None when kept forever."""
        return None if self.days is None else now - timedelta(days=self.days)


def retention_policies() -> dict[DataKind, RetentionPolicy]:
    """The configured policy for every data kind."""
    policies = {}
    for kind, name in _SETTING.items():
        days = int(getattr(settings, name))  # each RETAIN_*_DAYS has its default in settings
        policies[kind] = RetentionPolicy(kind, None if days < 0 else days)
    return policies


@dataclass
class KindReport:
    kind: DataKind
    days: int | None
    cutoff: datetime | None
    count: int = 0  # files, events or photos (past the policy, to be / that were deleted)
    bytes: int | None = 0  # None where not meaningful (database rows)
    references_cleared: int = 0  # AccessEvent.snapshot values pointing at deleted files
    held_back: int = 0  # events: past the policy but kept because a newer event precedes them

    def line(self, dry_run: bool) -> str:
        policy = "kept forever" if self.days is None else f"{self.days} days"
        verb = "would delete" if dry_run else "deleted"
        size = "" if self.bytes is None else f", {_human(self.bytes)}"
        extra = ""
        if self.references_cleared:
            extra += f", {self.references_cleared} event snapshot references cleared"
        if self.held_back:
            extra += f", {self.held_back} held back behind newer events (chain order)"
        return f"{self.kind:<18} {policy:>13}: {verb} {self.count}{size}{extra}"


@dataclass
class RetentionReport:
    now: datetime
    dry_run: bool
    kinds: dict[DataKind, KindReport] = field(default_factory=dict)
    purge_event_id: int | None = None

    def __getitem__(self, kind: DataKind | str) -> KindReport:
        return self.kinds[DataKind(kind)]

    @property
    def total_count(self) -> int:
        return sum(k.count for k in self.kinds.values())

    @property
    def total_bytes(self) -> int:
        return sum(k.bytes or 0 for k in self.kinds.values())

    def lines(self) -> list[str]:
        head = "retention dry run" if self.dry_run else "retention applied"
        out = [f"{head} at {self.now.isoformat(timespec='seconds')}"]
        out.extend(k.line(self.dry_run) for k in self.kinds.values())
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "dry_run": self.dry_run,
            "purge_event_id": self.purge_event_id,
            "total_count": self.total_count,
            "total_bytes": self.total_bytes,
            "kinds": {
                str(kind): {**asdict(r), "kind": str(kind), "cutoff": r.cutoff.isoformat() if r.cutoff else None}
                for kind, r in self.kinds.items()
            },
        }


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------- files


def _numbered_dirs(storage: Storage, path: str) -> list[tuple[int, str]]:
    dirs, _ = storage_listdir(storage, path)
    out = []
    for name in dirs:
        if name.isdigit():
            out.append((int(name), name))
        else:
            logger.warning("retention: ignoring unexpected folder %s/%s", path, name)
    return sorted(out)


def _is_expired(day: date, stored: StoredFile, cutoff: datetime) -> bool:
    cut = cutoff.astimezone(UTC)
    return day < cut.date() or (day == cut.date() and stored.modified < cut)


def dated_files(storage: Storage, prefix: str, not_after: datetime) -> Iterator[tuple[date, StoredFile]]:
    """Files under ``prefix`` + ``YYYY/MM/DD/`` in day folders up to ``not_after``'s day (UTC).

    Later days are never listed.
    """
    cut_day = not_after.astimezone(UTC).date()
    root = prefix.rstrip("/")
    for year, ys in _numbered_dirs(storage, root):
        if year > cut_day.year:
            continue
        for month, ms in _numbered_dirs(storage, f"{root}/{ys}"):
            if (year, month) > (cut_day.year, cut_day.month):
                continue
            for day_no, ds in _numbered_dirs(storage, f"{root}/{ys}/{ms}"):
                try:
                    day = date(year, month, day_no)
                except ValueError:
                    logger.warning("retention: ignoring folder %s/%s/%s/%s", root, ys, ms, ds)
                    continue
                if day <= cut_day:
                    for stored in storage_walk(storage, f"{root}/{ys}/{ms}/{ds}"):
                        yield day, stored


def expired_files(storage: Storage, prefix: str, cutoff: datetime) -> Iterator[StoredFile]:
    """Files under ``prefix`` + ``YYYY/MM/DD/`` older than ``cutoff``.

    Whole days before the cutoff's day go by their folder; on the cutoff's own day each file's
    modification time decides.
    """
    for day, stored in dated_files(storage, prefix, cutoff):
        if _is_expired(day, stored, cutoff):
            yield stored


class _FilePurge:
    """Collects expired files of one kind; deletes them (and clears snapshot references) in batches."""

    def __init__(self, storage: Storage, report: KindReport, *, dry_run: bool) -> None:
        self.storage, self.report, self.dry_run = storage, report, dry_run
        self.batch: list[str] = []

    def add(self, stored: StoredFile) -> None:
        self.report.count += 1
        self.report.bytes = (self.report.bytes or 0) + stored.size
        self.batch.append(stored.name)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        refs = AccessEvent.objects.filter(snapshot__in=self.batch)
        if self.dry_run:
            self.report.references_cleared += refs.count()
        else:
            # References first: a failure then leaves an orphan file (purged next run), never a dangling name.
            self.report.references_cleared += refs.update(snapshot="")
            storage_delete_many(self.storage, self.batch)
        self.batch = []


def _crops_run(storage: Storage, unknown: KindReport, known: KindReport, *, dry_run: bool, only: set[DataKind]) -> None:
    """Face crops (``crops/YYYY/MM/DD/``, stored before the match is known): known when an access
    event that names a person (or their pseudonym) points at the file, else unknown."""
    cutoffs = [r.cutoff for r in (unknown, known) if r.cutoff is not None and r.kind in only]
    if not cutoffs:
        return
    purges = {True: _FilePurge(storage, known, dry_run=dry_run), False: _FilePurge(storage, unknown, dry_run=dry_run)}
    pending: list[tuple[date, StoredFile]] = []

    def classify() -> None:
        names = [stored.name for _, stored in pending]
        known_names = set(
            AccessEvent.objects.filter(snapshot__in=names)
            .filter(Q(person__isnull=False) | Q(subject_uid__isnull=False))
            .values_list("snapshot", flat=True)
        )
        for day, stored in pending:
            is_known = stored.name in known_names
            kind_report = known if is_known else unknown
            cutoff = kind_report.cutoff
            if kind_report.kind in only and cutoff is not None and _is_expired(day, stored, cutoff):
                purges[is_known].add(stored)
        pending.clear()

    for item in dated_files(storage, CROPS_PREFIX, max(cutoffs)):
        pending.append(item)
        if len(pending) >= BATCH:
            classify()
    classify()
    for purge in purges.values():
        purge.flush()


# --------------------------------------------------------------------------- rejected enrolment photos


def _photo_files(photo: Any) -> list[str]:
    return [f.name for f in (photo.image, photo.crop) if f and f.name]


def _size(storage: Storage, name: str) -> int:
    try:
        return int(storage.size(name))
    except (FileNotFoundError, OSError):
        return 0


def _rejected_photos_run(storage: Storage, report: KindReport, *, dry_run: bool) -> None:
    if report.cutoff is None:
        return
    photo_model = apps.get_model("recognition", "EnrollmentPhoto")
    photos = photo_model.objects.filter(status=photo_model.Status.REJECTED, uploaded_at__lt=report.cutoff)
    for photo in photos.order_by("id").iterator(chunk_size=BATCH):
        names = _photo_files(photo)
        report.count += 1
        report.bytes = (report.bytes or 0) + sum(_size(storage, n) for n in names)
        if not dry_run:
            # Files first: a failure leaves the row (and the retry) in place, never an unknown orphan.
            storage_delete_many(storage, names)
            photo.delete()
            logger.info("retention: deleted rejected enrolment photo %s", photo.pk)


# --------------------------------------------------------------------------- access events


def _event_purge_bound(cutoff: datetime) -> tuple[int | None, int, int]:
    """(first kept id or None when every event is old, events to purge, old events held back)."""
    first_kept = AccessEvent.objects.filter(occurred_at__gte=cutoff).order_by("id").values_list("id", flat=True).first()
    old = AccessEvent.objects.filter(occurred_at__lt=cutoff).count()
    purge = old if first_kept is None else AccessEvent.objects.filter(id__lt=first_kept).count()
    return first_kept, purge, old - purge


def _events_run(report: KindReport, now: datetime, *, dry_run: bool) -> int | None:
    report.bytes = None
    if report.cutoff is None:
        return None
    first_kept, purge, held = _event_purge_bound(report.cutoff)
    report.held_back = held
    if dry_run or purge == 0:
        report.count = purge
        return None
    prefix = AccessEvent.objects.all() if first_kept is None else AccessEvent.objects.filter(id__lt=first_kept)
    last = prefix.order_by("-id").values("id", "hash").first()
    assert last is not None
    # The purge record and the purge commit together. The application's database role cannot
    # delete events: the owner's function accessctl_events_purge does, after checking that the
    # record is the newest event and that it names a prefix of the log older than the retention
    # period the owner configured (migration 0007, accessctl/project/dbroles.py).
    with transaction.atomic():
        event, _ = event_record(
            detection_id=None,
            occurred_at=now,
            decision=Decision.DENY,
            reason=HOUSEKEEPING_REASON,
            source=AccessEvent.Source.SYSTEM,
            details={
                "action": "retention_purge",
                "purged_events": purge,
                "purged_through_id": last["id"],
                "purged_last_hash": last["hash"],
                "cutoff": report.cutoff.isoformat(),
                "policy_days": report.days,
            },
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT accessctl_events_purge(%s)", [event.pk])
            (deleted,) = cursor.fetchone()
        # What a shadow model decided on those events goes with them (recognition.ShadowDecision).
        apps.get_model("recognition", "ShadowDecision").objects.filter(event_id__lte=last["id"]).delete()
        # A new anchor right after the purge: the next verification sees the purge as anchored.
        transaction.on_commit(_anchor_after_purge, robust=True)
    report.count = deleted
    logger.info("retention: purged %d events through id %s (record %s)", deleted, last["id"], event.pk)
    return event.pk


def _anchor_after_purge() -> None:
    checkpoint_create()


# --------------------------------------------------------------------------- entry points


def _run(
    *, now: datetime | None, dry_run: bool, kinds: set[DataKind] | None, storage: Storage | None
) -> RetentionReport:
    now = now or timezone.now()
    storage = storage or default_storage
    report = RetentionReport(now=now, dry_run=dry_run)
    for kind, policy in retention_policies().items():
        report.kinds[kind] = KindReport(kind=kind, days=policy.days, cutoff=policy.cutoff(now))
    crop_kinds = {DataKind.UNKNOWN_CROPS, DataKind.KNOWN_CROPS} if kinds is None else kinds
    if crop_kinds & {DataKind.UNKNOWN_CROPS, DataKind.KNOWN_CROPS}:
        _crops_run(
            storage,
            report.kinds[DataKind.UNKNOWN_CROPS],
            report.kinds[DataKind.KNOWN_CROPS],
            dry_run=dry_run,
            only=crop_kinds,
        )
    if kinds is None or DataKind.REJECTED_PHOTOS in kinds:
        _rejected_photos_run(storage, report.kinds[DataKind.REJECTED_PHOTOS], dry_run=dry_run)
    if kinds is None or DataKind.ACCESS_EVENTS in kinds:
        report.purge_event_id = _events_run(report.kinds[DataKind.ACCESS_EVENTS], now, dry_run=dry_run)
    for line in report.lines():
        logger.info("%s", line)
    return report


def retention_plan(*, now: datetime | None = None, storage: Storage | None = None) -> RetentionReport:
    """Dry run: what the policies would delete now (counts and bytes per kind); changes nothing."""
    return _run(now=now, dry_run=True, kinds=None, storage=storage)


class RetentionBusy(Exception):
    """Another retention run holds the lock (e.g. the daily task and a manual run at once)."""


def retention_apply(
    *, now: datetime | None = None, kinds: set[DataKind] | None = None, storage: Storage | None = None
) -> RetentionReport:
    """Delete what the policies say has expired (all kinds, or only ``kinds``); returns what was deleted.

    One run at a time (a session advisory lock); a concurrent call raises :class:`RetentionBusy`.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_RETENTION_LOCK_KEY])
        (locked,) = cursor.fetchone()
    if not locked:
        raise RetentionBusy("another retention run is in progress")
    try:
        return _run(now=now, dry_run=False, kinds=kinds, storage=storage)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_RETENTION_LOCK_KEY])
