"""Liveness at the server: the door's policy, the scores on the event (chained, immutable), the
presentation-attack alarms, and the fields in the API, the admin, the audit log and the CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from accessctl import realtime
from accessctl.alarms import attacks_check
from accessctl.audit import chain_verify, event_hash
from accessctl.codes import Decision, Reason
from accessctl.decisions import access_decide
from accessctl.models import AccessEvent, AccessGroup, Alarm, Door, Person
from accessctl.policy import access_evaluate, liveness_threshold
from tests.accessctl.helpers import event_make, owner_execute, user_create
from tests.api_support import token_client

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    messages: list[tuple[str, dict]] = []
    monkeypatch.setattr(realtime, "_send", lambda kind, payload: messages.append((str(kind), payload)))
    return messages


@pytest.fixture
def door() -> Door:
    return Door.objects.create(name="Vault", liveness_required=True)


@pytest.fixture
def member(door: Door) -> Person:
    person = Person.objects.create(name="Ada")
    group = AccessGroup.objects.create(name="Staff")
    group.people.add(person)
    group.doors.add(door)
    return person


def decide(person: Person | None, door: Door, liveness: float | None, unknown=Reason.UNKNOWN_FACE) -> Reason:
    return access_evaluate(person=person, door=door, at=NOW, unknown_reason=unknown, liveness=liveness).reason


# --- the policy ---------------------------------------------------------------------------------


def test_a_door_without_liveness_ignores_scores(door: Door, member: Person) -> None:
    door.liveness_required = False
    for liveness in (None, 0.0, 0.01, 0.99):
        assert decide(member, door, liveness) == Reason.MATCHED
    assert decide(None, door, 0.0) == Reason.UNKNOWN_FACE
    assert liveness_threshold(door) is None


def test_a_liveness_door_denies_attacks_and_unmeasured_faces(door: Door, member: Person, settings) -> None:
    settings.LIVENESS_THRESHOLD = 0.05
    assert liveness_threshold(door) == 0.05
    assert decide(member, door, None) == Reason.LIVENESS_NOT_MEASURED
    assert decide(member, door, 0.049) == Reason.PRESENTATION_ATTACK
    assert decide(member, door, 0.05) == Reason.MATCHED  # at the threshold: live (APCER counts score >= t)
    assert decide(member, door, 0.9) == Reason.MATCHED
    # An attack is an attack whoever it looks like; a live stranger is still a stranger.
    assert decide(None, door, 0.01) == Reason.PRESENTATION_ATTACK
    assert decide(None, door, 0.9) == Reason.UNKNOWN_FACE
    assert decide(None, door, None, Reason.AMBIGUOUS_MATCH) == Reason.LIVENESS_NOT_MEASURED
    # Input problems keep their own reason; lockdown comes first; then liveness before the person's rules.
    assert decide(None, door, None, Reason.LOW_QUALITY) == Reason.LOW_QUALITY
    assert decide(None, door, None, Reason.BAD_IMAGE) == Reason.BAD_IMAGE
    member.watchlist = True
    assert decide(member, door, 0.01) == Reason.PRESENTATION_ATTACK
    assert decide(member, door, 0.9) == Reason.WATCHLIST
    door.mode = Door.Mode.LOCKDOWN
    assert decide(member, door, 0.01) == Reason.LOCKDOWN


def test_a_doors_threshold_overrides_the_sites(door: Door, member: Person, settings) -> None:
    settings.LIVENESS_THRESHOLD = 0.05
    door.liveness_threshold = 0.5
    assert liveness_threshold(door) == 0.5
    assert decide(member, door, 0.3) == Reason.PRESENTATION_ATTACK
    door.liveness_threshold = 0.0  # zero is a threshold, not "unset"
    assert decide(member, door, 0.0) == Reason.MATCHED


def test_the_threshold_is_checked_in_the_database(door: Door) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Door.objects.filter(pk=door.pk).update(liveness_threshold=1.5)


def test_site_threshold_setting_calibration_file_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from accessctl.project import settings as project_settings
    from faceengine.liveness import MODEL_VERSION

    monkeypatch.setattr(project_settings, "VAR_DIR", tmp_path)
    monkeypatch.delenv("ACCESSCTL_LIVENESS_THRESHOLD", raising=False)
    assert project_settings._liveness_threshold() == project_settings.LIVENESS_CALIBRATED_THRESHOLD == 0.0846
    calibration = tmp_path / "liveness_calibration.json"
    calibration.write_text(json.dumps({"threshold": 0.2, "model_version": MODEL_VERSION}))
    assert project_settings._liveness_threshold() == 0.2
    calibration.write_text(json.dumps({"threshold": 0.2, "model_version": "another-model"}))
    assert project_settings._liveness_threshold() == 0.0846  # for other networks: not ours
    monkeypatch.setenv("ACCESSCTL_LIVENESS_THRESHOLD", "0.3")
    assert project_settings._liveness_threshold() == 0.3
    monkeypatch.setenv("ACCESSCTL_LIVENESS_THRESHOLD", "1.3")
    with pytest.raises(ImproperlyConfigured):
        project_settings._liveness_threshold()
    monkeypatch.delenv("ACCESSCTL_LIVENESS_THRESHOLD")
    calibration.write_text("{not json")
    with pytest.raises(ImproperlyConfigured):
        project_settings._liveness_threshold()


# --- the event and the alarms -------------------------------------------------------------------


def _decide(door: Door, person: Person | None, liveness: float | None, **extra) -> AccessEvent:
    event, created = access_decide(
        detection_id=str(uuid.uuid4()), occurred_at=timezone.now(), device_id=None, device_uid="vault-cam",
        door=door, person_id=person.pk if person else None,
        unknown_reason=Reason.MATCHED if person else Reason.UNKNOWN_FACE, similarity=0.7 if person else 0.2,
        snapshot="crops/2026/03/02/x.jpg", liveness_edge=liveness, liveness_frames=None if liveness is None else 7,
        **extra,
    )  # fmt: skip
    assert created
    return event


def test_an_attack_is_denied_recorded_with_who_it_looked_like_and_alarmed(
    door: Door, member: Person, sent, settings, django_capture_on_commit_callbacks
) -> None:
    settings.LIVENESS_THRESHOLD = 0.05
    with django_capture_on_commit_callbacks(execute=True):
        event = _decide(door, member, 0.01, liveness_server=0.02)
    event.refresh_from_db()
    assert (event.decision, event.reason) == (Decision.DENY, Reason.PRESENTATION_ATTACK)
    assert (event.person_id, event.subject_uid, event.similarity) == (member.pk, member.uid, 0.7)
    assert (event.liveness_edge, event.liveness_frames, event.liveness_server) == (0.01, 7, 0.02)
    assert event.liveness_threshold == 0.05
    alarm = Alarm.objects.get(kind=Alarm.Kind.PRESENTATION_ATTACK)
    assert (alarm.door_id, alarm.event_id, alarm.device_uid) == (door.pk, event.pk, "vault-cam")
    assert alarm.details["liveness"] == 0.01 and alarm.details["subject"] == str(member.uid)
    raised = [payload for kind, payload in sent if kind == "alarm.raised"]
    assert raised[-1]["kind"] == "presentation_attack"
    assert raised[-1]["thumbnail_url"] == reverse("event_thumbnail", args=[event.pk])  # the crop on the dashboard
    assert not Alarm.objects.filter(kind=Alarm.Kind.REPEATED_ATTACK).exists()  # one attack is not repeated


def test_repeated_attacks_at_a_door_raise_one_alarm(door: Door, member: Person, settings) -> None:
    settings.LIVENESS_THRESHOLD = 0.05
    settings.LIVENESS_ATTACK_ALARM_COUNT = 3
    settings.LIVENESS_ATTACK_ALARM_WINDOW_S = 300
    _decide(door, member, 0.01)
    _decide(door, None, 0.02)
    assert not Alarm.objects.filter(kind=Alarm.Kind.REPEATED_ATTACK).exists()
    _decide(door, member, 0.9)  # live: granted, does not count
    third = _decide(door, member, 0.0)
    alarm = Alarm.objects.get(kind=Alarm.Kind.REPEATED_ATTACK)
    assert (alarm.door_id, alarm.count, alarm.event_id) == (door.pk, 1, third.pk)
    assert alarm.details == {"attacks": 3, "window_s": 300}
    _decide(door, member, 0.0)
    alarm.refresh_from_db()
    assert alarm.count == 2 and Alarm.objects.filter(kind=Alarm.Kind.REPEATED_ATTACK).count() == 1
    assert Alarm.objects.get(kind=Alarm.Kind.PRESENTATION_ATTACK).count == 4  # each attack, folded
    # Outside the window, or at another door: nothing.
    later = timezone.now() + dt.timedelta(seconds=301)
    assert attacks_check(door=door, now=later) is None
    assert attacks_check(door=Door.objects.create(name="Other")) is None


def test_unmeasured_and_live_faces_and_doors_without_liveness(door: Door, member: Person, settings) -> None:
    settings.LIVENESS_THRESHOLD = 0.05
    unmeasured = _decide(door, member, None)
    assert (unmeasured.reason, unmeasured.liveness_threshold, unmeasured.liveness_edge) == (
        Reason.LIVENESS_NOT_MEASURED, 0.05, None
    )  # fmt: skip
    live = _decide(door, member, 0.8)
    assert (live.decision, live.reason, live.liveness_edge, live.liveness_threshold) == ("grant", "matched", 0.8, 0.05)
    plain = Door.objects.create(name="Lobby")
    AccessGroup.objects.get(name="Staff").doors.add(plain)
    for liveness in (None, 0.0):
        event = _decide(plain, member, liveness)
        assert (event.reason, event.liveness_threshold) == (Reason.MATCHED, None)
    assert not Alarm.objects.exists()


def test_scores_are_chained_immutable_and_old_events_still_verify(door: Door, member: Person) -> None:
    old = event_make()  # no liveness: hashed exactly as before these columns existed
    body_keys_before = event_hash(old)
    assert old.hash == body_keys_before
    scored = event_make(liveness_edge=0.31, liveness_frames=5, liveness_server=0.2, liveness_threshold=0.05)
    assert chain_verify().ok
    for field, value in (("liveness_edge", 0.9), ("liveness_frames", 6), ("liveness_server", 0.9)):
        tampered = AccessEvent.objects.get(pk=scored.pk)
        setattr(tampered, field, value)
        assert event_hash(tampered) != scored.hash, field
    # The application's role has no right to update them; the schema owner is stopped by the trigger.
    with pytest.raises(Exception, match="permission denied"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE accessctl_accessevent SET liveness_edge = 0.99 WHERE id = %s", [scored.pk])


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_the_append_only_trigger_covers_the_scores() -> None:
    scored = event_make(liveness_edge=0.31, liveness_frames=5, liveness_server=0.2, liveness_threshold=0.05)
    for column, value in (("liveness_edge", 0.9), ("liveness_frames", 6), ("liveness_server", 0.9),
                          ("liveness_threshold", 0.9)):  # fmt: skip
        with pytest.raises(Exception, match="append-only"):
            owner_execute(f"UPDATE accessctl_accessevent SET {column} = %s WHERE id = %s", [value, scored.pk])
    owner_execute("UPDATE accessctl_accessevent SET snapshot = '' WHERE id = %s", [scored.pk])  # privacy still may


# --- where people see them ----------------------------------------------------------------------


def test_api_admin_audit_log_and_csv_show_the_scores(door: Door, member: Person, client) -> None:
    event = event_make(
        door_id=door.pk, liveness_edge=0.0123, liveness_frames=9, liveness_server=0.0456, liveness_threshold=0.0501,
        reason=Reason.PRESENTATION_ATTACK,
    )  # fmt: skip
    api = token_client(["events:read", "doors:read", "doors:write"])
    row = api.get(f"/api/v1/access-events/{event.pk}/").json()
    assert (row["liveness_edge"], row["liveness_frames"], row["liveness_server"], row["liveness_threshold"]) == (
        0.0123, 9, 0.0456, 0.0501
    )  # fmt: skip
    created = api.post("/api/v1/doors/", {"name": "Gate", "liveness_required": True}, format="json").json()
    assert (created["liveness_required"], created["liveness_threshold"]) == (True, None)
    from accessctl.webhooks import access_event_webhook_payload

    assert access_event_webhook_payload(event)["liveness_edge"] == 0.0123
    bad = api.post("/api/v1/doors/", {"name": "Gate 2", "liveness_threshold": 1.2}, format="json")
    assert bad.status_code == 400
    schema = api.get("/api/v1/schema/", {"format": "json"})
    assert schema.status_code == 200
    components = schema.json()["components"]["schemas"]
    assert {"liveness_edge", "liveness_frames", "liveness_server", "liveness_threshold"} <= set(
        components["AccessEvent"]["properties"]
    )
    assert {"liveness_required", "liveness_threshold"} <= set(components["Door"]["properties"])

    admin = user_create("root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    listing = client.get(reverse("admin:accessctl_accessevent_changelist")).content.decode()
    assert "0.0123" in listing and "0.0456" in listing
    assert "liveness_required" in client.get(reverse("admin:accessctl_door_add")).content.decode()
    audit = client.get(reverse("audit_list")).content.decode()
    assert "0.012" in audit and "9 frames" in audit and "server 0.046" in audit
    export = b"".join(client.get(reverse("audit_export")).streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(export)))
    assert rows[0]["liveness_edge"] == "0.0123" and rows[0]["liveness_frames"] == "9"
    assert rows[0]["liveness_server"] == "0.0456" and rows[0]["liveness_threshold"] == "0.0501"


def test_dashboard_shows_a_presentation_attack_alarm_with_the_face(door: Door, client) -> None:
    event = event_make(door_id=door.pk, reason=Reason.PRESENTATION_ATTACK, snapshot="crops/x.jpg")
    Alarm.objects.create(kind=Alarm.Kind.PRESENTATION_ATTACK, door=door, event=event, details={"snapshot": "x"})
    client.force_login(user_create("olga", "accessctl.view_dashboard"))
    page = client.get(reverse("dashboard")).content.decode()
    assert "presentation attack (photo or screen)" in page
    assert reverse("event_thumbnail", args=[event.pk]) in page


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_an_existing_database_migrates_and_its_chain_still_verifies() -> None:
    from django.core.management import call_command

    before = event_make(similarity=0.4)  # kept through the migration (its liveness columns are all null)
    call_command("migrate", "accessctl", "0014", database="owner", verbosity=0)
    try:
        # Rows written before 0015, by the schema of the time.
        owner_execute("INSERT INTO accessctl_door (name, location, timezone, mode, fail_mode, relay_pulse_ms, "
                      "created_at) VALUES ('Old door', '', 'UTC', 'normal', 'secure', 3000, now())")  # fmt: skip
        columns = [r[0] for r in owner_execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'accessctl_accessevent'"
        )]  # fmt: skip
        assert "liveness_edge" not in columns
    finally:
        call_command("migrate", database="owner", verbosity=0)
    old_door = Door.objects.get(name="Old door")
    assert (old_door.liveness_required, old_door.liveness_threshold) == (False, None)
    before.refresh_from_db()
    assert before.liveness_edge is None and event_hash(before) == before.hash
    event_make(liveness_edge=0.5, liveness_frames=3, liveness_threshold=0.05)
    assert chain_verify().ok and chain_verify().checked == 2
