"""The access log against its own application and against a database superuser.

The application's database role may read and append, nothing more (issue 15 item 5): deletes,
rewrites, truncation and trigger control fail, the old purge switch no longer opens anything, and
old events go only through the owner's purge function, which enforces the retention rules itself.
Against someone with every database right, signed checkpoints kept outside the database (files,
S3 under object lock) show a truncated tail or a recomputed chain.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from accessctl.anchoring import anchors_verify, checkpoint_create, checkpoint_sign, checkpoints_load
from accessctl.audit import chain_verify, event_hash, event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent
from accessctl.privacy.retention import DataKind, retention_apply
from tests.accessctl.helpers import owner_execute, superuser_execute

TABLE = "accessctl_accessevent"


@pytest.fixture(autouse=True)
def anchor_dir(settings: pytest.FixtureRequest, tmp_path: Path) -> Path:
    settings.AUDIT_ANCHOR_DIR = tmp_path / "anchors"  # type: ignore[attr-defined]
    settings.RETAIN_EVENTS_DAYS = 365  # type: ignore[attr-defined]
    return tmp_path / "anchors"


def _event(days_ago: float = 0, **fields: object) -> AccessEvent:
    values: dict[str, object] = {"decision": Decision.DENY, "reason": Reason.UNKNOWN_FACE, "device_uid": "door-1"}
    event, _ = event_record(
        detection_id=None,
        occurred_at=timezone.now() - dt.timedelta(days=days_ago),
        **{**values, **fields},  # type: ignore[arg-type]
    )
    return event


def _refused(statement: str, params: list[object] | None = None) -> str:
    """The database error ``statement`` gets as the application's role (rolled back)."""
    with pytest.raises(DatabaseError) as caught, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)
    return str(caught.value)


# --------------------------------------------------------------------------- the application's role


