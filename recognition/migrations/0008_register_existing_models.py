"""Register the model versions this code ships, and make the one the server used so far the active one.

Until now the embedder came from settings (``ACCESSCTL_EMBEDDER``, ``ACCESSCTL_FACENET_FLIP``); from
here on the registry decides (``recognition/engine.py``). The version those settings named becomes
``active``; the others are ``candidate``s (``recognition/model_catalogue.py``). Files, hashes and
signatures are filled in by ``manage.py model_registry register`` (hashing 100 MB of weights and
creating the server key do not belong in a migration); activating an unsigned version is refused,
the one already active keeps working.
"""

from django.db import migrations

from recognition.model_catalogue import builtin_models_register


def register(apps, schema_editor):
    # The owner's connection: the application's role has no rights on the new tables yet.
    builtin_models_register(
        apps.get_model("recognition", "ModelVersion"),
        apps.get_model("recognition", "ModelStateChange"),
        using=schema_editor.connection.alias,
    )


class Migration(migrations.Migration):
    dependencies = [("recognition", "0007_model_registry_and_health")]

    operations = [migrations.RunPython(register, migrations.RunPython.noop)]
