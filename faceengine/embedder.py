"""One embedder interface for every face-recognition model, and the per-process registry.

An :class:`Embedder` turns face crops (prepared as its ``input_kind`` says, see
:mod:`recognition.alignment`) into L2-normalised float32 vectors. ``model_version`` is stored
with every embedding and event; vectors of different versions are never compared.

Backends (see :mod:`recognition.backends`):

* ``sface`` (default): OpenCV-zoo SFace int8, 128-d, ArcFace-aligned 112x112, via onnxruntime.
* ``facenet-casia``: FaceNet 20180408-102900 (CASIA-WebFace), 512-d, 160x160 box crop, torch.
* ``facenet-vggface2``: FaceNet InceptionResnetV1 from a weights file you provide, 512-d.

No module here imports torch or onnxruntime at import time.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "sface"


class InputKind(StrEnum):
    """How crops must be prepared for an embedder."""

    ARCFACE112 = "arcface112"  # 5-point similarity alignment to the ArcFace template, 112x112
    FACENET160 = "facenet160"  # MTCNN box + margin, resized to 160x160


INPUT_SIZES: dict[InputKind, int] = {InputKind.ARCFACE112: 112, InputKind.FACENET160: 160}


class EmbedderError(Exception):
    """Base class of embedder errors."""


class EmbedderConfigError(EmbedderError):
    """The backend cannot be built with the given configuration (missing file, bad name)."""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation, as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


class Embedder(abc.ABC):
    """Face embedder: crops in, unit vectors out.

    Subclasses set the class attributes and implement :meth:`_forward` on a float32 batch
    (N, H, W, 3) of RGB values in 0..255; batching, validation, optional flip-averaging and
    normalisation are done here.
    """

    name: str
    model_version: str
    dim: int
    input_kind: InputKind
    #: average the embedding of the crop and of its mirror image (set per instance)
    flip: bool = False
    default_batch_size: int = 32

    @property
    def input_size(self) -> int:
        return INPUT_SIZES[self.input_kind]

    @abc.abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Raw (unnormalised) embeddings (N, dim) for a float32 (N, H, W, 3) RGB 0..255 batch."""

    def _as_batch(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        size = self.input_size
        if isinstance(crops, np.ndarray) and crops.ndim == 3:
            crops = crops[None]
        arr = np.asarray(crops)
        if arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
            raise ValueError(
                f"{self.name} expects crops of shape (N, {size}, {size}, 3) ({self.input_kind}), got {arr.shape}"
            )
        return arr.astype(np.float32, copy=False)

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
        """Embed RGB uint8 crops (N, H, W, 3) or a single (H, W, 3) crop.

        Returns float32 (N, dim), each row with unit L2 norm.
        """
        batch = self._as_batch(crops)
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        bs = batch_size or self.default_batch_size
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, bs):
            chunk = batch[start : start + bs]
            emb = l2_normalize(self._forward(chunk))
            if self.flip:
                emb = emb + l2_normalize(self._forward(np.ascontiguousarray(chunk[:, :, ::-1])))
            out[start : start + len(chunk)] = l2_normalize(emb)
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_version} dim={self.dim} {self.input_kind}>"


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

    def sface(**kwargs: Any) -> Embedder:
        from recognition.backends.sface import SFaceEmbedder

        return SFaceEmbedder(**kwargs)

    def facenet_casia(**kwargs: Any) -> Embedder:
        from recognition.backends.facenet import FaceNetCasiaEmbedder

        return FaceNetCasiaEmbedder(**kwargs)

    def facenet_vggface2(**kwargs: Any) -> Embedder:
        from recognition.backends.facenet import FaceNetVGGFace2Embedder

        return FaceNetVGGFace2Embedder(**kwargs)

    register_backend("sface", sface)
    register_backend("facenet-casia", facenet_casia)
    register_backend("facenet-vggface2", facenet_vggface2)


def available_backends() -> list[str]:
    """Names accepted by :func:`get_embedder`."""
    _register_builtin()
    return sorted(_factories)


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


def clear_cache() -> None:
    """Forget the loaded embedders (tests)."""
    with _lock:
        _instances.clear()