@pytest.mark.django_db
def test_application_role_may_only_read_and_append_to_the_access_log() -> None:
    event = _event(snapshot="crops/a.jpg")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        user, superuser = cursor.fetchone()
    assert user == connection.settings_dict["USER"] == "accessctl_app" and not superuser

    assert "permission denied" in _refused(f"DELETE FROM {TABLE} WHERE id = %s", [event.pk])
    for column, value in (("hash", "0" * 64), ("reason", "matched"), ("occurred_at", timezone.now())):
        assert "permission denied" in _refused(f"UPDATE {TABLE} SET {column} = %s WHERE id = %s", [value, event.pk])
    assert "permission denied" in _refused(f"TRUNCATE {TABLE}")
    assert "must be owner" in _refused(f"ALTER TABLE {TABLE} DISABLE TRIGGER accessctl_event_append_only")
    assert "must be owner" in _refused(f"ALTER TABLE {TABLE} DISABLE TRIGGER ALL")
    assert "must be owner" in _refused(f"DROP TRIGGER accessctl_event_append_only ON {TABLE}")
    assert "permission denied" in _refused("SET session_replication_role = replica")
    assert "permission denied" in _refused("CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert "permission denied" in _refused("UPDATE accessctl_event_retention SET retain_days = 0")
    # The purge switch the retention service used to set no longer lets a delete through.
    switched_on = f"SELECT set_config('accessctl.allow_event_purge', 'on', true); DELETE FROM {TABLE} WHERE id = %s"
    assert "permission denied" in _refused(switched_on.replace("%s", str(event.pk)))
    # What privacy needs still works, guarded by the trigger: clearing the three columns.
    assert "append-only" in _refused(f"UPDATE {TABLE} SET snapshot = 'crops/b.jpg' WHERE id = %s", [event.pk])
    AccessEvent.objects.filter(pk=event.pk).update(snapshot="", person=None, actor=None)
    assert AccessEvent.objects.filter(pk=event.pk).exists() and chain_verify().ok


def _purge_record(through: AccessEvent, count: int, **extra: object) -> AccessEvent:
    details = {
        "action": "retention_purge",
        "purged_events": count,
        "purged_through_id": through.pk,
        "purged_last_hash": through.hash,
        "cutoff": (timezone.now() - dt.timedelta(days=365)).isoformat(),
        "policy_days": 365,
        **extra,
    }
    return _event(source=AccessEvent.Source.SYSTEM, reason=Reason.RETENTION_PURGE, details=details)


def _purge(record_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT accessctl_events_purge(%s)", [record_id])
        return int(cursor.fetchone()[0])


def _purge_refused(make_record: object) -> str:
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        _purge(make_record().pk)  # type: ignore[operator]
    return str(caught.value)


@pytest.mark.django_db
def test_purge_function_purges_only_what_the_retention_period_allows() -> None:
    old = [_event(500), _event(400)]
    young = _event(10)
    late_old = _event(450)  # an old event recorded after a young one: held back
    assert AccessEvent.objects.count() == 4

    assert "not a retention purge record" in _purge_refused(lambda: young)
    assert "not a retention purge record" in _purge_refused(
        lambda: _event(source=AccessEvent.Source.SYSTEM, reason=Reason.RETENTION_PURGE, details={"action": "x"})
    )
    assert "younger than 365 days" in _purge_refused(lambda: _purge_record(young, 3))
    assert "younger than 365 days" in _purge_refused(lambda: _purge_record(late_old, 4))
    assert "the record says" in _purge_refused(lambda: _purge_record(old[1], 1))
    assert "is not the one record" in _purge_refused(lambda: _purge_record(old[1], 2, purged_last_hash="0" * 64))

    def not_newest() -> AccessEvent:
        record = _purge_record(old[1], 2)
        _event()
        return record

    assert "not the newest event" in _purge_refused(not_newest)
    assert AccessEvent.objects.count() == 4, "every refusal rolled back"

    with transaction.atomic():
        assert _purge(_purge_record(old[1], 2).pk) == 2
    assert not AccessEvent.objects.filter(pk__in=[e.pk for e in old]).exists()
    assert AccessEvent.objects.filter(pk__in=[young.pk, late_old.pk]).count() == 2
    assert chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_nothing_is_purged_while_the_owner_keeps_events_forever() -> None:
    old = _event(500)
    owner_execute("UPDATE accessctl_event_retention SET retain_days = NULL")
    try:
        assert "kept forever" in _purge_refused(lambda: _purge_record(old, 1))
    finally:
        owner_execute("UPDATE accessctl_event_retention SET retain_days = 365")
    assert AccessEvent.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_migrate_writes_the_retention_period_the_function_enforces(settings: pytest.FixtureRequest) -> None:
    assert owner_execute("SELECT retain_days FROM accessctl_event_retention") == [(365,)]
    settings.RETAIN_EVENTS_DAYS = 30  # type: ignore[attr-defined]
    try:
        call_command("migrate", verbosity=0)  # as the owner, whatever the database option says
        assert owner_execute("SELECT retain_days FROM accessctl_event_retention") == [(30,)]
        assert "younger than 30 days" in _purge_refused(lambda: _purge_record(_event(29), 1))
    finally:
        settings.RETAIN_EVENTS_DAYS = 365  # type: ignore[attr-defined]
        call_command("migrate", verbosity=0)
    assert owner_execute("SELECT retain_days FROM accessctl_event_retention") == [(365,)]


# --------------------------------------------------------------------------- anchors


def _verify_command() -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command("verify_audit_chain", stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def _verify_fails() -> str:
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("verify_audit_chain", stdout=io.StringIO(), stderr=err)
    return f"{caught.value}\n{err.getvalue()}"


@pytest.mark.django_db(transaction=True)
def test_truncated_tail_is_detected_by_the_anchors() -> None:
    events = [_event() for _ in range(5)]
    checkpoint = checkpoint_create()
    assert (checkpoint.head_id, checkpoint.head_hash, checkpoint.count) == (events[-1].pk, events[-1].hash, 5)
    assert "audit chain intact: 5 events" in _verify_command()

    # An attacker with the owner's rights (migrate's credentials) deletes the newest events.
    owner_execute(
        "SELECT set_config('accessctl.allow_event_purge', 'on', false);"
        f"DELETE FROM {TABLE} WHERE id >= {int(events[3].pk)}"
    )
    assert chain_verify().ok, "what is left is a valid chain: only the anchor can tell"
    report = anchors_verify()
    assert not report.ok and any("was truncated" in p for p in report.problems)
    assert f"event {events[-1].pk}" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_a_consistently_recomputed_chain_is_detected_by_the_anchors() -> None:
    events = [_event() for _ in range(4)]
    checkpoint_create()
    # A superuser turns the first denial into a grant and recomputes the whole chain.
    victim = AccessEvent.objects.get(pk=events[0].pk)
    victim.decision, victim.reason = "grant", "matched"
    prev = victim.prev_hash
    for event in AccessEvent.objects.filter(pk__gte=victim.pk).order_by("id"):
        if event.pk == victim.pk:
            event = victim
        event.prev_hash = prev
        event.hash = prev = event_hash(event)
        superuser_execute(
            f"UPDATE {TABLE} SET decision = %s, reason = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [event.decision, event.reason, event.prev_hash, event.hash, event.pk],
            replica=True,
        )
    assert chain_verify().ok, "the rewritten chain is consistent in itself"
    report = anchors_verify()
    assert [p for p in report.problems if "the chain was rewritten" in p]
    assert "the chain was rewritten" in _verify_fails()


@pytest.mark.django_db(transaction=True)
def test_an_honest_purge_followed_by_its_checkpoint_verifies_intact(settings: pytest.FixtureRequest) -> None:
    old = [_event(500), _event(400)]
    anchored_old = checkpoint_create()  # its head is purged below, legitimately
    young = _event(1)
    checkpoint_create()
    report = retention_apply(kinds={DataKind.ACCESS_EVENTS})
    assert report[DataKind.ACCESS_EVENTS].count == 2
    assert not AccessEvent.objects.filter(pk__in=[e.pk for e in old]).exists()
    checkpoints, problems = checkpoints_load()
    assert not problems and len(checkpoints) == 3, "the purge wrote a checkpoint of its own"
    assert checkpoints[-1].head_id == report.purge_event_id and checkpoints[-1].count == 2
    assert anchored_old.head_id == old[-1].pk
    output = _verify_command()
    assert "audit chain intact: 2 events" in output and "3 anchors checked" in output
    assert AccessEvent.objects.filter(pk=young.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_young_anchored_events_wiped_under_a_forged_purge_record_are_detected() -> None:
    events = [_event(3), _event(2)]
    checkpoint_create()
    # A superuser deletes everything and appends a forged purge record claiming it was old.
    superuser_execute(f"DELETE FROM {TABLE}", replica=True)
    forged = _purge_record(events[-1], 2)
    assert chain_verify().ok
    problems = anchors_verify().problems
    assert any("against the retention policy" in p and f"event {events[-1].pk}" in p for p in problems), problems
    assert forged.pk


@pytest.mark.django_db(transaction=True)
def test_altered_or_forged_checkpoints_are_detected(anchor_dir: Path) -> None:
    from faceengine import protocol as p

    _event()
    checkpoint = checkpoint_create()
    [path] = list(anchor_dir.glob("*.jsonl"))
    assert path.stat().st_mode & 0o777 == 0o600 and anchor_dir.stat().st_mode & 0o777 == 0o700
    assert anchors_verify().ok

    # Someone edits the count in the file ...
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "count": 99}) + "\n")
    assert any("forged or altered" in p for p in anchors_verify().problems)
    # ... or appends a checkpoint signed with a key of their own.
    path.write_text(checkpoint.line() + "\n")
    stranger = p.load_private_key(p.generate_keypair()[0])
    forged = checkpoint_sign(
        checkpoint.__class__(**{**checkpoint.__dict__, "key": p.public_key_b64(stranger)}), stranger
    )
    with path.open("a") as handle:
        handle.write(forged.line() + "\n")
    problems = anchors_verify().problems
    assert len(problems) == 1 and "forged or altered" in problems[0]
    assert "forged or altered" in _verify_fails()


@pytest.mark.django_db
def test_verify_reports_the_last_anchor_and_its_age(settings: pytest.FixtureRequest) -> None:
    _event()
    assert "no anchor yet" in _verify_command()
    checkpoint_create(now=timezone.now() - dt.timedelta(minutes=42))
    output = _verify_command()
    assert "(42 min ago)" in output and "1 anchors checked" in output
    settings.AUDIT_ANCHOR_MAX_AGE_S = 600  # type: ignore[attr-defined]
    assert "42 min old" in _verify_fails()


@pytest.mark.django_db
def test_checkpoints_are_written_by_celery_beat(settings: pytest.FixtureRequest, anchor_dir: Path) -> None:
    import accessctl.tasks  # noqa: F401  (registers the tasks)
    from accessctl.project.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["audit-anchor"]  # type: ignore[attr-defined]
    assert float(entry["schedule"]) <= 600
    event = _event()
    result = app.tasks[entry["task"]].apply().get()
    assert result["head_id"] == event.pk and result["count"] == 1
    assert len(checkpoints_load()[0]) == 1


@pytest.mark.django_db(transaction=True)
def test_checkpoints_go_to_s3_under_compliance_object_lock(settings: pytest.FixtureRequest, anchor_dir: Path) -> None:
    import boto3
    from botocore.exceptions import ClientError
    from moto import mock_aws

    settings.AUDIT_ANCHOR_S3_BUCKET = "anchors"  # type: ignore[attr-defined]
    settings.S3_REGION = "us-east-1"  # type: ignore[attr-defined]
    settings.S3_ENDPOINT_URL = None  # type: ignore[attr-defined]
    events = [_event() for _ in range(3)]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="anchors", ObjectLockEnabledForBucket=True)
        checkpoint_create(s3_client=s3)
        [item] = s3.list_objects_v2(Bucket="anchors", Prefix="audit-anchors/")["Contents"]
        head = s3.head_object(Bucket="anchors", Key=item["Key"])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > timezone.now() + dt.timedelta(days=364)
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.delete_object(Bucket="anchors", Key=item["Key"], VersionId=head["VersionId"])

        # The local file is gone too: the S3 copy still anchors the chain.
        for path in anchor_dir.glob("*.jsonl"):
            path.unlink()
        superuser_execute(f"DELETE FROM {TABLE} WHERE id = %s", [events[-1].pk], replica=True)
        report = anchors_verify(s3_client=s3)
        assert report.checkpoints == 1 and any("was truncated" in p for p in report.problems)


