"""Enrolment photo upload (quality verdict) and 1:N identify through the REST API.

The API tests replace the face engine (detector + embedder) with known vectors so they run in
milliseconds against the real enrolment service and the real pgvector gallery; one test at the
end runs the real engine on LFW faces when the photos are present.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accessctl.models import Person
from recognition.calibration import threshold_for
from recognition.enrollment import FaceAnalysis
from recognition.models import EnrollmentPhoto, FaceEmbedding
from tests.api_support import make_user, session_client, token_client
from tests.faces import face_jpeg

pytestmark = pytest.mark.django_db

MODEL = "sface-2021dec-int8bq"  # 128-d


def unit(seed: int, near: np.ndarray | None = None, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=128) if near is None else near + noise * rng.normal(size=128)
    return (v / np.linalg.norm(v)).astype(np.float32)


def good(vector: np.ndarray) -> FaceAnalysis:
    return FaceAnalysis(
        ok=True,
        metrics={"face_px": 120.0, "sharpness": 80.0},
        box=[10.0, 12.0, 130.0, 150.0],
        crop_jpeg=b"\xff\xd8crop",
        embedding=vector,
        model_version=MODEL,
        quality_score=0.9,
    )


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, media_root: Path, settings) -> SimpleNamespace:
    """Queue the analyses the 'face engine' returns, in order."""
    settings.RECOGNITION_DEFAULT_THRESHOLD = None
    state = SimpleNamespace(queue=[])
    monkeypatch.setattr("recognition.enrollment.configured_embedder", lambda: object())
    monkeypatch.setattr("recognition.enrollment.face_analyse", lambda data, *, embedder: state.queue.pop(0))
    return state


def upload(name: str = "face.jpg", data: bytes = b"\xff\xd8\xff\xe0 fake jpeg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/jpeg")


def photos_url(person: Person) -> str:
    return f"/api/v1/people/{person.pk}/photos/"


def test_upload_returns_the_quality_verdict(engine) -> None:
    ada = Person.objects.create(name="Ada")
    client = token_client(["people:read", "people:write"])
    engine.queue = [
        good(unit(1)),
        FaceAnalysis(ok=False, reason="too_small", message="The face is too small.", box=[1.0, 2.0, 20.0, 22.0]),
    ]
    accepted = client.post(photos_url(ada), {"image": upload()}, format="multipart")
    assert accepted.status_code == 201, accepted.content
    assert accepted.json()["status"] == "accepted" and accepted.json()["box"] == [10.0, 12.0, 130.0, 150.0]
    rejected = client.post(photos_url(ada), {"image": upload()}, format="multipart")
    assert rejected.status_code == 201
    body = rejected.json()
    assert body["status"] == "rejected" and body["quality_reason"] == "too_small"
    assert body["quality_message"] == "The face is too small."
    assert FaceEmbedding.objects.filter(person=ada).count() == 1  # only the accepted one is in the gallery
    listed = client.get(photos_url(ada)).json()
    assert listed["count"] == 2 and listed["results"][0]["id"] == body["id"]  # newest first
    assert client.get(f"{photos_url(ada)}{body['id']}/").json()["status"] == "rejected"


def test_upload_flags_a_face_of_another_person_for_review(engine) -> None:
    ada, bob = Person.objects.create(name="Ada"), Person.objects.create(name="Bob")
    client = token_client(["people:write"])
    face = unit(7)
    engine.queue = [good(face), good(unit(8, near=face, noise=0.01))]
    client.post(photos_url(ada), {"image": upload()}, format="multipart")
    duplicate = client.post(photos_url(bob), {"image": upload()}, format="multipart").json()
    assert duplicate["status"] == "held" and duplicate["duplicate_of"] == ada.pk
    assert duplicate["quality_reason"] == "matches_other_person" and duplicate["other_similarity"] > 0.9
    assert not FaceEmbedding.objects.filter(person=bob).exists()


def test_upload_errors_and_permissions(engine) -> None:
    ada = Person.objects.create(name="Ada")
    client = token_client(["people:read", "people:write"])
    assert client.post(photos_url(ada), {}, format="multipart").status_code == 400
    assert client.post("/api/v1/people/999999/photos/", {"image": upload()}, format="multipart").status_code == 404
    assert client.get("/api/v1/people/999999/photos/").status_code == 404
    assert (
        token_client(["people:read"]).post(photos_url(ada), {"image": upload()}, format="multipart").status_code == 403
    )
    assert token_client(["identify"]).get(photos_url(ada)).status_code == 403
    assert not EnrollmentPhoto.objects.exists()


def test_identify_ranks_enrolled_people(engine) -> None:
    ada, bob = Person.objects.create(name="Ada", external_id="E-1"), Person.objects.create(name="Bob")
    ada_face, bob_face = unit(11), unit(12)
    writer = token_client(["people:write"])
    engine.queue = [good(ada_face), good(bob_face)]
    writer.post(photos_url(ada), {"image": upload()}, format="multipart")
    writer.post(photos_url(bob), {"image": upload()}, format="multipart")

    client = token_client(["identify"])
    engine.queue = [good(unit(13, near=ada_face, noise=0.02))]
    response = client.post("/api/v1/identify", {"image": upload(), "limit": 2}, format="multipart")
    assert response.status_code == 200, response.content
    result = response.json()
    assert result["model_version"] == MODEL and result["threshold"] == pytest.approx(threshold_for(MODEL))
    assert [m["person_id"] for m in result["matches"]] == [ada.pk, bob.pk]
    best, other = result["matches"]
    assert best["name"] == "Ada" and best["external_id"] == "E-1" and best["similarity"] > 0.9
    assert best["above_threshold"] is True and other["above_threshold"] is False
    engine.queue = [good(unit(14, near=bob_face, noise=0.02))]
    one = client.post("/api/v1/identify/", {"image": upload(), "limit": 1}, format="multipart").json()
    assert [m["name"] for m in one["matches"]] == ["Bob"]


def test_identify_without_a_usable_face_is_422(engine) -> None:
    engine.queue = [FaceAnalysis(ok=False, reason="no_face", message="No face found in the picture.")]
    response = token_client(["identify"]).post("/api/v1/identify", {"image": upload()}, format="multipart")
    assert response.status_code == 422
    assert response.json() == {"error": {"code": "no_face", "message": "No face found in the picture."}}


def test_identify_needs_its_scope(engine) -> None:
    assert (
        token_client(["people:read", "people:write"])
        .post("/api/v1/identify", {"image": upload()}, format="multipart")
        .status_code
        == 403
    )
    client = token_client(["identify"])
    assert client.post("/api/v1/identify", {}, format="multipart").status_code == 400
    assert client.post("/api/v1/identify", {"image": upload(), "limit": 99}, format="multipart").status_code == 400
    assert client.get("/api/v1/identify").status_code == 405
    assert session_client(make_user(staff=True)).post("/api/v1/identify", {"image": upload()}).status_code == 403


@pytest.mark.dataset("lfw")
def test_enrol_and_identify_with_the_real_engine(settings, media_root) -> None:
    from faceengine.registry import DEFAULT_BACKEND

    settings.RECOGNITION_MIN_FACE_PX = 40  # the shared LFW copy has ~55 px faces
    settings.RECOGNITION_EMBEDDER = DEFAULT_BACKEND
    settings.RECOGNITION_DEFAULT_THRESHOLD = None
    colin, tony = Person.objects.create(name="Colin Powell"), Person.objects.create(name="Tony Blair")
    client = token_client(["people:write", "identify"])
    for person, name, index in ((colin, "Colin_Powell", 0), (colin, "Colin_Powell", 1), (tony, "Tony_Blair", 0)):
        photo = upload(f"{name}.jpg", face_jpeg(name, index))
        response = client.post(photos_url(person), {"image": photo}, format="multipart")
        assert response.status_code == 201 and response.json()["status"] == "accepted", response.content
    probe = upload("probe.jpg", face_jpeg("Colin_Powell", 5))
    result = client.post("/api/v1/identify", {"image": probe}, format="multipart").json()
    assert result["matches"][0]["person_id"] == colin.pk and result["matches"][0]["above_threshold"] is True
