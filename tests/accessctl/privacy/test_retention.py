"""Retention: the dry-run report, deletion of expired files/photos/events, and the hash chain afterwards."""

from __future__ import annotations

import datetime as dt
import io
import os
import uuid
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command

from accessctl.audit import chain_verify, event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Person
from accessctl.privacy.retention import DataKind, expired_files, retention_apply, retention_plan
from accessctl.storage import crop_name
from recognition.models import EnrollmentPhoto

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
JPEG = b"\xff\xd8" + b"x" * 998  # 1000 bytes


@pytest.fixture(autouse=True)
def _policies(settings: pytest.FixtureRequest, media_root: Path) -> None:
    settings.RETAIN_UNKNOWN_CROPS_DAYS = 7  # type: ignore[attr-defined]
    settings.RETAIN_KNOWN_CROPS_DAYS = 30  # type: ignore[attr-defined]
    settings.RETAIN_EVENTS_DAYS = 365  # type: ignore[attr-defined]
    settings.RETAIN_REJECTED_PHOTOS_DAYS = 30  # type: ignore[attr-defined]


def _crop(days_ago: int, *, known: bool) -> str:
    """A face crop captured ``days_ago``; a known one is pointed at by an event naming a person."""
    day = (NOW - dt.timedelta(days=days_ago)).date()
    name = default_storage.save(crop_name(detection_id=uuid.uuid4(), day=day), ContentFile(JPEG))
    if known:
        person = Person.objects.create(name=f"Known {name}")
        event_record(
            detection_id=None, occurred_at=NOW - dt.timedelta(days=days_ago), decision=Decision.GRANT,
            reason=Reason.MATCHED, person_id=person.pk, subject_uid=person.uid, snapshot=name,
        )  # fmt: skip
    return name


def _event(days_ago: float, snapshot: str = "") -> AccessEvent:
    event, _ = event_record(
        detection_id=None,
        occurred_at=NOW - dt.timedelta(days=days_ago),
        decision=Decision.DENY,
        reason=Reason.UNKNOWN_FACE,
        device_uid="door-1",
        snapshot=snapshot,
    )
    return event


def _rejected_photo(person: Person, days_ago: int) -> EnrollmentPhoto:
    photo = EnrollmentPhoto.objects.create(
        person=person,
        image=ContentFile(JPEG, name="face.jpg"),
        crop=ContentFile(JPEG[:500], name="face-crop.jpg"),
        status=EnrollmentPhoto.Status.REJECTED,
        quality_reason="too_small",
    )
    EnrollmentPhoto.objects.filter(pk=photo.pk).update(uploaded_at=NOW - dt.timedelta(days=days_ago))
    return photo


def test_dry_run_reports_counts_and_bytes_and_changes_nothing(media_root: Path) -> None:
    _event(400)  # first: events are purged as a prefix of the log
    old_unknown = [_crop(8, known=False), _crop(30, known=False)]
    _crop(3, known=False)
    old_known = _crop(31, known=True)
    _crop(29, known=True)
    _event(8, snapshot=old_unknown[0])
    _event(10)
    person = Person.objects.create(name="Ada")
    _rejected_photo(person, 31)
    _rejected_photo(person, 2)

    report = retention_plan(now=NOW)

    assert report.dry_run
    assert report[DataKind.UNKNOWN_CROPS].count == 2
    assert report[DataKind.UNKNOWN_CROPS].bytes == 2000
    assert report[DataKind.UNKNOWN_CROPS].references_cleared == 1
    assert report[DataKind.KNOWN_CROPS].count == 1 and report[DataKind.KNOWN_CROPS].bytes == 1000
    assert report[DataKind.ACCESS_EVENTS].count == 1 and report[DataKind.ACCESS_EVENTS].bytes is None
    assert report[DataKind.REJECTED_PHOTOS].count == 1 and report[DataKind.REJECTED_PHOTOS].bytes == 1500
    assert report.total_bytes == 4500
    assert any("would delete" in line for line in report.lines())
    # nothing changed
    assert all(default_storage.exists(n) for n in [*old_unknown, old_known])
    assert AccessEvent.objects.count() == 5  # 3 + the events of the 2 known crops
    assert AccessEvent.objects.exclude(snapshot="").count() == 3
    assert EnrollmentPhoto.objects.count() == 2


