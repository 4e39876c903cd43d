"""Embedder backends by name, and the per-process instances: ``get_embedder("sface", **options)``.

The backends (:mod:`faceengine.backends`) implement :class:`faceengine.embedder.Embedder` and
import only that interface; this module imports them (none imports torch or onnxruntime at
import time). Options are constructor arguments: nothing here reads the environment or settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from faceengine.backends.facenet import FaceNetCasiaEmbedder, FaceNetVGGFace2Embedder
from faceengine.backends.sface import SFaceEmbedder, SFaceInt8Embedder
from faceengine.embedder import Embedder, EmbedderConfigError

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "sface"

BackendFactory = Callable[..., Embedder]
_factories: dict[str, BackendFactory] = {}
_instances: dict[tuple[str, tuple[tuple[str, Any], ...]], Embedder] = {}
_lock = threading.Lock()


def register_backend(name: str, factory: BackendFactory) -> None:
    """Register (or replace) a backend factory under ``name``."""
    _factories[name] = factory


def _register_builtin() -> None:
    if _factories:
        return
    register_backend("sface", SFaceEmbedder)
    register_backend("sface-int8", SFaceInt8Embedder)
    register_backend("facenet-casia", FaceNetCasiaEmbedder)
    register_backend("facenet-vggface2", FaceNetVGGFace2Embedder)


def available_backends() -> list[str]:
    """Names accepted by :func:`get_embedder`."""
    _register_builtin()
    return sorted(_factories)


def backend_class(name: str) -> BackendFactory:
    """The factory (for the built-in backends: the class, with its ``dim`` and ``input_kind``) of ``name``."""
    _register_builtin()
    factory = _factories.get(name)
    if factory is None:
        raise EmbedderConfigError(f"unknown embedder backend {name!r}; available: {', '.join(sorted(_factories))}")
    return factory


def get_embedder(name: str | None = None, **options: Any) -> Embedder:
    """Return the process-wide embedder ``name`` (default :data:`DEFAULT_BACKEND`).

    ``options`` go to the backend constructor (e.g. ``model_path=`` for sface, ``cache_dir=`` /
    ``flip=`` for facenet-casia, ``weights_path=`` for facenet-vggface2); each distinct
    combination is built once per process and then reused.
    """
    _register_builtin()
    name = name or DEFAULT_BACKEND
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    embedder = _instances.get(key)
    if embedder is not None:
        return embedder
    with _lock:
        embedder = _instances.get(key)
        if embedder is None:
            factory = _factories.get(name)
            if factory is None:
                raise EmbedderConfigError(
                    f"unknown embedder backend {name!r}; available: {', '.join(sorted(_factories))}"
                )
            embedder = factory(**options)
            _instances[key] = embedder
            logger.info("loaded embedder %s (%s, dim=%d)", name, embedder.model_version, embedder.dim)
    return embedder


def embedder_forget(embedder: Embedder) -> bool:
    """Drop ``embedder`` from the per-process instances (a version no longer used: its memory is
    freed once nothing else holds it; a later :func:`get_embedder` builds it again). Returns
    whether it was there."""
    with _lock:
        for key, instance in list(_instances.items()):
            if instance is embedder:
                del _instances[key]
                logger.info("dropped embedder %s (%s)", key[0], embedder.model_version)
                return True
    return False
