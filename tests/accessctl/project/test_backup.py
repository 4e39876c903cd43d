"""Backup and restore: the archive's encryption, and a real drill (back up a site with people,
gallery, devices and events; restore it on a fresh embedded PostgreSQL in a new var folder; check
people, gallery search, device keys, the server key and the audit chain)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError

from accessctl.codes import Decision, Reason
from accessctl.project import backup_crypto
from accessctl.project.backup_crypto import BackupCryptoError, DecryptingReader, EncryptingWriter

ROOT = Path(__file__).resolve().parents[3]
PASSPHRASE = "correct horse battery staple"


def _seal(data: bytes, *, segment: int, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(backup_crypto, "SEGMENT_BYTES", segment)
    raw = io.BytesIO()
    with EncryptingWriter(raw, PASSPHRASE) as writer:
        for i in range(0, len(data), 7):  # many small writes
            writer.write(data[i : i + 7])
    return raw.getvalue()


def _open(sealed: bytes, passphrase: str = PASSPHRASE) -> bytes:
    return DecryptingReader(io.BytesIO(sealed), passphrase).read()


def test_archive_round_trip_in_many_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1000)
    sealed = _seal(data, segment=64, monkeypatch=monkeypatch)
    assert data not in sealed and len(sealed) > len(data)
    assert _open(sealed) == data
    reader = DecryptingReader(io.BytesIO(sealed), PASSPHRASE)
    assert reader.read(10) + reader.read(500) + reader.read() == data
    assert _open(_seal(b"", segment=64, monkeypatch=monkeypatch)) == b""


def _segments(sealed: bytes) -> tuple[bytes, list[bytes]]:
    """The archive split into its header and its length-prefixed segments."""
    (length,) = struct.unpack(">I", sealed[len(backup_crypto.MAGIC) : len(backup_crypto.MAGIC) + 4])
    offset = len(backup_crypto.MAGIC) + 4 + length
    head, parts = sealed[:offset], []
    while offset < len(sealed):
        (size,) = struct.unpack(">I", sealed[offset : offset + 4])
        parts.append(sealed[offset : offset + 4 + size])
        offset += 4 + size
    return head, parts


def test_archive_refuses_wrong_passphrase_tampering_truncation_and_reordering(monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = _seal(os.urandom(300), segment=64, monkeypatch=monkeypatch)
    with pytest.raises(BackupCryptoError, match="wrong passphrase"):
        _open(sealed, "not the passphrase at all")
    flipped = bytearray(sealed)
    flipped[-40] ^= 1
    with pytest.raises(BackupCryptoError, match="damaged"):
        _open(bytes(flipped))
    head, parts = _segments(sealed)
    assert len(parts) == 5
    with pytest.raises(BackupCryptoError, match="truncated"):
        _open(head + b"".join(parts[:-1]))  # the last segment dropped: not a shorter backup
    with pytest.raises(BackupCryptoError, match="damaged"):
        _open(head + parts[1] + parts[0] + b"".join(parts[2:]))
    with pytest.raises(BackupCryptoError, match="data after"):
        _open(sealed + parts[-1])
    with pytest.raises(BackupCryptoError, match="not an accessctl backup"):
        _open(b"PK\x03\x04" + sealed)
    with pytest.raises(BackupCryptoError, match="at least"):
        EncryptingWriter(io.BytesIO(), "short")


def test_commands_want_a_passphrase_and_a_destination(settings: pytest.FixtureRequest, tmp_path: Path) -> None:
    settings.BACKUP_PASSPHRASE = None  # type: ignore[attr-defined]
    with pytest.raises(CommandError, match="no passphrase"):
        call_command("backup", "--to", str(tmp_path))
    settings.BACKUP_TO = None  # type: ignore[attr-defined]
    with pytest.raises(CommandError, match="where to"):
        call_command("backup", "--passphrase-file", str(tmp_path / "missing"))


def _fresh_site_env(var: Path) -> dict[str, str]:
    """A new machine: its own var folder, hence its own embedded PostgreSQL cluster and secrets."""
    drop = ("ACCESSCTL_PGDATA", "ACCESSCTL_DB_NAME", "ACCESSCTL_TEST_DB_NAME", "DATABASE_URL", "DATABASE_OWNER_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["ACCESSCTL_VAR_DIR"] = str(var)
    env.pop("ACCESSCTL_MEDIA_ROOT", None)
    return env


_CHECK = """
import json, sys
import django
django.setup()
from accessctl.project.management.backup_options import database_running
with database_running():
    from accessctl.anchoring import anchors_verify
    from accessctl.audit import chain_verify
    from accessctl.models import AccessEvent, Person
    from devices.commands import server_public_key_b64
    from devices.models import EdgeDevice
    from django.core.files.storage import default_storage
    from faceengine import protocol as p
    from recognition.gallery import gallery_search
    args = json.loads(sys.argv[1])
    found = gallery_search(args["vector"], model_version=args["model_version"], limit_people=1)
    device = EdgeDevice.objects.get(uid=args["uid"])
    verified = p.open_envelope(bytes.fromhex(args["signed"]), device.public_key)
    anchors = anchors_verify()
    print(json.dumps({
        "people": sorted(Person.objects.values_list("name", flat=True)),
        "match": Person.objects.get(pk=found[0].person_id).name if found else None,
        "similarity": found[0].similarity if found else None,
        "device_verifies": verified["detection_id"] == args["detection_id"],
        "server_key": server_public_key_b64(),
        "chain_ok": chain_verify().ok,
        "events": AccessEvent.objects.count(),
        "anchors_ok": anchors.ok,
        "photo": default_storage.open(args["photo"]).read().hex(),
    }))
