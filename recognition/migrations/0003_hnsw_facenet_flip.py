"""HNSW (cosine) index for the flip-averaged FaceNet CASIA embeddings (model version ``-fixed-flip``)."""

from django.db import migrations

MODEL_VERSION = "facenet-casia-20180408-fixed-flip"
INDEX = "face_hnsw_facenet_casia_20180408_fixed_flip"


class Migration(migrations.Migration):
    dependencies = [("recognition", "0002_hnsw_indexes")]

    operations = [
        migrations.RunSQL(
            sql=(
                f"CREATE INDEX IF NOT EXISTS {INDEX} ON recognition_faceembedding "
                "USING hnsw ((embedding::vector(512)) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
                f"WHERE model_version = '{MODEL_VERSION}'"
            ),
            reverse_sql=f"DROP INDEX IF EXISTS {INDEX}",
        )
    ]