def test_one_database_role_for_everything_is_refused_in_production_and_warned_about_otherwise(
    tmp_path: Path,
) -> None:
    import os
    import secrets
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent.parent
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://accessctl:pw@127.0.0.1:1/accessctl",
        "ACCESSCTL_VAR_DIR": str(tmp_path),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
    }
    env.pop("DATABASE_OWNER_URL", None)
    check = [sys.executable, str(root / "manage.py"), "check"]
    warned = subprocess.run(check, env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert warned.returncode == 0 and "accessctl.W101" in warned.stderr + warned.stdout
    refused = subprocess.run(
        check, env={**env, "ACCESSCTL_PRODUCTION": "1"}, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "DATABASE_OWNER_URL is required" in refused.stderr
    separate = {**env, "DATABASE_OWNER_URL": "postgres://owner:pw@127.0.0.1:1/accessctl"}
    quiet = subprocess.run(check, env=separate, cwd=root, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "W101" not in quiet.stderr + quiet.stdout


@pytest.mark.django_db
def test_a_bucket_without_object_lock_fails_the_checkpoint_loudly(
    settings: pytest.FixtureRequest, anchor_dir: Path
) -> None:
    import boto3
    from moto import mock_aws

    from accessctl.anchoring import AnchorStoreError

    settings.AUDIT_ANCHOR_S3_BUCKET = "no-lock"  # type: ignore[attr-defined]
    _event()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="no-lock")
        with pytest.raises(AnchorStoreError, match="s3://no-lock"):
            checkpoint_create(s3_client=s3)
        assert "Contents" not in s3.list_objects_v2(Bucket="no-lock")
    assert len(list(anchor_dir.glob("*.jsonl"))) == 1, "the local anchor is written all the same"


@pytest.mark.django_db
def test_checkpoints_of_an_earlier_server_key_stay_valid_when_listed(
    settings: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _event()
    old = checkpoint_create()
    settings.SERVER_SIGNING_KEY_FILE = tmp_path / "rotated.pem"  # type: ignore[attr-defined]
    _event()
    new = checkpoint_create()
    assert new.key != old.key
    problems = anchors_verify().problems
    assert len(problems) == 1 and "forged or altered" in problems[0]
    settings.AUDIT_ANCHOR_TRUSTED_KEYS = [old.key]  # type: ignore[attr-defined]
    report = anchors_verify()
    assert report.ok and report.checkpoints == 2