def test_apply_deletes_expired_files_and_clears_snapshot_references() -> None:
    old = _crop(8, known=False)
    fresh = _crop(6, known=False)
    old_known = _crop(40, known=True)
    kept_known = _crop(20, known=True)
    event_old = _event(8, snapshot=old)
    event_fresh = _event(6, snapshot=fresh)

    report = retention_apply(now=NOW)

    assert not report.dry_run
    assert report[DataKind.UNKNOWN_CROPS].count == 1 and report[DataKind.KNOWN_CROPS].count == 1
    assert report[DataKind.KNOWN_CROPS].references_cleared == 1
    assert not default_storage.exists(old) and not default_storage.exists(old_known)
    assert default_storage.exists(fresh) and default_storage.exists(kept_known)
    event_old.refresh_from_db()
    event_fresh.refresh_from_db()
    assert event_old.snapshot == "" and event_fresh.snapshot == fresh
    assert chain_verify().ok
    # a second run finds nothing more
    assert retention_plan(now=NOW).total_count == 0


def _ingest_crop(days_ago: int) -> str:
    """A crop as staging stores it, before the match is known: crops/YYYY/MM/DD/<id>.jpg."""
    day = NOW - dt.timedelta(days=days_ago)
    return default_storage.save(f"crops/{day:%Y/%m/%d}/{uuid.uuid4()}.jpg", ContentFile(JPEG))


def test_crops_are_classified_by_their_event() -> None:
    person = Person.objects.create(name="Ada")
    unknown_old = _ingest_crop(10)  # unknown face, past 7 days
    known_young = _ingest_crop(10)  # matched to Ada: kept until 30 days
    known_old = _ingest_crop(31)
    orphan_young = _ingest_crop(3)  # staged, no decision yet
    _event(10, snapshot=unknown_old)
    for name in (known_young, known_old):
        event_record(
            detection_id=None,
            occurred_at=NOW - dt.timedelta(days=10),
            decision=Decision.GRANT,
            reason=Reason.MATCHED,
            person_id=person.pk,
            subject_uid=person.uid,
            snapshot=name,
        )

    plan = retention_plan(now=NOW)
    assert plan[DataKind.UNKNOWN_CROPS].count == 1 and plan[DataKind.KNOWN_CROPS].count == 1

    retention_apply(now=NOW, kinds={DataKind.UNKNOWN_CROPS})
    assert not default_storage.exists(unknown_old)
    assert default_storage.exists(known_old), "known crops untouched when only unknown ones were asked for"
    retention_apply(now=NOW)
    assert not default_storage.exists(known_old)
    assert default_storage.exists(known_young) and default_storage.exists(orphan_young)
    assert set(AccessEvent.objects.exclude(snapshot="").values_list("snapshot", flat=True)) == {known_young}
    assert chain_verify().ok


def test_files_on_the_cutoff_day_go_by_modification_time(media_root: Path) -> None:
    cutoff = NOW - dt.timedelta(days=7)
    before = _crop(7, known=False)
    after = _crop(7, known=False)
    os.utime(media_root / before, (cutoff.timestamp() - 60, cutoff.timestamp() - 60))
    os.utime(media_root / after, (cutoff.timestamp() + 60, cutoff.timestamp() + 60))
    default_storage.save("crops/not-a-year/x.jpg", ContentFile(JPEG))  # ignored, not deleted

    assert [f.name for f in expired_files(default_storage, "crops/", cutoff)] == [before]
    retention_apply(now=NOW)
    assert not default_storage.exists(before)
    assert default_storage.exists(after)
    assert default_storage.exists("crops/not-a-year/x.jpg")


def test_rejected_photos_past_the_policy_are_deleted_with_their_files() -> None:
    person = Person.objects.create(name="Ada")
    old = _rejected_photo(person, 31)
    young = _rejected_photo(person, 29)
    accepted = _rejected_photo(person, 100)
    EnrollmentPhoto.objects.filter(pk=accepted.pk).update(status=EnrollmentPhoto.Status.ACCEPTED)
    old_files = [old.image.name, old.crop.name]

    report = retention_apply(now=NOW, kinds={DataKind.REJECTED_PHOTOS})

    assert report[DataKind.REJECTED_PHOTOS].count == 1
    assert set(EnrollmentPhoto.objects.values_list("pk", flat=True)) == {young.pk, accepted.pk}
    assert not any(default_storage.exists(n) for n in old_files)
    assert default_storage.exists(young.image.name) and default_storage.exists(accepted.image.name)
    assert AccessEvent.objects.count() == 0, "only the requested kind was applied"


