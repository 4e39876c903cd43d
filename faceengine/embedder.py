"""One embedder interface for every face-recognition model (the backends implement it).

An :class:`Embedder` turns face crops (prepared as its ``input_kind`` says, see
:mod:`faceengine.alignment`) into L2-normalised float32 vectors. ``model_version`` is stored
with every embedding and event; vectors of different versions are never compared.

Backends (see :mod:`faceengine.backends`; built by name through :mod:`faceengine.registry`):

* ``sface`` (default): OpenCV-zoo SFace (int8 weights on disk, float compute), 128-d, ArcFace-aligned
  112x112, via onnxruntime.
* ``sface-int8``: the same network statically quantised to int8 (``manage.py model_quantize``), the
  edge variant; its own model version.
* ``facenet-casia``: FaceNet 20180408-102900 (CASIA-WebFace), 512-d, 160x160 box crop, torch.
* ``facenet-vggface2``: FaceNet InceptionResnetV1 from a weights file you provide, 512-d.

No module here imports torch or onnxruntime at import time.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


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


#: a version averaged with the mirrored crop (option ``flip``) is named with this suffix
FLIP_SUFFIX = "-flip"


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

    @classmethod
    def version_for(cls, options: Mapping[str, Any]) -> str:
        """The model version this class builds with constructor ``options`` (without loading it):
        options that change the vectors (flip averaging, standardisation) make a version of their own."""
        return cls.model_version

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
            if self.flip:  # the crops and their mirror images in one run
                both = l2_normalize(self._forward(np.concatenate([chunk, chunk[:, :, ::-1]])))
                emb = both[: len(chunk)] + both[len(chunk) :]
            else:
                emb = self._forward(chunk)
            out[start : start + len(chunk)] = l2_normalize(emb)
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_version} dim={self.dim} {self.input_kind}>"
