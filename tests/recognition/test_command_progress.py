"""The long recognition commands show a progress bar on a terminal and write nothing extra otherwise."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from faceengine.registry import DEFAULT_BACKEND
from tests.faces import face_jpeg


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


BAR = ("\r", "it/s", "img/s", "photo/s", "s/img", "s/photo", "s/batch", "batch/s", "100%")


def _tiny_lfw(root: Path) -> Path:
    """Two people, two photos each, and a pairs.txt of two folds (one same, one different pair each)."""
    for person, photos in (("Colin_Powell", (0, 1)), ("Tony_Blair", (0, 1))):
        (root / "images" / person).mkdir(parents=True)
        for n, index in enumerate(photos, start=1):
            (root / "images" / person / f"{person}_{n:04d}.jpg").write_bytes(face_jpeg(person, index))
    (root / "pairs.txt").write_text(
        "2\t1\nColin_Powell\t1\t2\nColin_Powell\t1\tTony_Blair\t1\nTony_Blair\t1\t2\nColin_Powell\t2\tTony_Blair\t2\n"
    )
    return root


def test_evaluate_lfw_draws_bars_on_a_terminal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lfw = _tiny_lfw(tmp_path / "lfw")
    args = ["evaluate_lfw", "--backend", DEFAULT_BACKEND, "--lfw", str(lfw)]

    call_command(*args, "--cache-dir", str(tmp_path / "cache-a"), stdout=io.StringIO())
    err = capsys.readouterr().err
    assert not any(mark in err for mark in BAR), err

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    out = io.StringIO()
    call_command(*args, "--cache-dir", str(tmp_path / "cache-b"), stdout=out)
    assert "LFW accuracy" in out.getvalue()
    assert "detect faces" in terminal.getvalue() and "4/4" in terminal.getvalue()
    assert f"embed {DEFAULT_BACKEND}" in terminal.getvalue()


@pytest.mark.django_db
def test_enroll_folder_draws_a_bar_on_a_terminal(enrol_env: Path, tmp_path: Path) -> None:
    root = tmp_path / "people"
    (root / "Colin_Powell").mkdir(parents=True)
    (root / "Colin_Powell" / "1.jpg").write_bytes(face_jpeg("Colin_Powell", 0))
    terminal = Terminal()
    call_command("enroll_folder", str(root), stdout=io.StringIO(), stderr=terminal)
    assert "enrol" in terminal.getvalue() and "1/1" in terminal.getvalue()

    terminal, pipe = Terminal(), io.StringIO()
    call_command("reembed_gallery", "--force", stdout=io.StringIO(), stderr=pipe)
    assert pipe.getvalue() == ""
    call_command("reembed_gallery", "--force", stdout=io.StringIO(), stderr=terminal)
    assert "embed " in terminal.getvalue() and "1/1" in terminal.getvalue()


@pytest.mark.django_db(transaction=True)
def test_gallery_index_rebuild_draws_a_bar_on_a_terminal() -> None:
    from recognition.indexing import hnsw_index

    model_version = "sface-2021dec-int8bq"
    before = hnsw_index(model_version)
    assert before is not None
    terminal, pipe = Terminal(), io.StringIO()
    try:
        call_command("gallery_index", rebuild=model_version, stdout=io.StringIO(), stderr=pipe)
        assert pipe.getvalue() == ""
        call_command("gallery_index", rebuild=model_version, stdout=io.StringIO(), stderr=terminal)
        assert f"index {model_version}" in terminal.getvalue() and "100/100" in terminal.getvalue()
    finally:
        from recognition.indexing import hnsw_rebuild

        hnsw_rebuild(model_version, m=before.m, ef_construction=before.ef_construction)


@pytest.mark.django_db(transaction=True)
def test_an_index_build_reports_postgres_progress_while_it_runs() -> None:
    """A concurrent build waits for a transaction that writes the table: its phase is reported meanwhile."""
    import threading

    from django.db import connection

    from accessctl.project.dbroles import owner_connection
    from recognition.indexing import hnsw_index, hnsw_rebuild
    from recognition.models import FaceEmbedding

    model_version = "sface-2021dec-int8bq"
    before = hnsw_index(model_version)
    assert before is not None
    phases: list[str] = []
    waiting = threading.Event()

    def progress(phase: str, done: int, total: int) -> None:
        phases.append(phase)
        if phase.startswith("waiting for writers"):
            waiting.set()

    def build() -> None:
        try:
            hnsw_rebuild(model_version, m=before.m, ef_construction=before.ef_construction, progress=progress)
        finally:
            connection.close()  # this thread's own

    writer = owner_connection()
    try:
        with writer.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(f"LOCK TABLE {FaceEmbedding._meta.db_table} IN ROW EXCLUSIVE MODE")  # as a writer holds
            builder = threading.Thread(target=build)
            builder.start()
            assert waiting.wait(60), f"no 'waiting for writers' phase reported (saw {phases})"
            cursor.execute("ROLLBACK")
        builder.join(60)
        assert not builder.is_alive()
    finally:
        writer.close()
    after = hnsw_index(model_version)
    assert after is not None and after.valid
