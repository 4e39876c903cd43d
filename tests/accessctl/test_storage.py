"""Image storage: local files by default, S3 (moto) with private objects, SSE and presigned URLs."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage, storages
from moto import mock_aws

from accessctl.storage import (
    S3Storage,
    crop_name,
    crop_store,
    storage_delete_many,
    storage_walk,
)

JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes\xff\xd9"
BUCKET = "accessctl-test"

CAPTURED = dt.datetime(2026, 2, 3, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def s3() -> S3Storage:
    with mock_aws():
        storage = S3Storage(bucket=BUCKET, region="us-east-1", location="media")
        storage.client.create_bucket(Bucket=BUCKET)
        yield storage


def test_default_storage_is_local_files(media_root: Path) -> None:
    assert isinstance(storages["default"], FileSystemStorage)
    name = crop_store(detection_id=uuid.uuid4(), jpeg=JPEG, captured_at=CAPTURED)
    assert (media_root / name).read_bytes() == JPEG


def test_crop_names_are_dated_by_the_day_of_capture(media_root: Path) -> None:
    detection = uuid.UUID("6f1c1d7e-4f0a-4d39-9a53-44d1ea7e0a01")
    late_evening = dt.datetime(2026, 2, 3, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))  # Feb 4 in UTC
    assert crop_store(detection_id=str(detection), jpeg=JPEG, captured_at=late_evening) == (
        f"crops/2026/02/04/{detection}.jpg"
    )
    assert crop_name(detection_id=detection, day=dt.date(2026, 2, 3)) == f"crops/2026/02/03/{detection}.jpg"


def test_another_copy_of_a_crop_gets_a_name_of_its_own(media_root: Path) -> None:
    """A redelivered detection stores its copy aside (staging deletes it when the copy is not staged)."""
    detection = uuid.uuid4()
    first = crop_store(detection_id=detection, jpeg=JPEG, captured_at=CAPTURED)
    again = crop_store(detection_id=detection, jpeg=b"\xff\xd8other", captured_at=CAPTURED)
    assert first != again
    assert default_storage.open(first).read() == JPEG


def test_crop_store_refuses_bad_ids_and_empty_images(media_root: Path) -> None:
    with pytest.raises(ValueError, match="badly formed"):
        crop_store(detection_id="../../etc/passwd", jpeg=JPEG, captured_at=CAPTURED)
    with pytest.raises(ValueError, match="no image"):
        crop_store(detection_id=uuid.uuid4(), jpeg=b"", captured_at=CAPTURED)


def test_walk_and_delete_many_local(media_root: Path) -> None:
    names = [crop_store(detection_id=uuid.uuid4(), jpeg=JPEG, captured_at=CAPTURED) for _ in range(3)]
    listed = {f.name: f for f in storage_walk(default_storage, "crops")}
    assert set(listed) == set(names)
    assert all(f.size == len(JPEG) and f.modified.tzinfo is not None for f in listed.values())
    storage_delete_many(default_storage, names)
    assert list(storage_walk(default_storage, "crops")) == []
    assert list(storage_walk(default_storage, "does-not-exist")) == []


def test_s3_save_open_size_delete(s3: S3Storage) -> None:
    name = s3.save("enrollment/2026/01/photo.jpg", ContentFile(JPEG))
    assert name == "enrollment/2026/01/photo.jpg"
    assert s3.exists(name)
    assert s3.size(name) == len(JPEG)
    with s3.open(name) as handle:
        assert handle.read() == JPEG
    assert s3.get_modified_time(name).tzinfo is not None
    # The key carries the configured prefix; nothing outside it is touched.
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == ["media/enrollment/2026/01/photo.jpg"]
    # Django does not overwrite: a second save of the same name gets a new one.
    other = s3.save(name, ContentFile(b"\xff\xd8two"))
    assert other != name and other.startswith("enrollment/2026/01/photo_")
    s3.delete(name)
    assert not s3.exists(name)
    s3.delete(name)  # deleting a missing object is not an error
    with pytest.raises(FileNotFoundError):
        s3.open(name)


def test_s3_objects_are_private_and_encrypted(s3: S3Storage) -> None:
    name = s3.save("crops/known/2026/01/05/x.jpg", ContentFile(JPEG))
    head = s3.client.head_object(Bucket=BUCKET, Key=f"media/{name}")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "image/jpeg"
    acl = s3.client.get_object_acl(Bucket=BUCKET, Key=f"media/{name}")
    assert all(g["Grantee"].get("URI") is None for g in acl["Grants"]), "no public/group grants"


def test_s3_kms_encryption_and_no_acl_options() -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        key_id = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
        storage = S3Storage(bucket=BUCKET, region="us-east-1", sse="aws:kms", kms_key_id=key_id, acl="", client=client)
        name = storage.save("a.jpg", ContentFile(JPEG))
        head = client.head_object(Bucket=BUCKET, Key=name)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]
    with pytest.raises(ValueError, match="unsupported server-side encryption"):
        S3Storage(bucket=BUCKET, sse="rot13")


def test_s3_presigned_url_is_short_lived(s3: S3Storage) -> None:
    name = s3.save("crops/unknown/2026/01/05/y.jpg", ContentFile(JPEG))
    url = urlparse(s3.url(name))
    query = parse_qs(url.query)
    assert url.path.endswith(f"/media/{name}")
    assert query["X-Amz-Expires"] == ["300"]
    assert "X-Amz-Signature" in query


def test_s3_listdir_walk_and_delete_many(s3: S3Storage) -> None:
    names = [crop_store(detection_id=uuid.uuid4(), jpeg=JPEG, captured_at=CAPTURED, storage=s3) for _ in range(3)]
    day = names[0].rsplit("/", 1)[0]
    dirs, files = s3.listdir("crops")
    assert dirs == [day.split("/")[1]] and files == []
    dirs, files = s3.listdir(day)
    assert dirs == [] and sorted(files) == sorted(n.rsplit("/", 1)[1] for n in names)
    walked = list(storage_walk(s3, "crops"))
    assert sorted(f.name for f in walked) == sorted(names)
    assert all(f.size == len(JPEG) for f in walked)
    storage_delete_many(s3, names)
    assert list(storage_walk(s3, "crops")) == []


def test_settings_switch_default_storage_to_s3(settings: pytest.FixtureRequest) -> None:
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        settings.STORAGES = {  # type: ignore[attr-defined]
            **settings.STORAGES,  # type: ignore[attr-defined]
            "default": {
                "BACKEND": "accessctl.storage.S3Storage",
                "OPTIONS": {"bucket": BUCKET, "region": "us-east-1", "url_expiry_s": 60},
            },
        }
        storage = storages["default"]
        assert isinstance(storage, S3Storage) and storage.url_expiry_s == 60
        name = crop_store(detection_id=uuid.uuid4(), jpeg=JPEG, captured_at=CAPTURED)
        assert storage.exists(name)
