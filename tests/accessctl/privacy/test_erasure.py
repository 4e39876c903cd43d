"""Right to erasure and right of access: everything gone, events pseudonymised, chain valid, export complete."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from accessctl.audit import chain_verify, event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, AccessGroup, Alarm, Person, WebhookDelivery, WebhookSubscription
from accessctl.privacy.erasure import ErasureError, person_erase, person_export, person_find
from accessctl.storage import crop_store
from recognition.models import EnrollmentPhoto, FaceEmbedding

pytestmark = pytest.mark.django_db

JPEG = b"\xff\xd8" + b"p" * 300
MODEL = "sface-2021dec-int8bq"


def _unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=128)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def _enrolled(name: str, seed: int) -> Person:
    person = Person.objects.create(name=name, external_id=f"hr-{seed}", notes="badge 12")
    group = AccessGroup.objects.create(name=f"staff-{seed}")
    group.people.add(person)
    for i in range(2):
        photo = EnrollmentPhoto.objects.create(
            person=person,
            image=ContentFile(JPEG, name=f"{name}-{i}.jpg"),
            crop=ContentFile(JPEG[:100], name=f"{name}-{i}-crop.jpg"),
            status=EnrollmentPhoto.Status.ACCEPTED,
            quality={"face_px": 120},
        )
        FaceEmbedding.objects.create(
            person=person, photo=photo, model_version=MODEL, embedding=_unit(seed * 10 + i), quality=0.9
        )
    return person


def _sighting(person: Person | None) -> AccessEvent:
    detection = uuid.uuid4()
    occurred_at = dt.datetime.now(dt.UTC)
    snapshot = crop_store(detection_id=detection, jpeg=JPEG, captured_at=occurred_at)
    event, _ = event_record(
        detection_id=detection,
        occurred_at=occurred_at,
        decision=Decision.GRANT if person else Decision.DENY,
        reason=Reason.MATCHED if person else Reason.UNKNOWN_FACE,
        device_uid="door-1",
        person_id=person.pk if person else None,
        subject_uid=person.uid if person else None,
        similarity=0.71 if person else 0.2,
        model_version=MODEL,
        snapshot=snapshot,
    )
    return event


@pytest.fixture
def admin_user() -> object:
    return get_user_model().objects.create_superuser("root", "root@example.org", "pw-for-tests-only")


def test_erase_removes_everything_and_pseudonymises_events(media_root: Path, admin_user: object) -> None:
    ada = _enrolled("ada", 1)
    bob = _enrolled("bob", 2)
    ada_events = [_sighting(ada), _sighting(ada)]
    bob_event = _sighting(bob)
    stranger = _sighting(None)
    Alarm.objects.create(kind=Alarm.Kind.WATCHLIST, event=ada_events[0], details={"person_name": "ada", "door": 3})
    hook = WebhookSubscription.objects.create(
        name="hr", url="https://hr.example.org/hook", secret="s", event_types=["*"]
    )
    WebhookDelivery.objects.create(
        subscription=hook,
        event_type="person.created",
        payload={"person_id": ada.pk, "uid": str(ada.uid), "name": "ada", "external_id": "hr-1"},
    )
    ada_files = [f.name for p in ada.photos.all() for f in (p.image, p.crop)] + [e.snapshot for e in ada_events]
    bob_files = [f.name for p in bob.photos.all() for f in (p.image, p.crop)] + [bob_event.snapshot]
    assert all(default_storage.exists(n) for n in ada_files)
    subject = ada.uid

    report = person_erase(person=ada, actor=admin_user)

    assert report.subject_uid == subject
    assert report.photos_deleted == 2 and report.embeddings_deleted == 2
    assert report.events_pseudonymised == 2 and report.snapshots_cleared == 2
    assert report.files_deleted == 6 and report.bytes_deleted == 2 * (len(JPEG) + 100) + 2 * len(JPEG)
    assert report.alarms_scrubbed == 1
    # Files, rows and the person are gone ...
    assert not any(default_storage.exists(n) for n in ada_files)
    assert not Person.objects.filter(pk=ada.pk).exists()
    assert not EnrollmentPhoto.objects.filter(person_id=ada.pk).exists()
    assert not FaceEmbedding.objects.filter(person_id=ada.pk).exists()
    assert not AccessGroup.objects.get(name="staff-1").people.exists()
    assert Alarm.objects.get().details == {"door": 3}
    assert report.webhook_payloads_scrubbed == 1
    created = WebhookDelivery.objects.get(event_type="person.created")
    assert created.payload == {"person_id": ada.pk, "uid": str(subject), "erased": True}
    deleted = WebhookDelivery.objects.get(event_type="person.deleted")
    assert deleted.payload == {"person_id": ada.pk, "uid": str(subject), "erased": True}
    # ... her events stay, pseudonymised, with no snapshot ...
    for event in AccessEvent.objects.filter(pk__in=[e.pk for e in ada_events]):
        assert event.person_id is None and event.subject_uid == subject and event.snapshot == ""
        assert event.decision == "grant" and event.similarity == pytest.approx(0.71)
    # ... nobody else's data is touched ...
    assert all(default_storage.exists(n) for n in bob_files)
    assert FaceEmbedding.objects.filter(person=bob).count() == 2
    assert AccessEvent.objects.get(pk=bob_event.pk).person_id == bob.pk
    assert AccessEvent.objects.get(pk=stranger.pk).snapshot
    # ... the erasure is itself in the log, and the chain is intact.
    record = AccessEvent.objects.get(pk=report.audit_event_id)
    assert record.source == AccessEvent.Source.SYSTEM and record.actor_id == admin_user.pk
    assert record.subject_uid == subject and record.details["action"] == "person_erased"
    assert "ada" not in json.dumps(record.details)
    chain = chain_verify()
    assert chain.ok and chain.checked == 5


def test_erase_rolls_back_when_storage_fails(media_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ada = _enrolled("ada", 1)
    _sighting(ada)

    def broken(storage: object, names: list[str]) -> None:
        raise OSError("storage down")

    monkeypatch.setattr("accessctl.privacy.erasure.storage_delete_many", broken)
    with pytest.raises(OSError, match="storage down"):
        person_erase(person=ada, actor=None)
    assert Person.objects.filter(pk=ada.pk).exists()
    assert AccessEvent.objects.filter(person=ada).exclude(snapshot="").count() == 1
    assert FaceEmbedding.objects.filter(person=ada).count() == 2
    assert AccessEvent.objects.count() == 1, "no erasure record for a failed erasure"


def test_export_contains_all_data(media_root: Path) -> None:
    ada = _enrolled("ada", 1)
    event = _sighting(ada)
    _sighting(_enrolled("bob", 2))

    data = person_export(person=ada)

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        doc = json.loads(zf.read("person.json"))
        names = set(zf.namelist())
        assert doc["person"]["uid"] == str(ada.uid)
        assert doc["person"]["name"] == "ada" and doc["person"]["external_id"] == "hr-1"
        assert doc["person"]["notes"] == "badge 12"
        assert doc["access_groups"] == [{"id": ada.access_groups.get().pk, "name": "staff-1"}]
        assert len(doc["enrolment_photos"]) == 2
        for photo in doc["enrolment_photos"]:
            assert zf.read(photo["image"]) == JPEG and zf.read(photo["crop"]) == JPEG[:100]
        assert len(doc["embeddings"]) == 2
        first = doc["embeddings"][0]
        assert first["model_version"] == MODEL and first["dim"] == 128
        assert np.allclose(first["vector"], _unit(10), atol=1e-6)
        assert [e["detection_id"] for e in doc["access_events"]] == [str(event.detection_id)]
        assert zf.read(doc["access_events"][0]["snapshot"]) == JPEG
        assert doc["missing_files"] == []
        assert "README.txt" in names
        assert not any("bob" in n for n in names)


def test_person_find_by_uid_id_or_external_id() -> None:
    ada = Person.objects.create(name="ada", external_id="hr-77")
    assert person_find(ident=str(ada.uid)) == ada
    assert person_find(ident=str(ada.pk)) == ada
    assert person_find(ident="hr-77") == ada
    with pytest.raises(ErasureError, match="no person"):
        person_find(ident="nobody")


def test_management_commands(media_root: Path, admin_user: object, tmp_path: Path) -> None:
    ada = _enrolled("ada", 1)
    target = tmp_path / "ada.zip"
    call_command("export_person", str(ada.uid), "-o", str(target), stdout=io.StringIO())
    assert zipfile.ZipFile(target).read("person.json")
    out = io.StringIO()
    call_command("erase_person", "hr-1", "--actor", "root", "--yes", stdout=out)
    assert json.loads(out.getvalue())["embeddings_deleted"] == 2
    assert not Person.objects.exists()


def test_admin_actions_export_and_erase_with_confirmation(media_root: Path, admin_user: object) -> None:
    ada = _enrolled("ada", 1)
    client = Client()
    client.force_login(admin_user)
    url = reverse("admin:accessctl_person_changelist")

    response = client.post(url, {"action": "export_people", "_selected_action": [ada.pk]})
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert json.loads(zipfile.ZipFile(io.BytesIO(response.content)).read("person.json"))["person"]["name"] == "ada"

    response = client.post(url, {"action": "erase_people", "_selected_action": [ada.pk]})
    assert response.status_code == 200 and b"Yes, erase permanently" in response.content
    assert Person.objects.filter(pk=ada.pk).exists(), "nothing erased before confirmation"

    response = client.post(url, {"action": "erase_people", "_selected_action": [ada.pk], "confirm_erase": "yes"})
    assert response.status_code == 302
    assert not Person.objects.exists() and not FaceEmbedding.objects.exists()
    assert AccessEvent.objects.get().actor_id == admin_user.pk


def test_admin_erase_needs_the_delete_permission(media_root: Path) -> None:
    from django.contrib.auth.models import Permission

    ada = _enrolled("ada", 1)
    viewer = get_user_model().objects.create_user("viewer", password="pw-for-tests-only", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_person"))
    client = Client()
    client.force_login(viewer)
    url = reverse("admin:accessctl_person_changelist")
    for action in ("erase_people", "export_people"):
        response = client.post(url, {"action": action, "_selected_action": [ada.pk], "confirm_erase": "yes"})
        assert response.status_code in (200, 302) and response.get("Content-Type", "").startswith("text/html")
    assert Person.objects.filter(pk=ada.pk).exists()
    assert FaceEmbedding.objects.filter(person=ada).count() == 2


def test_deleting_a_person_in_the_admin_erases_them(media_root: Path, admin_user: object) -> None:
    ada = _enrolled("ada", 1)
    client = Client()
    client.force_login(admin_user)
    changelist = client.get(reverse("admin:accessctl_person_changelist"))
    assert b"delete_selected" not in changelist.content  # bulk delete would leave files behind
    response = client.post(reverse("admin:accessctl_person_delete", args=[ada.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Person.objects.exists() and not FaceEmbedding.objects.exists()
    assert AccessEvent.objects.get().reason == Reason.PERSON_ERASED
