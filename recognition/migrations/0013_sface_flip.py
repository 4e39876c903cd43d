"""SFace averaged with the mirrored crop (``sface-2021dec-int8bq-flip``: backend ``sface``, option
``flip``): its HNSW (cosine) index, and its registry row (a candidate; ``recognition/model_catalogue.py``)."""

from django.db import migrations

from recognition.model_catalogue import builtin_models_register

MODEL_VERSION = "sface-2021dec-int8bq-flip"
INDEX = "face_hnsw_sface_2021dec_int8bq_flip"


def register(apps, schema_editor):
    # The owner's connection, as 0008: registers the catalogue's versions missing from the registry.
    builtin_models_register(
        apps.get_model("recognition", "ModelVersion"),
        apps.get_model("recognition", "ModelStateChange"),
        using=schema_editor.connection.alias,
    )


class Migration(migrations.Migration):
    dependencies = [("recognition", "0012_sface_int8")]

    operations = [
        migrations.RunSQL(
            sql=(
                f"CREATE INDEX IF NOT EXISTS {INDEX} ON recognition_faceembedding "
                "USING hnsw ((embedding::vector(128)) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
                f"WHERE model_version = '{MODEL_VERSION}'"
            ),
            reverse_sql=f"DROP INDEX IF EXISTS {INDEX}",
        ),
        migrations.RunPython(register, migrations.RunPython.noop),
    ]
