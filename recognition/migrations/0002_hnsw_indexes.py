"""HNSW (cosine) indexes on the gallery, one partial index per model version and dimension.

The ``embedding`` column is an untyped ``vector`` so several models can coexist; pgvector needs
a fixed dimension to index, so each model gets an expression index on ``embedding::vector(dim)``
restricted to its ``model_version``. The matcher queries with the same expression.
"""

from django.db import migrations

# Frozen here: a later model version gets its index in a migration of its own.
EMBEDDING_DIMS = {"sface-2021dec-int8bq": 128, "facenet-casia-20180408": 512, "facenet-vggface2": 512}


def _index_name(model_version: str) -> str:
    return "face_hnsw_" + model_version.replace("-", "_").replace(".", "_")[:40]


def _create_sql() -> list[str]:
    return [
        f"CREATE INDEX IF NOT EXISTS {_index_name(mv)} ON recognition_faceembedding "
        f"USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
        f"WHERE model_version = '{mv}'"
        for mv, dim in EMBEDDING_DIMS.items()
    ]


def _drop_sql() -> list[str]:
    return [f"DROP INDEX IF EXISTS {_index_name(mv)}" for mv in EMBEDDING_DIMS]


class Migration(migrations.Migration):
    dependencies = [("recognition", "0001_initial")]

    operations = [migrations.RunSQL(sql=_create_sql(), reverse_sql=_drop_sql())]