def test_events_are_purged_only_past_the_policy_and_the_chain_still_verifies() -> None:
    oldest = _event(500)
    old = _event(366)
    newer = _event(364)
    late_old = _event(400)  # an offline door syncing late: old, but recorded after a newer event
    newest = _event(1)
    assert chain_verify().ok

    plan = retention_plan(now=NOW)
    assert plan[DataKind.ACCESS_EVENTS].count == 2
    assert plan[DataKind.ACCESS_EVENTS].held_back == 1

    report = retention_apply(now=NOW)

    assert report[DataKind.ACCESS_EVENTS].count == 2
    remaining = list(AccessEvent.objects.order_by("id"))
    assert [e.pk for e in remaining[:3]] == [newer.pk, late_old.pk, newest.pk]
    purge_record = remaining[-1]
    assert purge_record.pk == report.purge_event_id
    assert purge_record.source == AccessEvent.Source.SYSTEM
    assert purge_record.details["action"] == "retention_purge"
    assert purge_record.details["purged_events"] == 2
    assert purge_record.details["purged_through_id"] == old.pk
    # The purge record anchors the kept chain: the first kept event links to the last purged one.
    assert purge_record.details["purged_last_hash"] == old.hash == newer.prev_hash
    assert not AccessEvent.objects.filter(pk__in=[oldest.pk, old.pk]).exists()
    report_chain = chain_verify()
    assert report_chain.ok and report_chain.checked == 4

    # Once the events before it are gone too, the held-back one goes on a later run.
    retention_apply(now=NOW + dt.timedelta(days=2))
    assert not AccessEvent.objects.filter(pk__in=[newer.pk, late_old.pk]).exists()
    assert chain_verify().ok


def test_purging_every_event_restarts_the_chain() -> None:
    for _ in range(3):
        _event(400)
    retention_apply(now=NOW)
    assert list(AccessEvent.objects.values_list("details__action", flat=True)) == ["retention_purge"]
    _event(0)
    assert chain_verify().ok


def test_negative_days_keep_data_forever(settings: pytest.FixtureRequest) -> None:
    settings.RETAIN_EVENTS_DAYS = -1  # type: ignore[attr-defined]
    settings.RETAIN_UNKNOWN_CROPS_DAYS = -1  # type: ignore[attr-defined]
    _event(5000)
    crop = _crop(5000, known=False)
    report = retention_apply(now=NOW)
    assert report[DataKind.ACCESS_EVENTS].days is None and report.total_count == 0
    assert AccessEvent.objects.count() == 1 and default_storage.exists(crop)


def test_management_command_dry_run_and_apply() -> None:
    _event(400)
    out = io.StringIO()
    call_command("retention", "--dry-run", stdout=out)
    assert "retention dry run" in out.getvalue() and "access_events" in out.getvalue()
    assert AccessEvent.objects.count() == 1
    out = io.StringIO()
    call_command("retention", "--json", "--kind", "access_events", stdout=out)
    assert '"dry_run": false' in out.getvalue()


def test_celery_task_and_beat_schedule(settings: pytest.FixtureRequest) -> None:
    import accessctl.tasks  # noqa: F401  (registers the tasks)
    from accessctl.project.celery import app

    name = settings.CELERY_BEAT_SCHEDULE["retention-daily"]["task"]  # type: ignore[attr-defined]
    result = app.tasks[name].apply().get()
    assert result["dry_run"] is False and "access_events" in result["kinds"]


def test_retention_on_s3_storage() -> None:
    import boto3
    from moto import mock_aws

    from accessctl.storage import S3Storage

    with mock_aws():
        s3 = S3Storage(bucket="retention-test", region="us-east-1")
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="retention-test")
        old = s3.save(crop_name(detection_id=uuid.uuid4(), day=dt.date(2026, 2, 1)), ContentFile(JPEG))
        young = s3.save(crop_name(detection_id=uuid.uuid4(), day=dt.date(2026, 2, 28)), ContentFile(JPEG))
        ingest_old = s3.save(f"crops/2026/01/15/{uuid.uuid4()}.jpg", ContentFile(JPEG))
        plan = retention_plan(now=NOW, storage=s3)
        assert plan[DataKind.UNKNOWN_CROPS].count == 2 and plan[DataKind.UNKNOWN_CROPS].bytes == 2000
        retention_apply(now=NOW, storage=s3)
        assert not s3.exists(old) and not s3.exists(ingest_old) and s3.exists(young)


def test_one_retention_run_at_a_time() -> None:
    import psycopg
    from django.db import connection

    from accessctl.privacy.retention import _RETENTION_LOCK_KEY, RetentionBusy

    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [_RETENTION_LOCK_KEY])
        with pytest.raises(RetentionBusy):
            retention_apply(now=NOW)
        other.execute("SELECT pg_advisory_unlock(%s)", [_RETENTION_LOCK_KEY])
    assert not retention_apply(now=NOW).dry_run
