"""Rebuilding a model version's HNSW index with other parameters (large galleries)."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from accessctl.models import Person
from accessctl.project.dbroles import owner_connection
from recognition.gallery import exact_search, explain_search, gallery_search
from recognition.indexing import IndexBuildError, create_sql, hnsw_index, hnsw_rebuild
from recognition.models import FaceEmbedding

SFACE = "sface-2021dec-int8bq"


@pytest.fixture
def restore_index() -> Iterator[None]:
    yield
    hnsw_rebuild(SFACE, m=16, ef_construction=64)  # the migration's, for the tests that follow


def test_build_parameters_are_checked() -> None:
    with pytest.raises(IndexBuildError):
        create_sql(SFACE, m=1, ef_construction=64)
    with pytest.raises(IndexBuildError):
        create_sql(SFACE, m=32, ef_construction=40)  # below 2 * m
    with pytest.raises(ValueError, match="unknown model version"):
        create_sql("x'; DROP TABLE y; --", m=16, ef_construction=64)
    assert "WITH (m = 32, ef_construction = 128) WHERE model_version = 'sface-2021dec-int8bq'" in create_sql(
        SFACE, m=32, ef_construction=128
    )


@pytest.mark.django_db
def test_migration_index_is_reported() -> None:
    index = hnsw_index(SFACE)
    assert index is not None and index.valid
    assert (index.m, index.ef_construction, index.name) == (16, 64, "face_hnsw_sface_2021dec_int8bq")
    with pytest.raises(IndexBuildError, match="outside any transaction"), transaction.atomic():
        hnsw_rebuild(SFACE, m=32, ef_construction=128)


@pytest.mark.django_db(transaction=True)
def test_rebuild_swaps_in_a_denser_index_that_searches_use(restore_index: None) -> None:
    rng = np.random.default_rng(5)
    people = [Person.objects.create(name=f"p{i}") for i in range(20)]
    vectors = rng.normal(size=(100, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    FaceEmbedding.objects.bulk_create(
        FaceEmbedding(person=people[i % 20], model_version=SFACE, embedding=v.tolist()) for i, v in enumerate(vectors)
    )
    rebuilt = hnsw_rebuild(SFACE, m=24, ef_construction=96, maintenance_work_mem="64MB", parallel_workers=0)
    assert (rebuilt.m, rebuilt.ef_construction, rebuilt.rows, rebuilt.valid) == (24, 96, 100, True)
    assert rebuilt.name == "face_hnsw_sface_2021dec_int8bq" and rebuilt.build_s is not None
    owner = owner_connection()
    try:  # the statistics CI's autovacuum may gather at any time: with them, 100 rows are cheaper to
        # scan (or read through the model_version btree and sort) than to search the HNSW index
        with owner.cursor() as cursor:
            cursor.execute("ANALYZE recognition_faceembedding")
    finally:
        owner.close()
    with transaction.atomic(), connection.cursor() as cursor:
        # forbid those plans to see that the search matches the rebuilt index
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        plan = explain_search(vectors[0], model_version=SFACE)
    assert "face_hnsw_sface_2021dec_int8bq" in plan, plan
    for probe in vectors[:5]:
        assert gallery_search(probe, model_version=SFACE, limit_people=2) == exact_search(
            probe, model_version=SFACE, limit_people=2
        )
    out = StringIO()
    call_command("gallery_index", stdout=out)
    assert "sface-2021dec-int8bq: face_hnsw_sface_2021dec_int8bq m=24 ef_construction=96" in out.getvalue()
    assert "100 embeddings" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_failed_rebuild_leaves_the_current_index() -> None:
    with pytest.raises(CommandError, match="current index is unchanged"):
        call_command("gallery_index", rebuild=SFACE, m=16, ef_construction=64, maintenance_work_mem="lots")
    with pytest.raises(CommandError, match="unknown model version"):
        call_command("gallery_index", rebuild="nope", stdout=StringIO())
    index = hnsw_index(SFACE)
    assert index is not None and (index.m, index.valid) == (16, True)
