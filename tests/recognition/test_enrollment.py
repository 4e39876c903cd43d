"""Enrolment services on real faces (LFW): quality verdicts, storage, duplicates, review, re-embedding."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from accessctl.codes import Reason
from accessctl.models import Person
from faceengine.embedder import Embedder
from faceengine.quality import QualityReason
from faceengine.registry import DEFAULT_BACKEND, get_embedder
from recognition.enrollment import (
    EnrollmentCode,
    EnrollmentError,
    embeddings_prune,
    person_reembed,
    photo_accept,
    photo_enroll,
    photo_reject,
)
from recognition.matcher import match_decide
from recognition.models import EnrollmentPhoto, FaceEmbedding
from tests.faces import face_jpeg, face_paths, lfw_available

pytestmark = pytest.mark.dataset("lfw")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder(DEFAULT_BACKEND)


def jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def lfw_image(person: str, index: int = 0) -> Image.Image:
    with Image.open(face_paths(person, 1, index)[0]) as img:
        return img.convert("RGB")


def huge_png_header(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.django_db
def test_good_photo_is_accepted_and_stored(enrol_env: Path, embedder: Embedder) -> None:
    person = Person.objects.create(name="Colin Powell")
    photo = photo_enroll(person=person, image=face_jpeg("Colin_Powell", 0), filename="Colin_Powell_0001.jpg")
    assert photo.status == EnrollmentPhoto.Status.ACCEPTED, photo.quality_message
    assert photo.quality_reason == "" and photo.duplicate_of_id is None
    # original and aligned crop in storage (under MEDIA_ROOT), never in the database
    assert (enrol_env / photo.image.name).read_bytes() == face_jpeg("Colin_Powell", 0)
    assert "Colin" not in photo.image.name
    with Image.open(enrol_env / photo.crop.name) as crop:
        assert (crop.format, crop.size) == ("JPEG", (112, 112))
    assert len(photo.box) == 4 and photo.quality["face_size"] > 40
    (embedding,) = FaceEmbedding.objects.filter(photo=photo)
    assert embedding.person_id == person.pk and embedding.model_version == embedder.model_version
    assert 0 < embedding.quality <= 1 and photo.quality["quality_score"] == embedding.quality
    assert np.linalg.norm(np.asarray(embedding.embedding)) == pytest.approx(1.0, abs=1e-4)


def _two_faces() -> bytes:
    canvas = Image.new("RGB", (300, 150))
    canvas.paste(lfw_image("Colin_Powell"), (0, 0))
    canvas.paste(lfw_image("Tony_Blair"), (150, 0))
    return jpeg(canvas)


def _small_face() -> bytes:
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(lfw_image("Colin_Powell").resize((80, 80)), (160, 160))
    return jpeg(canvas)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: jpeg(Image.new("RGB", (300, 300), (200, 200, 200))), QualityReason.NO_FACE),
        (_two_faces, QualityReason.MULTIPLE_FACES),
        (_small_face, QualityReason.TOO_SMALL),
        (lambda: jpeg(lfw_image("Colin_Powell").filter(ImageFilter.GaussianBlur(3))), QualityReason.BLURRED),
    ],
    ids=["no_face", "multiple_faces", "too_small", "blurred"],
)
def test_quality_rejections(enrol_env: Path, make, reason: QualityReason) -> None:
    person = Person.objects.create(name="Someone")
    photo = photo_enroll(person=person, image=make())
    assert photo.status == EnrollmentPhoto.Status.REJECTED
    assert photo.quality_reason == reason
    assert photo.quality_message and photo.quality_message != "ok"
    assert photo.image and (enrol_env / photo.image.name).is_file(), "the original is kept for the admin"
    assert not FaceEmbedding.objects.filter(person=person).exists()
    with pytest.raises(EnrollmentError):
        photo_accept(photo=photo)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "data",
    [
        b"this is not an image",
        b"",
        face_jpeg("Colin_Powell", 0)[:1500] if lfw_available() else b"x",
        huge_png_header(9000, 9000),
        jpeg(Image.new("RGB", (20, 20))),
    ],
    ids=["text", "empty", "truncated", "81_megapixels", "tiny"],
)
def test_bad_image_is_rejected_not_raised(enrol_env: Path, data: bytes) -> None:
    person = Person.objects.create(name="Someone")
    photo = photo_enroll(person=person, image=io.BytesIO(data), filename="upload.jpg")
    assert photo.status == EnrollmentPhoto.Status.REJECTED
    assert photo.quality_reason == EnrollmentCode.BAD_IMAGE == Reason.BAD_IMAGE
    assert photo.quality_message
    assert not FaceEmbedding.objects.filter(person=person).exists()


@pytest.mark.django_db
def test_duplicate_face_is_flagged_then_reviewed(enrol_env: Path, embedder: Embedder) -> None:
    colin = Person.objects.create(name="Colin Powell")
    impostor = Person.objects.create(name="Not Colin")
    assert photo_enroll(person=colin, image=face_jpeg("Colin_Powell", 0)).status == EnrollmentPhoto.Status.ACCEPTED

    dup = photo_enroll(person=impostor, image=face_jpeg("Colin_Powell", 1))
    assert dup.status == EnrollmentPhoto.Status.HELD
    assert dup.duplicate_of_id == colin.pk and dup.quality_reason == EnrollmentCode.MATCHES_OTHER_PERSON
    assert dup.other_similarity > 0.4 and dup.own_similarity is None
    assert not FaceEmbedding.objects.filter(photo=dup).exists(), "held photos are not in the gallery"

    # the matcher never sees the pending embedding: Colin is matched, not ambiguous
    probe = get_embedder(DEFAULT_BACKEND)
    from faceengine.pipeline import embed_image

    vector = embed_image(lfw_image("Colin_Powell", 2), embedder=probe, max_faces=1)[0].embedding
    assert match_decide(vector, model_version=embedder.model_version).person_id == colin.pk

    # a reviewer accepts it: now two people carry the same face -> ambiguous
    accepted = photo_accept(photo=dup)
    assert accepted.status == EnrollmentPhoto.Status.ACCEPTED and accepted.quality_reason == ""
    assert FaceEmbedding.objects.filter(photo=dup, person=impostor).count() == 1
    assert match_decide(vector, model_version=embedder.model_version).reason is Reason.AMBIGUOUS_MATCH

    # ... and changes their mind: the embedding leaves the gallery
    rejected = photo_reject(photo=accepted, reason="same man as Colin")
    assert rejected.status == EnrollmentPhoto.Status.REJECTED
    assert rejected.quality_reason == EnrollmentCode.REVIEWER_REJECTED
    assert rejected.quality["review"]["action"] == "rejected"
    assert not FaceEmbedding.objects.filter(photo=dup).exists()
    assert match_decide(vector, model_version=embedder.model_version).person_id == colin.pk


@pytest.mark.django_db
def test_same_person_again_is_not_a_duplicate(enrol_env: Path) -> None:
    colin = Person.objects.create(name="Colin Powell")
    for index in range(2):
        photo = photo_enroll(person=colin, image=face_jpeg("Colin_Powell", index))
        assert photo.status == EnrollmentPhoto.Status.ACCEPTED
    assert colin.embeddings.count() == 2


@pytest.mark.django_db
def test_reembed_gallery(enrol_env: Path, embedder: Embedder) -> None:
    colin = Person.objects.create(name="Colin Powell")
    photo = photo_enroll(person=colin, image=face_jpeg("Colin_Powell", 0))
    photo_enroll(person=colin, image=b"broken")
    before = FaceEmbedding.objects.get(photo=photo)

    calls: list[tuple[int, int]] = []
    summary = person_reembed(embedder=embedder, progress=lambda done, total: calls.append((done, total)))
    assert (summary.photos, summary.created, summary.skipped, summary.failed) == (1, 0, 1, 0)
    assert calls == [(1, 1)]

    summary = person_reembed(embedder=embedder, person=colin, force=True)
    assert (summary.created, summary.skipped) == (1, 0)
    after = FaceEmbedding.objects.get(photo=photo)
    assert after.pk != before.pk
    np.testing.assert_allclose(after.embedding, before.embedding, atol=1e-5)  # same pipeline, same vector

    # an embedding of a retired model version is pruned
    FaceEmbedding.objects.create(
        person=colin, photo=photo, model_version="facenet-casia-20180408", embedding=np.ones(512).tolist()
    )
    assert embeddings_prune(keep_model_version=embedder.model_version) == 1
