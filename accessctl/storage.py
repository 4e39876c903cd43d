"""Image storage: local files by default, S3 (or MinIO, Ceph, R2 ...) when ``ACCESSCTL_S3_BUCKET`` is set.

Images never go into the database: models hold storage names (``FileField`` or a plain string such
as ``AccessEvent.snapshot``) and the bytes live in Django's default storage. ``S3Storage`` is a
small ``Storage`` subclass over boto3 (no django-storages): private objects, optional server-side
encryption, short-lived presigned URLs for authenticated views. Credentials come from boto3's own
chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profile, instance role), never settings.

Generated images use dated names so retention can find expired ones without a database:

* ``crops/YYYY/MM/DD/<detection_id>.jpg``: a detection's face crop, stored when it is staged
  (before the match is known; UTC day of capture); retention tells known from unknown by the
  access event pointing at it
"""

from __future__ import annotations

import logging
import mimetypes
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import IO, Any

from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, Storage, default_storage
from django.utils.deconstruct import deconstructible

logger = logging.getLogger(__name__)

CROPS_PREFIX = "crops/"  # crops/YYYY/MM/DD/<id>.jpg: stored when staged, before the match is known


@dataclass(frozen=True)
class StoredFile:
    """One stored object as listed: storage name, size in bytes, last modification (aware, UTC)."""

    name: str
    size: int
    modified: datetime


class StorageError(Exception):
    """A storage operation failed (the underlying error is chained)."""


