"""Bulk enrolment from a folder or a .zip (``<Person_Name>/*.jpg``) and the management commands."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from accessctl.models import Person
from recognition.bulk_import import ImportSourceError, ItemOutcome, import_items, photos_import
from recognition.models import EnrollmentPhoto, FaceEmbedding
from tests.faces import face_jpeg

pytestmark = pytest.mark.dataset("lfw")


def blank_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


LAYOUT = {
    "Colin_Powell/a.jpg": lambda: face_jpeg("Colin_Powell", 0),
    "Colin_Powell/b.JPG": lambda: face_jpeg("Colin_Powell", 1),
    "Tony_Blair/a.jpg": lambda: face_jpeg("Tony_Blair", 0),
    "Tony_Blair/broken.jpg": lambda: b"\xff\xd8\xff\xe0 not really a jpeg",
    "Tony_Blair/readme.txt": lambda: b"ignored",
    "Tony_Blair/.hidden.jpg": lambda: b"ignored",
    "Mr_Double/x.jpg": lambda: face_jpeg("Colin_Powell", 2),
}


def make_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, make in LAYOUT.items():
            archive.writestr(f"import/{name}", make())
        archive.writestr("__MACOSX/import/Colin_Powell/._a.jpg", b"resource fork")
    return path


def test_items_of_a_zip(tmp_path: Path) -> None:
    items = import_items(make_zip(tmp_path / "people.zip"))
    assert [(i.folder, i.filename) for i in items] == [
        ("Colin_Powell", "a.jpg"),
        ("Colin_Powell", "b.JPG"),
        ("Mr_Double", "x.jpg"),
        ("Tony_Blair", "a.jpg"),
        ("Tony_Blair", "broken.jpg"),
    ]
    assert items[0].person_name == "Colin Powell"
    with pytest.raises(ImportSourceError):
        import_items(tmp_path / "missing")
    (tmp_path / "not.zip").write_bytes(b"nope")
    with pytest.raises(ImportSourceError):
        import_items(tmp_path / "not.zip")


@pytest.mark.django_db
def test_zip_import_summary(enrol_env: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int, ItemOutcome]] = []
    summary = photos_import(
        source=make_zip(tmp_path / "people.zip"), progress=lambda done, total, o: seen.append((done, total, o))
    )
    assert [(d, t) for d, t, _ in seen] == [(i, 5) for i in range(1, 6)]
    assert summary.as_dict() == {
        "total": 5,
        "people_created": 3,
        "accepted": 3,
        "rejected": 1,
        "duplicates": 1,
        "errors": 0,
        "reasons": {"bad_image": 1, "matches_other_person": 1},
        "people_discarded": [],
    }
    colin = Person.objects.get(name="Colin Powell")
    double = Person.objects.get(name="Mr Double")
    assert colin.embeddings.count() == 2
    flagged = EnrollmentPhoto.objects.get(person=double)
    assert (flagged.status, flagged.duplicate_of_id) == (EnrollmentPhoto.Status.HELD, colin.pk)
    assert not FaceEmbedding.objects.filter(person=double).exists()


@pytest.mark.django_db
def test_import_creates_no_person_without_a_kept_photo(enrol_env: Path, tmp_path: Path) -> None:
    """Issue 16: a folder of non-faces ("Nobody") left a person with zero accepted photos behind."""
    root = tmp_path / "people"
    for name, photos in {
        "Nobody": [blank_jpeg(), b"not an image"],
        "Colin_Powell": [face_jpeg("Colin_Powell", 0)],
        "Existing_Person": [blank_jpeg()],
    }.items():
        (root / name).mkdir(parents=True)
        for i, data in enumerate(photos):
            (root / name / f"{i}.jpg").write_bytes(data)
    existing = Person.objects.create(name="Existing Person")
    summary = photos_import(source=root)
    assert (summary.people_created, summary.people_discarded) == (1, ["Nobody"])
    assert not Person.objects.filter(name="Nobody").exists()
    assert Person.objects.filter(name="Colin Powell").exists()
    assert Person.objects.filter(pk=existing.pk).exists() and existing.photos.count() == 1  # not created here
    nobody = [o for o in summary.outcomes if o.folder == "Nobody"]
    assert [(o.status, o.person_id, o.photo_id) for o in nobody] == [("rejected", None, None)] * 2
    assert not EnrollmentPhoto.objects.filter(person__isnull=True).exists()
    # Their rejected photos' files went with them: only Colin's and the existing person's remain.
    stored = [p for p in (enrol_env / "enrollment").rglob("*") if p.is_file()]
    assert len(stored) == EnrollmentPhoto.objects.count() == 2


@pytest.mark.django_db
def test_enroll_folder_command(enrol_env: Path, tmp_path: Path) -> None:
    root = tmp_path / "people"
    (root / "Colin_Powell").mkdir(parents=True)
    (root / "Colin_Powell" / "1.jpg").write_bytes(face_jpeg("Colin_Powell", 0))
    (root / "Colin_Powell" / "2.jpg").write_bytes(blank_jpeg())
    existing = Person.objects.create(name="Colin Powell")
    out, err = io.StringIO(), io.StringIO()
    call_command("enroll_folder", str(root), "--list-rejected", stdout=out, stderr=err)
    text = out.getvalue()
    assert "2 pictures: 1 accepted, 1 rejected, 0 held for review, 0 errors" in text
    assert "0 people created" in text and "rejected no_face: 1" in text
    assert "Colin_Powell/2.jpg: rejected no_face" in text
    assert err.getvalue() == "", "no progress bar when stderr is not a terminal"
    assert existing.embeddings.count() == 1

    with pytest.raises(CommandError):
        call_command("enroll_folder", str(tmp_path / "missing"), stdout=io.StringIO())

    out = io.StringIO()
    call_command("reembed_gallery", "--no-progress", stdout=out)
    assert "1 accepted photos, 0 embedded, 1 already done, 0 failed" in out.getvalue()
