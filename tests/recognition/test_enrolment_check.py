"""The identity check of new enrolment photos on real faces (LFW): a wrong person's photo is held
for review (never silently added to the gallery), a right one is accepted; review is audited.

Issue 16 item 2: a George W. Bush photo uploaded to "Tony Blair" was accepted, and identify then
answered "Tony Blair" for another Bush photo.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Person
from faceengine.registry import DEFAULT_BACKEND, get_embedder
from recognition.api.views import face_identify
from recognition.calibration import threshold_for
from recognition.enrollment import (
    EnrollmentCode,
    PhotoUpload,
    photo_accept,
    photo_enroll,
    photo_reject,
    photos_enroll,
)
from recognition.models import EnrollmentPhoto, FaceEmbedding
from tests.accessctl.helpers import user_create
from tests.api_support import token_client
from tests.faces import face_jpeg, lfw_available

pytestmark = [
    pytest.mark.dataset("lfw"),
    pytest.mark.django_db,
]

MODEL = get_embedder(DEFAULT_BACKEND).model_version if lfw_available() else ""


def blair_enrolled(count: int = 3) -> Person:
    blair = Person.objects.create(name="Tony Blair")
    for index in range(count):
        photo = photo_enroll(person=blair, image=face_jpeg("Tony_Blair", index), filename=f"blair{index}.jpg")
        assert photo.status == EnrollmentPhoto.Status.ACCEPTED, (photo.quality_reason, photo.own_similarity)
    return blair


def identified(person_photo: tuple[str, int]) -> list[tuple[str, bool]]:
    """``(name, above threshold)`` of each person /api/v1/identify's service ranks for a photo."""
    result = face_identify(image=face_jpeg(*person_photo), limit=3)
    return [(m["name"], m["above_threshold"]) for m in result["matches"]]


def test_wrong_persons_photo_is_held_and_never_identified(enrol_env: Path) -> None:
    blair = blair_enrolled()
    bush = photo_enroll(person=blair, image=face_jpeg("George_W_Bush", 0), filename="bush.jpg")
    assert bush.status == EnrollmentPhoto.Status.HELD
    assert bush.quality_reason == EnrollmentCode.NOT_SAME_PERSON and "does not match" in bush.quality_message
    assert bush.own_similarity < threshold_for(MODEL)
    assert bush.own_photo.person_id == blair.pk and bush.own_photo.status == EnrollmentPhoto.Status.ACCEPTED
    assert bush.crop, "the held face is kept for the reviewer"
    assert not FaceEmbedding.objects.filter(photo=bush).exists(), "a held photo is not in the gallery"
    # identify on ANOTHER Bush photo does not answer Tony Blair above the threshold
    assert ("Tony Blair", True) not in identified(("George_W_Bush", 1))

    right = photo_enroll(person=blair, image=face_jpeg("Tony_Blair", 3), filename="blair3.jpg")
    assert right.status == EnrollmentPhoto.Status.ACCEPTED and right.quality_reason == ""
    assert right.own_similarity >= threshold_for(MODEL)
    assert identified(("Tony_Blair", 4))[0] == ("Tony Blair", True)


def test_photo_matching_someone_else_better_is_held(enrol_env: Path) -> None:
    blair = blair_enrolled(2)
    george = Person.objects.create(name="George W Bush")
    assert photo_enroll(person=george, image=face_jpeg("George_W_Bush", 0)).status == EnrollmentPhoto.Status.ACCEPTED
    held = photo_enroll(person=blair, image=face_jpeg("George_W_Bush", 1))
    assert held.status == EnrollmentPhoto.Status.HELD
    assert held.quality_reason == EnrollmentCode.MATCHES_OTHER_PERSON and held.duplicate_of_id == george.pk
    assert held.other_similarity > max(held.own_similarity, threshold_for(MODEL))
    assert held.other_photo.person_id == george.pk and held.own_photo.person_id == blair.pk
    assert identified(("George_W_Bush", 2))[0] == ("George W Bush", True)