@deconstructible(path="accessctl.storage.S3Storage")
class S3Storage(Storage):
    """Django storage on an S3 bucket through boto3.

    ``sse``: ``"AES256"`` (SSE-S3, default), ``"aws:kms"`` (with ``kms_key_id``) or ``""`` for none
    (MinIO without a KMS refuses SSE headers). ``acl``: canned ACL sent with every upload,
    ``"private"`` by default; ``""`` sends none (buckets with "bucket owner enforced" ownership
    refuse ACL headers; their objects are private anyway). ``location`` is a key prefix inside the
    bucket. ``url()`` returns a presigned GET URL valid ``url_expiry_s`` seconds: hand it out only
    from views that have checked the user may see the image.
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        location: str = "",
        sse: str = "AES256",
        kms_key_id: str | None = None,
        acl: str = "private",
        url_expiry_s: int = 300,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3Storage needs a bucket name")
        if sse not in ("", "AES256", "aws:kms"):
            raise ValueError(f"unsupported server-side encryption {sse!r} (use AES256, aws:kms or empty)")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.location = location.strip("/")
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.acl = acl
        self.url_expiry_s = int(url_expiry_s)
        self._client = client

    # -- plumbing

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                config=Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._client

    def _key(self, name: str) -> str:
        name = _clean_name(name)
        return f"{self.location}/{name}" if self.location else name

    def _name(self, key: str) -> str:
        return key[len(self.location) + 1 :] if self.location else key

    @staticmethod
    def _missing(exc: Exception) -> bool:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    # -- Storage API

    def _open(self, name: str, mode: str = "rb") -> File:
        if "w" in mode or "a" in mode or "+" in mode:
            raise ValueError("S3Storage files are read-only; use save()")
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if self._missing(exc):
                raise FileNotFoundError(name) from exc
            raise StorageError(f"cannot read {name}") from exc
        body = response["Body"].read()
        file = ContentFile(body, name=name)
        file.mode = mode
        return file

    def _save(self, name: str, content: IO[bytes] | File) -> str:
        name = _clean_name(name)
        if hasattr(content, "seek"):
            content.seek(0)
        data = content.read()
        if isinstance(data, str):
            data = data.encode()
        extra: dict[str, Any] = {"ContentType": mimetypes.guess_type(name)[0] or "application/octet-stream"}
        if self.acl:
            extra["ACL"] = self.acl
        if self.sse:
            extra["ServerSideEncryption"] = self.sse
            if self.sse == "aws:kms" and self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, **extra)
        except Exception as exc:
            raise StorageError(f"cannot write {name}") from exc
        return name

    def delete(self, name: str) -> None:
        if not name:
            raise ValueError("the name must be given to delete()")
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if not self._missing(exc):
                raise StorageError(f"cannot delete {name}") from exc

    def delete_many(self, names: list[str]) -> None:
        """Delete up to any number of objects, 1000 per request."""
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._key(n)} for n in chunk], "Quiet": True},
                )
            except Exception as exc:
                raise StorageError(f"cannot delete {len(chunk)} objects") from exc
            errors = response.get("Errors") or []
            if errors:
                raise StorageError(f"{len(errors)} objects not deleted, first: {errors[0].get('Code')}")

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if self._missing(exc):
                return None
            raise StorageError(f"cannot stat {name}") from exc

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def size(self, name: str) -> int:
        head = self._head(name)
        if head is None:
            raise FileNotFoundError(name)
        return int(head["ContentLength"])

    def get_modified_time(self, name: str) -> datetime:
        head = self._head(name)
        if head is None:
            raise FileNotFoundError(name)
        return head["LastModified"].astimezone(UTC)

    get_created_time = get_modified_time

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        prefix = self._key(path).rstrip("/")
        prefix = f"{prefix}/" if prefix else ""
        dirs: list[str] = []
        files: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            dirs.extend(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
            files.extend(o["Key"][len(prefix) :] for o in page.get("Contents", []) if o["Key"] != prefix)
        return dirs, files

    def walk(self, prefix: str) -> Iterator[StoredFile]:
        """Every object under ``prefix`` (a folder name), with size and modification time."""
        key_prefix = self._key(prefix).rstrip("/")
        key_prefix = f"{key_prefix}/" if key_prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
            for obj in page.get("Contents", []):
                yield StoredFile(self._name(obj["Key"]), int(obj["Size"]), obj["LastModified"].astimezone(UTC))

    def url(self, name: str | None) -> str:
        if not name:
            raise ValueError("no name to make a URL for")
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(name)},
            ExpiresIn=self.url_expiry_s,
        )

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        return super().get_available_name(_clean_name(name), max_length=max_length)


def _clean_name(name: str) -> str:
    """Storage names are relative posix paths without ``..``."""
    cleaned = posixpath.normpath(str(name).replace("\\", "/")).lstrip("/")
    if cleaned in ("", ".") or cleaned == ".." or cleaned.startswith("../"):
        raise ValueError(f"invalid storage name {name!r}")
    return cleaned


def storage_walk(storage: Storage, prefix: str) -> Iterator[StoredFile]:
    """List every file under ``prefix`` with size and modification time, for any storage."""
    prefix = prefix.strip("/")
    walk = getattr(storage, "walk", None)
    if callable(walk):
        yield from walk(prefix)
        return
    if isinstance(storage, FileSystemStorage):
        root = storage.path(prefix)
        for dirpath, _dirs, filenames in os.walk(root):
            for filename in sorted(filenames):
                full = os.path.join(dirpath, filename)
                rel = os.path.relpath(full, storage.location).replace(os.sep, "/")
                st = os.stat(full)
                yield StoredFile(rel, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=UTC))
        return
    try:
        dirs, files = storage.listdir(prefix)
    except FileNotFoundError:
        return
    for filename in files:
        name = f"{prefix}/{filename}" if prefix else filename
        yield StoredFile(name, storage.size(name), storage.get_modified_time(name))
    for sub in dirs:
        yield from storage_walk(storage, f"{prefix}/{sub}" if prefix else sub)


def storage_listdir(storage: Storage, path: str) -> tuple[list[str], list[str]]:
    """``storage.listdir`` that returns empty lists for a folder that does not exist."""
    try:
        return storage.listdir(path)
    except FileNotFoundError:
        return [], []


def storage_delete_many(storage: Storage, names: list[str]) -> None:
    """Delete files, in bulk where the storage can (S3: 1000 per request)."""
    bulk = getattr(storage, "delete_many", None)
    if callable(bulk):
        bulk(names)
        return
    for name in names:
        storage.delete(name)


def _dated_name(prefix: str, day: date, detection_id: uuid.UUID | str) -> str:
    ident = uuid.UUID(str(detection_id))  # refuses anything that is not a UUID (no path tricks)
    return f"{prefix}{day:%Y/%m/%d}/{ident}.jpg"


def crop_name(*, detection_id: uuid.UUID | str, day: date) -> str:
    """Storage name of a detection's face crop captured on ``day`` (UTC)."""
    return _dated_name(CROPS_PREFIX, day, detection_id)


def crop_store(
    *, detection_id: uuid.UUID | str, jpeg: bytes, captured_at: datetime, storage: Storage | None = None
) -> str:
    """Store a detection's face crop as it is staged; returns the storage name (``AccessEvent.snapshot``).

    ``crops/YYYY/MM/DD/<detection_id>.jpg`` (UTC day of capture). Another copy of the same
    detection gets a name of its own: the caller deletes it when that copy is not staged.
    """
    if not jpeg:
        raise ValueError("no image bytes to store")
    name = crop_name(detection_id=detection_id, day=captured_at.astimezone(UTC).date())
    saved = (storage or default_storage).save(name, ContentFile(jpeg))
    logger.debug("stored crop %s for detection %s", saved, detection_id)
    return saved
