"""Enrolment UI adapters: staff-only, bulk import staged upload -> Celery task -> polled progress."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accessctl.models import Person
from recognition.models import EnrollmentPhoto
from recognition.tasks import bulk_import_run
from tests.accessctl.helpers import user_create
from tests.faces import face_jpeg

pytestmark = pytest.mark.django_db


def test_enrolment_pages_are_for_staff_with_the_permission(client) -> None:
    person = Person.objects.create(name="Ada Lovelace")
    client.force_login(user_create("olga", "accessctl.view_dashboard", "recognition.add_enrollmentphoto"))
    assert client.get(reverse("recognition:enrol_index")).status_code == 403  # not staff
    assert client.get(reverse("recognition:enrol_person", args=[person.pk])).status_code == 403
    client.force_login(user_create("sam", is_staff=True))
    assert client.get(reverse("recognition:bulk_import")).status_code == 403  # staff without the permission
    client.force_login(user_create("adm", "recognition.add_enrollmentphoto", is_staff=True))
    assert client.get(reverse("recognition:enrol_index")).status_code == 200


def test_bulk_import_upload_run_and_progress(client, media_root, monkeypatch) -> None:
    client.force_login(user_create("adm", "recognition.add_enrollmentphoto", is_staff=True))
    started: list[dict] = []
    monkeypatch.setattr(bulk_import_run, "apply_async", lambda **kw: started.append(kw))
    upload = reverse("recognition:bulk_import_upload")
    response = client.post(
        upload,
        {
            "files": [SimpleUploadedFile("a.jpg", face_jpeg("Colin_Powell", 0)), SimpleUploadedFile("x.txt", b"x")],
            "paths": ["chosen/Colin_Powell/a.jpg", "chosen/../etc/x.txt"],
        },
    )
    assert response.status_code == 200, response.content
    job = response.json()["job"]
    assert response.json() | {"job": None} == {"job": None, "stored": 1, "skipped": 1}
    # Another batch for the same job; someone else's job id is refused.
    more = client.post(upload, {"job": job, "files": [SimpleUploadedFile("b.jpg", b"not a jpeg")],
                                "paths": ["chosen/Colin_Powell/b.jpg"]})  # fmt: skip
    assert more.json()["stored"] == 1
    assert client.post(upload, {"job": "0" * 32}).status_code == 403

    assert client.post(reverse("recognition:bulk_import_start", args=[job])).status_code == 200
    assert started == [{"kwargs": {"job_id": job, "user_id": response.wsgi_request.user.pk}, "task_id": job}]

    # Run the task here (as a worker would) and read its progress through the status endpoint.
    result = bulk_import_run.apply(kwargs=started[0]["kwargs"], task_id=job).get()
    assert result["finished"] and result["total"] == 2 and result["done"] == 2
    assert result["rejected"] + result["accepted"] + result["duplicates"] + result["errors"] == 2
    person = Person.objects.get(name="Colin Powell")
    assert EnrollmentPhoto.objects.filter(person=person).count() == 2
    assert not any((media_root / "imports" / job).rglob("*.jpg"))  # staged files removed
    status = client.get(reverse("recognition:bulk_import_status", args=[job]))
    assert status.status_code == 200 and status.json()["job"] == job