def test_first_photo_is_checked_against_the_rest_of_the_gallery(enrol_env: Path) -> None:
    blair = blair_enrolled(1)
    newcomer = Person.objects.create(name="New Person")
    held = photo_enroll(person=newcomer, image=face_jpeg("Tony_Blair", 1))
    assert (held.status, held.quality_reason, held.duplicate_of_id) == (
        EnrollmentPhoto.Status.HELD,
        EnrollmentCode.MATCHES_OTHER_PERSON,
        blair.pk,
    )
    assert held.own_similarity is None
    first = photo_enroll(person=newcomer, image=face_jpeg("Colin_Powell", 0))
    assert first.status == EnrollmentPhoto.Status.ACCEPTED, "nobody else matches: only the gallery check applies"


def test_photos_uploaded_together_pick_the_face_most_of_them_share(enrol_env: Path) -> None:
    """The wrong photo comes first in the batch: it must not become the reference of the others."""
    blair = Person.objects.create(name="Tony Blair")
    uploads = [PhotoUpload(image=face_jpeg("George_W_Bush", 0), filename="bush.jpg")] + [
        PhotoUpload(image=face_jpeg("Tony_Blair", i), filename=f"blair{i}.jpg") for i in range(3)
    ]
    decided: list[int] = []
    photos = photos_enroll(person=blair, uploads=uploads, progress=lambda index, photo: decided.append(index))
    assert sorted(decided) == [0, 1, 2, 3] and decided[0] != 0
    assert [p.status for p in photos] == [EnrollmentPhoto.Status.HELD] + [EnrollmentPhoto.Status.ACCEPTED] * 3
    assert photos[0].quality_reason == EnrollmentCode.NOT_SAME_PERSON
    assert blair.embeddings.count() == 3


def test_approve_makes_a_held_photo_searchable_and_reject_discards_it_both_audited(enrol_env: Path) -> None:
    reviewer = user_create("rev", "recognition.add_enrollmentphoto", is_staff=True)
    blair = blair_enrolled()
    held = photo_enroll(person=blair, image=face_jpeg("George_W_Bush", 0))
    assert held.status == EnrollmentPhoto.Status.HELD

    approved = photo_accept(photo=held, by=reviewer)
    assert approved.status == EnrollmentPhoto.Status.ACCEPTED and approved.quality["review"]["by"] == reviewer.pk
    assert FaceEmbedding.objects.filter(photo=held, person=blair).count() == 1
    assert ("Tony Blair", True) in identified(("George_W_Bush", 0))  # the approved face is searched now
    event = AccessEvent.objects.get(reason=Reason.ENROLMENT_APPROVED)
    assert (event.decision, event.source, event.person_id, event.actor_id) == (
        Decision.GRANT,
        AccessEvent.Source.OPERATOR,
        blair.pk,
        reviewer.pk,
    )
    assert event.details["photo"] == held.pk and event.details["was"] == EnrollmentCode.NOT_SAME_PERSON

    rejected = photo_reject(photo=approved, by=reviewer, reason="that is George Bush")
    assert rejected.status == EnrollmentPhoto.Status.REJECTED
    assert not FaceEmbedding.objects.filter(photo=held).exists()
    assert ("Tony Blair", True) not in identified(("George_W_Bush", 1))
    event = AccessEvent.objects.get(reason=Reason.ENROLMENT_REJECTED)
    assert (event.decision, event.actor_id, event.details["reason"]) == (
        Decision.DENY,
        reviewer.pk,
        "that is George Bush",
    )


