"""Backup and restore of a site of N people with their photos: time and archive size (issue 22).

Builds a scratch site on the embedded PostgreSQL (``var/bench/pg``, database ``accessctl_backup_bench``):
``--people`` people, each with ``--photos`` accepted enrolment photos (a real JPEG face when LFW is
found, else a generated one; 640x480-class sizes) and one 128-d gallery vector per photo, plus a
few thousand access events. Then ``manage.py backup`` to a folder, and ``manage.py restore`` of
that archive on a fresh site (a new var folder: its own PostgreSQL cluster). Prints one JSON object:
``backup_s``, ``archive_bytes``, ``restore_s`` and the counts.

Run: ``.venv/bin/python bench/backup_restore.py [--people 10000] [--photos 1] [--events 5000]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accessctl.project import embedded  # noqa: E402

DB = "accessctl_backup_bench"
PASSPHRASE = "bench passphrase, not a secret"  # noqa: S105  (a scratch site)


def _photo() -> bytes:
    from PIL import Image

    from tests.faces import LFW_DIR

    found = sorted(LFW_DIR.glob("*/*.jpg"))[:1] if LFW_DIR.is_dir() else []
    if found:
        return found[0].read_bytes()
    import numpy as np

    rgb = (np.random.default_rng(1).random((250, 250, 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=90)
    return out.getvalue()


def _site(people: int, photos: int, events: int) -> None:
    import datetime as dt

    import numpy as np
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db import connections

    from accessctl.audit import event_record
    from accessctl.codes import Decision, Reason
    from accessctl.models import Person
    from recognition.models import EnrollmentPhoto, FaceEmbedding

    with connections["owner"].cursor() as cursor:
        cursor.execute(
            "TRUNCATE accessctl_accessevent, recognition_faceembedding, recognition_enrollmentphoto, "
            "accessctl_person CASCADE"
        )
    jpeg = _photo()
    rng = np.random.default_rng(0)
    batch = 1000
    for start in range(0, people, batch):
        made = Person.objects.bulk_create(
            [Person(name=f"Person {i:06d}") for i in range(start, min(people, start + batch))]
        )
        rows, vectors = [], []
        for person in made:
            for k in range(photos):
                name = default_storage.save(f"enrollment/bench/{person.pk}-{k}.jpg", ContentFile(jpeg))
                rows.append(EnrollmentPhoto(person=person, image=name, status=EnrollmentPhoto.Status.ACCEPTED))
        rows = EnrollmentPhoto.objects.bulk_create(rows)
        for row in rows:
            v = rng.normal(size=128)
            vectors.append(
                FaceEmbedding(
                    person_id=row.person_id,
                    photo=row,
                    model_version="sface-2021dec-int8bq",
                    embedding=(v / np.linalg.norm(v)).tolist(),
                    quality=1.0,
                )
            )
        FaceEmbedding.objects.bulk_create(vectors)
    now = dt.datetime.now(tz=dt.UTC)
    for i in range(events):
        event_record(
            detection_id=None, occurred_at=now - dt.timedelta(seconds=events - i), decision=Decision.DENY,
            reason=Reason.UNKNOWN_FACE, device_uid="bench",
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=1, help="accepted photos (and gallery vectors) per person")
    parser.add_argument("--events", type=int, default=5_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="accessctl-backup-bench-"))
    pg = embedded.start_postgres(ROOT / "var" / "bench" / "pg")
    pg.drop_database(DB)
    pg.ensure_database(DB)
    env = {
        "ACCESSCTL_PGDATA": str(pg.pgdata),
        "ACCESSCTL_DB_NAME": DB,
        "ACCESSCTL_VAR_DIR": str(work / "site"),
        "ACCESSCTL_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "accessctl.project.settings",
        "ACCESSCTL_BACKUP_PASSPHRASE": PASSPHRASE,
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    _site(args.people, args.photos, args.events)
    print(f"site built in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    out = io.StringIO()
    t0 = time.perf_counter()
    call_command("backup", "--to", str(work / "backups"), "--json", stdout=out)
    backup_s = time.perf_counter() - t0
    made = json.loads(out.getvalue())

    fresh = {k: v for k, v in os.environ.items() if k not in ("ACCESSCTL_PGDATA", "ACCESSCTL_DB_NAME")}
    fresh["ACCESSCTL_VAR_DIR"] = str(work / "new-machine")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "manage.py", "restore", "--from", made["location"], "--json"],
        cwd=ROOT, env=fresh, capture_output=True, text=True,
    )  # fmt: skip
    restore_s = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    restored = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "people": made["people"],
                "photos": made["media_files"],
                "gallery_vectors": made["gallery_vectors"],
                "events": made["events"],
                "backup_s": round(backup_s, 1),
                "archive_bytes": made["bytes"],
                "archive_mb": round(made["bytes"] / 1e6, 1),
                "restore_s": round(restore_s, 1),
                "restore_ok": restored["ok"],
                "restored_people": restored["people"],
            }
        )
    )


if __name__ == "__main__":
    main()
