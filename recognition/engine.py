"""The face engine of this server process: the registry's active model version -> embedder, loaded
once per process (deployment options such as thread counts and weight caches come from settings)."""

from __future__ import annotations

import time

from django.conf import settings

from faceengine.embedder import Embedder, EmbedderConfigError
from faceengine.registry import get_embedder
from recognition.model_registry import ActiveModel, active_model, active_model_verified, model_version_verified


def model_files_options(name: str) -> dict[str, object]:
    """Where backend ``name`` keeps its converted weights (the engine has no default location)."""
    if name == "facenet-casia":
        return {"cache_dir": settings.RECOGNITION_MODELS_DIR}
    return {}


def embedder_options(name: str) -> dict[str, object]:
    """Constructor options for backend ``name`` taken from settings (weights paths, caches)."""
    if name == "facenet-casia":
        # Averaging with the mirrored crop lifts LFW from 98.38 % to 98.58 % (model version "-fixed-flip").
        return {**model_files_options(name), "flip": settings.RECOGNITION_FACENET_FLIP}
    if name == "facenet-vggface2" and settings.RECOGNITION_FACENET_VGGFACE2_WEIGHTS:
        return {"weights_path": settings.RECOGNITION_FACENET_VGGFACE2_WEIGHTS}
    if name in ("sface", "sface-int8"):
        # Server processes share the cores: a few threads per process, none spinning between runs.
        return {"num_threads": settings.RECOGNITION_ORT_THREADS, "allow_spinning": False}
    return {}


def active_embedder(name: str | None = None) -> Embedder:
    """The registry's active model version's embedder (or backend ``name``'s, with the settings'
    options: tools that embed with a chosen backend), built once per process.

    The active version is verified before this process first uses it
    (:func:`recognition.model_registry.active_model_verified`: ``BundleRefused`` when it does not).
    Raises :class:`EmbedderConfigError` when the backend builds another version than the registry
    names (a row whose options do not make that version).
    """
    if name is not None:
        return get_embedder(name, **embedder_options(name))
    return _registry_embedder(active_model_verified(), "active")


_door_crop_at: float | None = None  # time.monotonic() this process last embedded a door's crop


def door_crop_embedder() -> Embedder:
    """The active embedder, for the crops a door sent (crop mode); notes that this process embeds
    door crops (:func:`door_crops_embedded`: whether a promotion's target is loaded ahead here)."""
    global _door_crop_at
    _door_crop_at = time.monotonic()
    return active_embedder()


def door_crops_embedded(within_s: float) -> bool:
    """True when this process embedded a door's crop (:func:`door_crop_embedder`) in the last
    ``within_s`` seconds; ``within_s`` 0 or less: always True."""
    return within_s <= 0 or (_door_crop_at is not None and time.monotonic() - _door_crop_at <= within_s)


def _registry_embedder(row: ActiveModel, role: str) -> Embedder:
    embedder = get_embedder(row.backend, **{**embedder_options(row.backend), **row.options})
    if embedder.model_version != row.model_version:
        raise EmbedderConfigError(
            f"the registry's {role} model is {row.model_version} but backend {row.backend} "
            f"with options {dict(row.options)} builds {embedder.model_version}"
        )
    return embedder


def version_embedder(model_version: str) -> Embedder:
    """The embedder of registry version ``model_version`` whatever its state (a shadow version's, a
    gallery being built for a promotion), verified like the active one before its first use in this
    process: a signed version must verify, an unsigned one may only use its backend's built-in files
    (:class:`~recognition.model_registry.BundleRefused` otherwise); and it must build that version."""
    return _registry_embedder(model_version_verified(model_version), "registry")


def server_model_version() -> str:
    """The model version this server embeds crops with (the one crop-mode devices are decided in):
    the registry's active version (read without loading the model)."""
    return active_model().model_version


def embedder_speed_ms(backend: str, options: dict[str, object] | None = None, *, faces: int = 32) -> float:
    """Milliseconds per face to embed a batch of ``faces`` crops with ``backend`` on this machine
    (median of three runs after a warm-up; random crops: the network's cost does not depend on them)."""
    import time

    import numpy as np

    embedder = get_embedder(backend, **{**embedder_options(backend), **(options or {})})
    size = embedder.input_size
    crops = np.random.default_rng(0).integers(0, 256, (faces, size, size, 3), dtype=np.uint8)
    embedder.embed(crops[:2])
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        embedder.embed(crops)
        runs.append((time.perf_counter() - start) * 1000 / faces)
    return round(sorted(runs)[1], 2)