def test_api_upload_of_a_wrong_photo_is_held(enrol_env: Path) -> None:
    blair = blair_enrolled()
    client = token_client(["people:read", "people:write"])
    response = client.post(
        f"/api/v1/people/{blair.pk}/photos/",
        {"image": SimpleUploadedFile("bush.jpg", face_jpeg("George_W_Bush", 0), content_type="image/jpeg")},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "held" and body["quality_reason"] == "not_same_person"
    assert body["own_similarity"] < threshold_for(MODEL)
    assert blair.embeddings.count() == 3
    identify = token_client(["identify"]).post(
        "/api/v1/identify",
        {"image": SimpleUploadedFile("b.jpg", face_jpeg("George_W_Bush", 1), content_type="image/jpeg")},
        format="multipart",
    )
    assert identify.status_code == 200
    assert not [m for m in identify.json()["matches"] if m["name"] == "Tony Blair" and m["above_threshold"]]


def test_enroll_folder_holds_the_wrong_photo(enrol_env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "people" / "Tony_Blair"
    folder.mkdir(parents=True)
    for index in range(3):
        (folder / f"blair_{index}.jpg").write_bytes(face_jpeg("Tony_Blair", index))
    (folder / "a_bush.jpg").write_bytes(face_jpeg("George_W_Bush", 0))  # sorted first
    out = io.StringIO()
    call_command("enroll_folder", str(tmp_path / "people"), "--list-rejected", stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    assert "4 pictures: 3 accepted, 0 rejected, 1 held for review, 0 errors" in text, text
    assert "held not_same_person: 1" in text and "Tony_Blair/a_bush.jpg: held not_same_person" in text
    blair = Person.objects.get(name="Tony Blair")
    assert blair.embeddings.count() == 3
    assert blair.photos.get(status=EnrollmentPhoto.Status.HELD).quality_reason == EnrollmentCode.NOT_SAME_PERSON


def test_enrolment_page_shows_both_faces_and_review_is_audited(enrol_env: Path, client) -> None:
    admin = user_create("adm", "recognition.add_enrollmentphoto", is_staff=True)
    client.force_login(admin)
    blair = Person.objects.create(name="Tony Blair")
    files = [SimpleUploadedFile(f"b{i}.jpg", face_jpeg("Tony_Blair", i), content_type="image/jpeg") for i in range(2)]
    files.append(SimpleUploadedFile("bush.jpg", face_jpeg("George_W_Bush", 0), content_type="image/jpeg"))
    page = client.post(reverse("recognition:enrol_person", args=[blair.pk]), {"photos": files}, follow=True)
    assert page.status_code == 200
    assert "2 accepted, 1 held for review" in page.content.decode()
    held = blair.photos.get(status=EnrollmentPhoto.Status.HELD)
    html = page.content.decode()
    assert 'data-review="not_same_person"' in html
    assert reverse("recognition:photo_crop", args=[held.pk]) in html
    assert reverse("recognition:photo_crop", args=[held.own_photo_id]) in html  # the face it was compared with

    client.post(reverse("recognition:photo_reject", args=[held.pk]), {"reason": "George Bush"})
    held.refresh_from_db()
    assert held.status == EnrollmentPhoto.Status.REJECTED
    assert AccessEvent.objects.get(reason=Reason.ENROLMENT_REJECTED).actor_id == admin.pk


def test_admin_shows_both_faces_and_approves(enrol_env: Path, client) -> None:
    blair = blair_enrolled(2)
    held = photo_enroll(person=blair, image=face_jpeg("George_W_Bush", 0))
    superuser = user_create("root", is_staff=True, is_superuser=True)
    client.force_login(superuser)
    change = client.get(reverse("admin:recognition_enrollmentphoto_change", args=[held.pk])).content.decode()
    assert reverse("recognition:photo_crop", args=[held.pk]) in change
    assert reverse("recognition:photo_crop", args=[held.own_photo_id]) in change
    response = client.post(
        reverse("admin:recognition_enrollmentphoto_changelist"),
        {"action": "approve_photos", "_selected_action": [held.pk]},
    )
    assert response.status_code == 302
    held.refresh_from_db()
    assert held.status == EnrollmentPhoto.Status.ACCEPTED and FaceEmbedding.objects.filter(photo=held).exists()
    assert AccessEvent.objects.get(reason=Reason.ENROLMENT_APPROVED).actor_id == superuser.pk