"""


@pytest.mark.django_db(transaction=True)
def test_drill_back_up_wipe_restore_on_a_fresh_site(tmp_path: Path, media_root: Path) -> None:
    from accessctl.anchoring import checkpoint_create
    from accessctl.audit import event_record
    from accessctl.models import AccessGroup, Door, Person
    from devices.commands import server_public_key_b64
    from devices.provisioning import device_provision
    from faceengine import protocol as p
    from recognition.models import FaceEmbedding

    # A site that has been running: people, gallery, a device, decisions, an anchor, images.
    door = Door.objects.create(name="Front")
    group = AccessGroup.objects.create(name="Staff")
    group.doors.add(door)
    rng = np.random.default_rng(5)
    vectors = {}
    for name in ("Ada", "Grace", "Linus"):
        person = Person.objects.create(name=name)
        group.people.add(person)
        vectors[name] = rng.normal(size=128)
        vectors[name] /= np.linalg.norm(vectors[name])
        FaceEmbedding.objects.create(
            person=person, model_version="sface-2021dec-int8bq", embedding=vectors[name].tolist(), quality=1.0
        )
    provisioned = device_provision(uid="front-cam", door=door)
    device_key = p.load_private_key(provisioned.private_key_pem)
    now = dt.datetime.now(tz=dt.UTC)
    for i, reason in enumerate((Reason.MATCHED, Reason.UNKNOWN_FACE, Reason.MATCHED)):
        event_record(
            detection_id=p.new_id(), occurred_at=now - dt.timedelta(minutes=10 - i), door_id=door.pk,
            device_uid="front-cam", decision=Decision.GRANT if reason == Reason.MATCHED else Decision.DENY,
            reason=reason, person_id=Person.objects.get(name="Ada").pk if reason == Reason.MATCHED else None,
        )  # fmt: skip
    checkpoint_create()
    photo = default_storage.save("enrolment/ada.jpg", ContentFile(b"\xff\xd8\xff fake jpeg bytes"))
    server_key = server_public_key_b64()

    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    out = io.StringIO()
    call_command("backup", "--to", str(tmp_path / "backups"), "--passphrase-file", str(passphrase_file), "--json",
                 stdout=out)  # fmt: skip
    made = json.loads(out.getvalue())
    archive = Path(made["location"])
    assert archive.is_file() and archive.stat().st_mode & 0o777 == 0o600
    assert (made["people"], made["gallery_vectors"], made["devices"], made["events"]) == (3, 3, 1, 3)
    assert made["media_files"] == 1
    assert b"Grace" not in archive.read_bytes()  # encrypted

    # A new machine: fresh var folder and cluster; the archive is all it gets.
    new_var = tmp_path / "new-machine"
    env = _fresh_site_env(new_var)
    restore = [sys.executable, "manage.py", "restore", "--from", str(archive), "--passphrase-file",
               str(passphrase_file), "--json"]  # fmt: skip
    wrong = tmp_path / "wrong"
    wrong.write_text("a wrong passphrase, long enough")
    refused = subprocess.run(
        [*restore[:-3], "--passphrase-file", str(wrong)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert refused.returncode != 0 and "wrong passphrase" in refused.stderr
    done = subprocess.run(restore, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    restored = json.loads(done.stdout.strip().splitlines()[-1])
    assert restored["ok"] and restored["people"] == 3 and restored["events"] == 3 and restored["chain_checked"] == 3

    again = subprocess.run(restore, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode != 0 and "not empty" in again.stderr  # never over a live site by accident
    forced = subprocess.run([*restore, "--force"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert forced.returncode == 0 and json.loads(forced.stdout.strip().splitlines()[-1])["events"] == 3, forced.stderr

    detection = p.Detection.with_embedding(
        values=vectors["Grace"].tolist(), model_version="sface-2021dec-int8bq", device_uid="front-cam",
        detection_id=p.new_id(), captured_at=now.timestamp(), sent_at=now.timestamp(), detector_score=0.99,
        box=(1, 1, 90, 90), quality={},
    )  # fmt: skip
    args = {
        "vector": vectors["Grace"].tolist(), "model_version": "sface-2021dec-int8bq", "uid": "front-cam",
        "signed": p.seal(detection, device_key).hex(), "detection_id": detection.detection_id, "photo": photo,
    }  # fmt: skip
    check = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(args)], cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE":
        "accessctl.project.settings"}, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    state = json.loads(check.stdout.strip().splitlines()[-1])
    assert state["people"] == ["Ada", "Grace", "Linus"]
    assert state["match"] == "Grace" and state["similarity"] > 0.99  # the gallery searches
    assert state["device_verifies"]  # the device's key still verifies its messages
    assert state["server_key"] == server_key  # the doors keep trusting the server
    assert state["chain_ok"] and state["events"] == 3 and state["anchors_ok"]
    assert bytes.fromhex(state["photo"]) == b"\xff\xd8\xff fake jpeg bytes"


@pytest.mark.django_db(transaction=True)
def test_backup_to_s3_and_read_it_back(tmp_path: Path, media_root: Path, settings: pytest.FixtureRequest) -> None:
    """``--to s3://bucket/prefix`` (moto): the archive lands encrypted under the prefix; what
    ``restore --from s3://...`` downloads unpacks and matches its manifest."""
    from moto import mock_aws

    from accessctl.models import Person
    from accessctl.project.backup import _extract, backup_create

    Person.objects.create(name="Ada")
    settings.S3_ENDPOINT_URL = None  # type: ignore[attr-defined]
    settings.S3_REGION = "eu-west-1"  # type: ignore[attr-defined]
    with mock_aws():
        import boto3

        boto3.client("s3", region_name="eu-west-1").create_bucket(
            Bucket="site-backups", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        result = backup_create("s3://site-backups/nightly", PASSPHRASE)
        assert result.location.startswith("s3://site-backups/nightly/accessctl-backup-")
        key = result.location.removeprefix("s3://site-backups/")
        head = boto3.client("s3", region_name="eu-west-1").head_object(Bucket="site-backups", Key=key)
        assert head["ServerSideEncryption"] == "AES256" and head["ContentLength"] == result.bytes
        manifest = _extract(result.location, PASSPHRASE, tmp_path / "out")
    assert manifest["counts"]["people"] == 1
    assert (tmp_path / "out" / "database.dump").stat().st_size == manifest["members"]["database.dump"]["size"]
